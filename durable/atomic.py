"""The write sequences that make a file durable, on ``FileOps``.

``replace_file`` (a whole file: a store, a generation witness, a KEK)::

    create <name>.tmp (O_EXCL, after removing a stale one) -> write -> fsync -> close
    -> chmod -> rename onto <name> -> fsync the directory

A crash before the rename leaves the old file (and maybe a temp file, removed by the next
write or by ``clean_stale_temps`` at start); from the rename on the new file is complete.
The rename is the commit point: ``replace_file`` raises ``OSError`` only for a failure
*before* it (old content intact, temp file removed). A failing directory fsync after the
rename does not undo the rename, so it is not a failure of the write: it is returned
(``False``) for the caller to log; "the file is the truth".

``append_record`` (a journal): write the record to a file opened O_APPEND, fdatasync it.
A crash inside leaves a torn last record, which the journal's reader drops.

``step(name)`` is called after each step (names in ``WRITE_STEPS`` / ``APPEND_STEPS``):
the older, coarser crash hook; ``durable.faults`` interposes on every single operation.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path

from .fileops import OS, FileOps

#: The step names ``step`` sees in ``replace_file``, in order.
WRITE_STEPS = ("opened", "written", "synced", "renamed", "dir_synced")
APPEND_STEPS = ("appended", "appended_synced")
TEMP_SUFFIX = ".tmp"

Step = Callable[[str], None]


def _nothing(step: str) -> None:
    return None


def temp_path(path: Path) -> Path:
    """The fixed temporary name ``replace_file`` writes beside ``path``."""
    return path.with_name(path.name + TEMP_SUFFIX)


def write_all(ops: FileOps, fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[ops.write(fd, view):]


def replace_file(path: Path, blob: bytes | bytearray, *, ops: FileOps = OS, mode: int = 0o600,
                 step: Step | None = None, unique_temp: bool = False) -> bool:
    """Atomically make ``blob`` the content of ``path`` (see the module doc).

    True when the directory entry is synced too, False when only the directory fsync failed
    (the new content is in place). Raises OSError (old content intact, temporary file
    removed) for any failure before the rename. ``unique_temp``: a per-call temporary name
    (``.<name>.<pid>-<random>.tmp``), for files several processes may write at once.
    """
    step = step or _nothing
    path = Path(path)
    if unique_temp:
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}{TEMP_SUFFIX}")
    else:
        tmp = temp_path(path)
    try:
        if not unique_temp:
            try:
                ops.unlink(tmp)  # a stale leftover of an earlier crash
            except FileNotFoundError:
                pass
        fd = ops.create(tmp, mode)
        try:
            step("opened")
            write_all(ops, fd, blob)
            step("written")
            ops.fsync(fd)
            step("synced")
        finally:
            ops.close(fd)
        ops.chmod(tmp, mode)  # the umask may have narrowed it; make it exact
        ops.rename(tmp, path)
    except OSError:
        try:
            ops.unlink(tmp)
        except OSError:
            pass
        raise
    step("renamed")
    try:
        ops.fsync_dir(path.parent)
    except OSError:
        try:  # once more: a transient failure should not leave the entry unsynced
            ops.fsync_dir(path.parent)
        except OSError:
            return False
    step("dir_synced")
    return True


def atomic_write(path: Path, data: bytes, mode: int = 0o600, *, ops: FileOps = OS) -> bool:
    """Replace ``path`` with ``data``, whole or not at all, with a per-call temporary name (safe
    when several processes write the same file). ``replace_file``'s contract."""
    return replace_file(Path(path), data, ops=ops, mode=mode, unique_temp=True)


def append_record(fd: int, record: bytes, *, ops: FileOps = OS, step: Step | None = None) -> None:
    """Append ``record`` to the open file ``fd`` (O_APPEND) and make it durable before
    returning. Raises OSError if it may not be durable."""
    step = step or _nothing
    write_all(ops, fd, record)
    step("appended")
    ops.fdatasync(fd)
    step("appended_synced")


def is_temp_of(entry: str, name: str) -> bool:
    """``entry`` is a temporary file ``replace_file`` makes for ``name`` (fixed or unique)."""
    return entry == name + TEMP_SUFFIX or (entry.startswith(f".{name}.") and entry.endswith(TEMP_SUFFIX))


def clean_stale_temps(directory: Path, names: Iterable[str], *, ops: FileOps = OS) -> list[str]:
    """Remove the temporary files a crash left beside the files ``names`` in ``directory``
    (call at start, before anything writes). The names removed, for a log line."""
    names = tuple(names)
    try:
        entries = sorted(ops.listdir(Path(directory)))
    except FileNotFoundError:
        return []
    removed = []
    for entry in entries:
        if any(is_temp_of(entry, name) for name in names):
            try:
                ops.unlink(Path(directory) / entry)
            except FileNotFoundError:
                continue
            removed.append(entry)
    return removed
