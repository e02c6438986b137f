"""The kernel's error codes as a task sees them (re-exported from the ABI for services, which
import only the task runtime and ``protocols``): ``Err`` (system call status, ``-L4_E*``) and
``IpcError`` (an IPC's transfer error, e.g. ``ENOT_EXISTENT`` when the partner is gone)."""
from __future__ import annotations

from kernel_model.abi import Err, IpcError

__all__ = ["Err", "IpcError"]
