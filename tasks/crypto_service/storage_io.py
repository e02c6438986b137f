"""Every byte the crypto service makes durable goes through the two functions here.

``replace_file`` (a whole store, a generation witness) and ``append_record``
(the replay journal). One place, so crash-point tests can interpose on every
durable write (``step`` is called after each step; raise from it to simulate a
crash there) and so the durability rules are written once:

``replace_file``: write ``<path>.tmp`` (O_EXCL after removing a stale one),
fsync it, ``os.replace`` it onto ``path``, fsync the directory. A crash before
the rename leaves the old file; after the rename the new file is complete.
The rename is the commit point: the function raises ``OSError`` only for a
failure *before* it (the old state is still the file's). A failing directory
fsync after the rename does not undo the rename, so it is not reported as a
failure of the write: it is returned (``False``) for the caller to log, since
the file already holds the new state and "the file is the truth".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

#: The step names ``step`` sees in ``replace_file``, in order.
WRITE_STEPS = ("opened", "written", "synced", "renamed", "dir_synced")

Step = Callable[[str], None]


def _nothing(step: str) -> None:
    return None


def fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def replace_file(path: Path, blob: bytes, step: Step | None = None, mode: int = 0o600) -> bool:
    """Atomically make ``blob`` the content of ``path`` (see module doc).

    Returns True when the directory entry is synced too, False when only the
    directory fsync failed (the new content is in place). Raises OSError (old
    content intact, temporary file removed) for any failure before the rename.
    """
    step = step or _nothing
    tmp = path.with_name(path.name + ".tmp")
    try:
        try:
            os.unlink(tmp)  # stale leftover of an earlier crash
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            step("opened")
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view):]
            step("written")
            os.fsync(fd)
            step("synced")
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    step("renamed")
    try:
        fsync_dir(path.parent)
    except OSError:
        try:  # once more: a transient failure should not leave the entry unsynced
            fsync_dir(path.parent)
        except OSError:
            return False
    step("dir_synced")
    return True


def append_record(fd: int, record: bytes, step: Step | None = None) -> None:
    """Append ``record`` to the open file ``fd`` (O_APPEND) and make it durable
    before returning. Raises OSError if it may not be durable."""
    step = step or _nothing
    view = memoryview(record)
    while view:
        view = view[os.write(fd, view):]
    step("appended")
    os.fdatasync(fd)
    step("appended_synced")
