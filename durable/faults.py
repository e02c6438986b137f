"""A recording, crash- and fault-injecting ``FileOps`` for tests (ALICE / CrashMonkey style).

``FaultyOps`` wraps a real ``FileOps`` (the OS, in a test's temporary directory) and numbers
every *mutating* operation (create, write, fsync, fdatasync, close, chmod, rename, fsync_dir,
unlink, open_append). A test first runs a write sequence once to learn how many operations it
makes (``ops.log``), then runs it again once per crash point:

- ``crash_at=k``: operation ``k`` does not happen and ``SimulatedCrash`` is raised (a kill -9
  between operation ``k-1`` and ``k``; ``k = len(log)`` is "after the last one"). Being a
  ``BaseException``, it passes the code's ``except OSError`` / ``except Exception`` like a real
  kill would; after it every operation raises it again (the process is dead; ``close`` still
  releases the descriptor).
- ``torn=True`` with ``crash_at`` on a ``write``: half of the bytes reach the file first.
- ``power_loss()`` after a crash: what a power cut may also take away (ext4 ordered-mode
  worst case): data written but not fsynced is truncated back to its last synced length;
  renames and new directory entries whose directory was not fsynced since are undone.
- ``fail_at=k`` (with ``errno``): operation ``k`` raises ``OSError`` instead: a failure the
  code sees and reports (the "reported failed" vs "on disk" check).
- ``full = True``: every ``create``/``write`` raises ENOSPC until set back (a full disk).

Reads (``read``, ``exists``, ``listdir``) pass through unrecorded.
"""
from __future__ import annotations

import errno as _errno
import os
from dataclasses import dataclass, field
from pathlib import Path

from .fileops import OS, FileOps


class SimulatedCrash(BaseException):
    """The process died here (raised by ``FaultyOps`` at its crash point)."""


@dataclass
class _Rename:
    src: Path
    dst: Path
    old: bytes | None  # what dst held before (None: did not exist)


@dataclass
class FaultyOps:
    base: FileOps = OS
    crash_at: int | None = None
    torn: bool = False
    fail_at: int | None = None
    errno: int = _errno.EIO
    full: bool = False
    log: list[tuple[str, str]] = field(default_factory=list)  #: (operation, path) per mutating op
    crashed: bool = False
    failures: int = 0  #: operations that raised OSError (injected)

    def __post_init__(self) -> None:
        self._paths: dict[int, Path] = {}
        self._synced_len: dict[Path, int] = {}  # files with unsynced data: their last synced length
        self._renames: list[_Rename] = []  # not yet covered by a directory fsync
        self._created: set[Path] = set()  # entries not yet covered by a directory fsync

    # ---------------------------------------------------------------- the gate every op passes
    def _op(self, name: str, path: Path | str, data: bytes | memoryview | None = None, fd: int | None = None) -> None:
        if self.crashed:
            raise SimulatedCrash(f"{name} after the crash")
        index = len(self.log)
        self.log.append((name, str(path)))
        if self.crash_at is not None and index >= self.crash_at:
            if self.torn and name == "write" and data is not None and fd is not None and len(data) > 1:
                self.base.write(fd, bytes(data[: len(data) // 2]))
            self.crashed = True
            raise SimulatedCrash(f"crash at operation {index} ({name} {path})")
        if self.fail_at is not None and index == self.fail_at:
            self.failures += 1
            raise OSError(self.errno, f"injected {os.strerror(self.errno)} at {name}", str(path))
        if self.full and name in ("create", "write"):
            self.failures += 1
            raise OSError(_errno.ENOSPC, os.strerror(_errno.ENOSPC), str(path))

    # ---------------------------------------------------------------- reads
    def read(self, path: Path) -> bytes:
        return self.base.read(path)

    def exists(self, path: Path) -> bool:
        return self.base.exists(path)

    def listdir(self, directory: Path) -> list[str]:
        return self.base.listdir(directory)

    # ---------------------------------------------------------------- writes
    def create(self, path: Path, mode: int) -> int:
        self._op("create", path)
        fd = self.base.create(path, mode)
        self._paths[fd] = Path(path)
        self._created.add(Path(path))
        self._synced_len[Path(path)] = 0
        return fd

    def open_append(self, path: Path) -> int:
        self._op("open_append", path)
        fd = self.base.open_append(path)
        self._paths[fd] = Path(path)
        return fd

    def write(self, fd: int, data: bytes | memoryview) -> int:
        path = self._paths.get(fd, Path(f"fd{fd}"))
        self._op("write", path, data, fd)
        if path not in self._synced_len and path.exists():
            self._synced_len[path] = path.stat().st_size
        return self.base.write(fd, data)

    def _sync(self, name: str, fd: int) -> None:
        path = self._paths.get(fd, Path(f"fd{fd}"))
        self._op(name, path)
        getattr(self.base, name)(fd)
        self._synced_len.pop(path, None)

    def fsync(self, fd: int) -> None:
        self._sync("fsync", fd)

    def fdatasync(self, fd: int) -> None:
        self._sync("fdatasync", fd)

    def close(self, fd: int) -> None:
        path = self._paths.pop(fd, Path(f"fd{fd}"))
        if self.crashed:
            self.base.close(fd)  # the kernel closes a dead process's files
            raise SimulatedCrash(f"close after the crash ({path})")
        try:
            self._op("close", path)
        except BaseException:
            self.base.close(fd)
            raise
        self.base.close(fd)

    def chmod(self, path: Path, mode: int) -> None:
        self._op("chmod", path)
        self.base.chmod(path, mode)

    def rename(self, src: Path, dst: Path) -> None:
        self._op("rename", dst)
        src, dst = Path(src), Path(dst)
        try:
            old = self.base.read(dst)
        except FileNotFoundError:
            old = None
        self.base.rename(src, dst)
        self._renames.append(_Rename(src, dst, old))
        if src in self._synced_len:
            self._synced_len[dst] = self._synced_len.pop(src)

    def fsync_dir(self, directory: Path) -> None:
        self._op("fsync_dir", directory)
        self.base.fsync_dir(directory)
        directory = Path(directory)
        self._renames = [r for r in self._renames if r.dst.parent != directory]
        self._created = {p for p in self._created if p.parent != directory}

    def unlink(self, path: Path) -> None:
        self._op("unlink", path)
        self.base.unlink(path)
        self._created.discard(Path(path))

    # ---------------------------------------------------------------- after the crash
    def power_loss(self) -> None:
        """Take away what was not made durable (see the module doc). Call after the crash."""
        for path, length in self._synced_len.items():
            if path.exists() and path.stat().st_size > length:
                os.truncate(path, length)
        for r in reversed(self._renames):
            content = r.dst.read_bytes() if r.dst.exists() else b""
            r.src.write_bytes(content)
            if r.old is None:
                r.dst.unlink(missing_ok=True)
            else:
                r.dst.write_bytes(r.old)
        for path in self._created:
            path.unlink(missing_ok=True)
        self._synced_len.clear()
        self._renames.clear()
        self._created.clear()


#: How a run ends at a crash point: a kill (``crash``), a kill inside a write that left half of
#: its bytes (``torn``), or a power cut (``power``: a kill, then ``power_loss()``).
MODES = ("crash", "torn", "power")


def crash_points(log: list[tuple[str, str]]) -> list[tuple[int, str]]:
    """Every (operation index, mode) of a write sequence whose clean run logged ``log``: a kill
    and a power cut before each operation and after the last, a torn write at every write."""
    points = []
    for k in range(len(log) + 1):
        points.append((k, "crash"))
        if k < len(log) and log[k][0] == "write":
            points.append((k, "torn"))
        points.append((k, "power"))
    return points


def armed(mode: str, k: int, base: FileOps = OS) -> FaultyOps:
    """A ``FaultyOps`` that crashes at operation ``k`` in ``mode`` (call ``finish`` after)."""
    return FaultyOps(base, crash_at=k, torn=(mode == "torn"))


def finish(ops: FaultyOps, mode: str) -> None:
    """After the crash: what the mode takes away on top (a power cut's losses)."""
    if mode == "power":
        ops.power_loss()
