"""The microkernel model: L4Re/Fiasco semantics, in Python.

Principles:

1. Only the kernel holds capability tables; a task names a capability by
   selector and the kernel decides (``kernel.Kernel``, ``capabilities.mapdb``).
2. The core is pure and deterministic: ``Kernel.syscall(task, frame, now)``
   returns effects; processes, sockets and memfds live in ``host/``.
3. L4's numbers: rights bits, IPC and system error codes, message tags,
   timeouts and protocol labels are the real ones (``abi``).
4. Errors crossing a process boundary are values; every denial is a
   ``Violation`` record naming the rule it broke.
5. Sigma0 and Moe are tasks on the same IPC path as everyone else
   (``roottasks``), not shortcuts inside the kernel; the CLI and the boot
   report are applications above it (``l4emu``).
"""
