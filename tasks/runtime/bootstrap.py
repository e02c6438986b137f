"""First code in every task process: read the boot record, confine, run the program.

Started by the kernel host as ``python -I -m tasks.runtime.bootstrap`` with the
channel on fd 3 (``abi.CHANNEL_FD``), /dev/null on fds 0-2, and nothing else.
The boot record is a ``kernel_model.bootrecord.BootRecord``. The program is
``tasks.<program>`` (``roottasks.<x>`` only for the root tasks Sigma0 and Moe,
which the kernel itself starts).
"""
from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from kernel_model.abi import CHANNEL_FD
from protocols.exit_codes import ExitCode

if TYPE_CHECKING:
    from tasks.runtime.env import Env


#: mallopt(3) parameters
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 1 << 20  #: buffers up to 1 MiB come from the heap, not from a fresh mmap each
TRIM_THRESHOLD = 32 << 20  #: free memory at the heap's top is kept up to this much
TOP_PAD = 1 << 20  #: and the heap grows by this much more than asked


def tune_malloc() -> None:
    """No malloc trimming in task processes: a task that handles 64 KiB requests allocates and frees
    buffers of that size all the time; with glibc's defaults (trim above 128 KiB free at the top,
    mmap above an adaptive threshold) each one gave its pages back and faulted them in again, 32-97
    page faults per request. Set with mallopt(3) rather than GLIBC_TUNABLES / MALLOC_TRIM_THRESHOLD_
    in the environment: a task's environment stays empty (LANG only). The cost is at most
    TRIM_THRESHOLD of free heap a task keeps (untouched pages cost nothing)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        for param, value in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                             (M_TOP_PAD, TOP_PAD)):
            libc.mallopt(param, value)
    except (OSError, AttributeError):  # not glibc: its defaults stay
        pass


def run() -> int:
    tune_malloc()
    # Nothing but stdio and the channel may survive from whoever started the kernel
    # (a shell's stray inheritable fds would otherwise leak into every task).
    os.closerange(CHANNEL_FD + 1, os.sysconf("SC_OPEN_MAX"))
    from tasks.runtime.channel import ChannelClosed, KernelChannel

    channel = KernelChannel.inherited()
    try:
        boot, boot_fds = channel.boot()
    except ChannelClosed:
        return ExitCode.TASK_NO_BOOT_RECORD
    record = boot.record
    # the kernel's fault page comes last: where a trapped syscall is reported (confine.py)
    fault_fd = boot_fds.pop() if record.fault_page and boot_fds else None
    notes: list[str] = []  # said through the task's log capability once it can talk
    refused = False
    if record.confine is not None:
        import dataclasses

        from tasks.runtime import confine as confinement
        keep = (*boot_fds, *([fault_fd] if fault_fd is not None else []))
        policy = dataclasses.replace(record.confine, allow_fds=record.confine.allow_fds + keep, fault_fd=fault_fd)
        try:
            report = confinement.apply(policy)
        except confinement.ConfinementError as exc:
            report, refused = exc.report, True
            notes.append("confinement failed, not starting:")
            notes.extend(exc.report.summary().splitlines())
        if record.report_confinement and not refused:
            done = [s.name for s in report.steps if s.status == confinement.ENFORCED]
            notes.append(f"confinement: enforced {', '.join(done)} ({report.elapsed_s * 1000:.0f} ms)")
        for step in report.steps:
            if step.status in (confinement.UNAVAILABLE, confinement.FAILED) and not refused:
                notes.append(f"confinement: NOT enforced {step.name}: {step.detail}")
    from tasks.runtime.env import Env

    env = Env(channel, record, boot_fds)
    say = _sayer(env)
    for note in notes:
        say(note)
    if refused:
        return ExitCode.TASK_NOT_CONFINED
    if record.workdir:
        os.chdir(record.workdir)  # the task's one writable place (its files live here)

    module_name = record.program if record.root else f"tasks.{record.program}"
    try:
        module = importlib.import_module(module_name)
        code = module.main(env)
    except ChannelClosed:
        return ExitCode.TASK_CHANNEL_CLOSED
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        for line in traceback.format_exc().splitlines():
            say(line)
        return ExitCode.FAILED
    return int(code or 0)


def _sayer(env: Env) -> Callable[[str], None]:
    """Lines about the task itself go out through its log capability (it has no stderr).

    The kernel tags every line with the task's log tag (root tasks: their name).
    """
    prefix = "! "

    def say(line: str) -> None:
        try:
            env.log(prefix + line)
        except Exception:
            pass
    return say


if __name__ == "__main__":
    code = run()
    sys.stdout.flush()
    sys.stderr.flush()
    # Exit without interpreter teardown: the channel closes as the process ends,
    # so the kernel sees the exit status, not a half-torn-down task.
    os._exit(code if 0 <= code < 256 else 1)
