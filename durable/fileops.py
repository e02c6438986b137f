"""The file operations a durable write is made of: one small interface, one real implementation.

Everything that must survive a crash (a store replaced whole, a journal appended to) is a
sequence of these calls, so a test can put a recording, crash-injecting implementation
(``durable.faults``) in place of ``OS`` and enumerate every point a crash can hit.
Reads are here too (``read``, ``listdir``, ``exists``) so a store does all its file I/O
through the one object it was given.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol


class FileOps(Protocol):
    def read(self, path: Path) -> bytes:
        """The whole file; FileNotFoundError if it does not exist."""
        ...

    def exists(self, path: Path) -> bool: ...

    def listdir(self, directory: Path) -> list[str]: ...

    def create(self, path: Path, mode: int) -> int:
        """A new file (O_WRONLY | O_CREAT | O_EXCL) with ``mode``; its descriptor."""
        ...

    def open_append(self, path: Path) -> int:
        """An existing file opened O_WRONLY | O_APPEND."""
        ...

    def write(self, fd: int, data: bytes | memoryview) -> int:
        """Bytes written (may be fewer than ``len(data)``)."""
        ...

    def fsync(self, fd: int) -> None: ...

    def fdatasync(self, fd: int) -> None: ...

    def close(self, fd: int) -> None: ...

    def chmod(self, path: Path, mode: int) -> None: ...

    def rename(self, src: Path, dst: Path) -> None:
        """Atomically replace ``dst`` with ``src`` (``os.replace``)."""
        ...

    def fsync_dir(self, directory: Path) -> None: ...

    def unlink(self, path: Path) -> None: ...


class OsFileOps:
    """``FileOps`` on the operating system."""

    def read(self, path: Path) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def exists(self, path: Path) -> bool:
        return os.path.exists(path)

    def listdir(self, directory: Path) -> list[str]:
        return os.listdir(directory)

    def create(self, path: Path, mode: int) -> int:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)

    def open_append(self, path: Path) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        getattr(os, "fdatasync", os.fsync)(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def chmod(self, path: Path, mode: int) -> None:
        os.chmod(path, mode)

    def rename(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def fsync_dir(self, directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def unlink(self, path: Path) -> None:
        os.unlink(path)


#: The operating system: the default everywhere.
OS = OsFileOps()
