"""The first user-level programs: Sigma0 (the root pager) and Moe (the root task).

They run as tasks like any other, started by the kernel at boot (``kernel_model.kernel``), and
speak to it only through the kernel ABI (``kernel_model.abi``, ``kernel_model.wire``) and the task
runtime. ``sigma0`` hands out RAM; ``moe`` serves dataspaces, logs and the rom namespace and
loads the image's tasks.
"""
