"""What crosses a process boundary, defined once: wire formats and exit statuses.

A leaf package: it imports nothing of the project (but ``capabilities``), so the kernel, the task
runtime, the services, ``hil`` and the CLI can all share it.
"""
