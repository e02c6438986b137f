"""The application layer: what people run, above the kernel.

``cli`` (the ``l4emu`` command and its exit codes), ``boot`` (boot an image, watch it, summarise),
``live`` (the live view and the boot summary), ``dump`` and ``tables`` (tables for people and
pipes), ``check`` (``l4emu check``/``graph``: the I/O half of ``capabilities.analysis``),
``scaffold`` (``l4emu new-task``) and ``verify`` (``l4emu verify-outbox``). The kernel
(``kernel_model``) never imports this package.
"""
