"""Host-wide registry of task uids: two systems (two kernels, two CI jobs) never share one.

Every task process runs under a uid of its own. A uid is leased from a directory of lock files
(``/run/l4emu/uids`` by default, root-only): the lease is an exclusive ``flock`` on ``<uid>.lock``
held by the kernel for as long as the task's process lives; the kernel closes it once the process
is reaped, and the OS drops it if the kernel dies (its tasks die with it: pdeathsig). A uid whose
lock is free is still skipped while any process on the host runs under it (a task of a kernel
that was just killed, still being torn down). The choice itself is pure (``first_free``).
"""
from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DIR = Path("/run/l4emu/uids")
FIRST_UID = 61000
COUNT = 100_000  # 61000 .. 160999: above Debian's dynamic and system ranges, below the userns ranges


class NoFreeUid(RuntimeError):
    """Every uid of the range is leased or in use."""


def first_free(candidates: Iterable[int], locked: Callable[[int], bool], busy: set[int]) -> int | None:
    """The first candidate that is neither in use by a process nor leased (``locked`` tries to lease it)."""
    for uid in candidates:
        if uid in busy:
            continue
        if locked(uid):
            return uid
    return None


def uids_in_use(proc: Path = Path("/proc")) -> set[int]:
    """Every real, effective, saved or filesystem uid of every process visible in ``proc``."""
    found: set[int] = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            with open(entry / "status", "rb") as f:
                for line in f:
                    if line.startswith(b"Uid:"):
                        found.update(int(x) for x in line.split()[1:])
                        break
        except OSError:
            continue  # gone meanwhile
    return found


@dataclass
class Lease:
    uid: int
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = -1


#: a scan of /proc is reused for this long: it reads every process's status (tens of ms on a busy host,
#: the largest part of starting a task), and a uid that came into use since is leased (its lock is taken)
IN_USE_MAX_AGE_S = 1.0


class UidRegistry:
    def __init__(self, directory: Path = DEFAULT_DIR, first: int = FIRST_UID, count: int = COUNT,
                 in_use: Callable[[], set[int]] = uids_in_use, clock: Callable[[], float] = time.monotonic):
        self.directory, self.first, self.count, self.in_use = Path(directory), first, count, in_use
        self.clock = clock
        self._scan: tuple[float, set[int]] | None = None  # (when, uids in use then)

    def busy(self) -> set[int]:
        """The uids processes run under (a scan at most IN_USE_MAX_AGE_S old). Processes of a kernel
        that died still being torn down are in it; a uid any live kernel took since is locked."""
        now = self.clock()
        if self._scan is None or not 0 <= now - self._scan[0] < IN_USE_MAX_AGE_S:
            self._scan = (now, self.in_use())
        return self._scan[1]

    def acquire(self) -> Lease:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fds: dict[int, int] = {}

        def lease(uid: int) -> bool:
            fd = os.open(self.directory / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            fds[uid] = fd
            return True

        uid = first_free(range(self.first, self.first + self.count), lease, self.busy())
        if uid is None:
            raise NoFreeUid(f"no free uid in {self.first}..{self.first + self.count - 1} ({self.directory})")
        return Lease(uid, fds[uid])
