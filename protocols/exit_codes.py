"""Every exit status an l4emu process can end with, in one table.

``l4emu`` (and ``l4emu boot``), ``l4emu hil``, ``l4emu est-ca`` and every task process (its
bootstrap, ``tasks.runtime.bootstrap``) exit with one of these, so a script or CI job reads a status
the same way whichever command it ran. Above 128 a status is the shell's "killed by signal N".
Statuses 64-78 follow BSD's sysexits.h where one fits.
"""
from __future__ import annotations

import enum
import signal


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1  #: what was run failed: a task of the image, a CA operation, a task's own program
    BAD_INPUT = 2  #: an invalid image, option or file; nothing was started
    QEMU_DID_NOT_BOOT = 3  #: l4emu hil: no ready marker (QEMU failed, the guest kernel panicked)
    HARNESS = 4  #: l4emu hil: the host side failed (tools, image not built)
    GUEST_UNRESPONSIVE = 5  #: l4emu hil: booted, then a command did not finish or QEMU died
    HALTED = 70  #: the kernel halted: Sigma0, the root pager, died (sysexits EX_SOFTWARE)
    BUG = 99  #: an unexpected exception in l4emu itself (a bug: the traceback is printed)
    TASK_NO_BOOT_RECORD = 111  #: a task process: its channel closed before the boot record came
    TASK_CHANNEL_CLOSED = 112  #: a task process: the kernel closed its channel while it ran
    TASK_NOT_CONFINED = 113  #: a task process: a confinement step the kernel required failed; not started
    TIMEOUT = 124  #: the run's time limit passed (as timeout(1))
    INTERRUPTED = 128 + signal.SIGINT  #: ^C
    BROKEN_PIPE = 128 + signal.SIGPIPE  #: the reader of the output went away (``| head``)
    SYSCALL_FAULT = 128 + signal.SIGSYS  #: a task made a system call outside its seccomp allow-list


def killed_by(signum: int) -> int:
    """The status of a process that stopped because of signal ``signum``."""
    return 128 + signum
