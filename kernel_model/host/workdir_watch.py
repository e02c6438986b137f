"""Work-dir budgets, watched: a violation event when a task's work dir reaches its budget.

The budget itself is enforced by the task's own filesystem (``workdirs``): a write past it fails
with ENOSPC inside the task, at once, whatever the host does. What the task's kernel does not see
is that write (it is a system call to Linux, not an IPC), so the host watches the filesystem from
outside: every ``PERIOD_US`` it reads ``statvfs`` of each live task's work dir through
``/proc/<pid>/root`` (`task_root`: the task's own mount namespace, where its image is mounted) and records one
``workdir-budget`` violation each time a work dir becomes full -- out of bytes or out of files --
and again only after it had room and filled up once more.

The decision is pure (`WorkdirWatch.check` takes the time and a ``statvfs`` function); the path
the host reads is fixed by the host (the mount point), never named by the task.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from kernel_model.events import Rule, Violation

PERIOD_US = 250_000  #: how often the host looks (the ENOSPC itself is immediate)
#: at most this much left counts as full: ext4 refuses a write while it still shows some free space (the
#: worst-case metadata it reserves for delayed allocation: 46 KiB of a 2 MiB work dir, measured)
SLACK_BYTES = 64 << 10
SLACK_FRACTION = 100  #: ... or 1 % of the budget, whichever is more


@dataclasses.dataclass(slots=True)
class _Watched:
    name: str
    pid: int  # the process the kernel started (with a pid namespace: the shim whose one child is the task)
    workdir: str
    full: str | None = None  # "bytes" or "files" while at the budget


def task_root(pid: int) -> str:
    """``/proc/<pid>/root`` of the process that runs the task: with a pid namespace the process the
    kernel started is a shim outside the task's mount namespace, and the task is its only child."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            children = f.read().split()
    except OSError:
        children = []
    return f"/proc/{children[0] if len(children) == 1 else pid}/root"


def fullness(st: os.statvfs_result) -> str | None:
    """``"files"`` when no inode is left, ``"bytes"`` when (almost) no block is, else ``None``."""
    if st.f_files and st.f_favail == 0:
        return "files"
    if st.f_blocks and st.f_bavail * st.f_frsize <= max(SLACK_BYTES, st.f_blocks * st.f_frsize // SLACK_FRACTION):
        return "bytes"
    return None


class WorkdirWatch:
    """The live tasks whose work dir has a budget, and which of them are at it."""

    def __init__(self, statvfs: Callable[[str], os.statvfs_result] = os.statvfs, period_us: int = PERIOD_US,
                 root: Callable[[int], str] = task_root):
        self._statvfs = statvfs
        self._root = root
        self.period_us = period_us
        self._watched: dict[int, _Watched] = {}
        self._next_us = 0

    def watch(self, task_id: int, name: str, pid: int, workdir: str) -> None:
        self._watched[task_id] = _Watched(name, pid, workdir)

    def forget(self, task_id: int) -> None:
        self._watched.pop(task_id, None)

    def wait_us(self, now_us: int) -> int | None:
        """How long the event loop may sleep before the next look (``None``: nothing to watch)."""
        return max(0, self._next_us - now_us) if self._watched else None

    def check(self, now_us: int) -> list[Violation]:
        """Look at every watched work dir if a period has passed; a violation per newly full one."""
        if not self._watched or now_us < self._next_us:
            return []
        self._next_us = now_us + self.period_us
        found = []
        for watched in self._watched.values():
            try:
                st = self._statvfs(self._root(watched.pid) + watched.workdir)
            except OSError:  # the task is exiting (its namespace is gone): nothing to say
                continue
            full = fullness(st)
            if full is not None and watched.full is None:
                total = st.f_blocks * st.f_frsize if full == "bytes" else st.f_files
                unit = "bytes" if full == "bytes" else "files"
                found.append(Violation(watched.name, 0, "workdir-write", Rule.WORKDIR_BUDGET, "ENOSPC",
                                       f"work dir full: {unit} budget of {total} {unit} used up", now_us))
            watched.full = full
        return found
