"""What crosses a process boundary, defined once: wire formats and exit statuses. Pure.

A leaf package: it imports nothing of the project but ``capabilities`` and does no I/O, so the
kernel, the task runtime, the services, ``hil`` and the CLI can all share it. Modules:

- ``layout``      the byte-layout toolkit: a message class declares its fields once; encode,
                  decode and the construction-time checks are derived from that table
- ``csrattrs``    the RFC 7030 §4.5.2 CsrAttrs DER codec (the EST client and the development CA)
- ``exit_codes``  every exit status of l4emu's processes (the CLI, ``l4emu hil``, the CA, tasks)
"""
