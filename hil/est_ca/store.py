"""The EST CA's state directory: private, written atomically, locked while it changes.

Layout (all PEM)::

    <state_dir>/            mode 0700
        ca.key              root CA private key, PKCS#8, mode 0600
        ca.crt              root CA certificate: the trust anchor clients bootstrap with
        issuing-NNNN.key    issuing CA keys (the highest number issues), mode 0600
        issuing-NNNN.crt    issuing CA certificates, signed by the root
        devices.json        serials issued per device identity, and which are still current
        server.key          TLS server key (re-issued on every start), mode 0600
        server.crt          TLS server certificate + its issuing CA
        .lock               flock(2) target, so two CAs starting at once cannot mix files

Every file is written to a temporary name in the same directory, fsync'ed, then renamed over
the target, and the directory is fsync'ed: a crash leaves the old file or the new one, never
half of one. Keys are created with their final mode (no window where they are world-readable).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from durable.atomic import atomic_write

__all__ = ["atomic_write", "ensure_private_dir", "locked"]

KEY_MODE = 0o600
PUBLIC_MODE = 0o644
DIR_MODE = 0o700


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if missing; a new directory gets mode 0700."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``state_dir/.lock`` (blocks until it is free)."""
    fd = os.open(state_dir / ".lock", os.O_RDWR | os.O_CREAT, KEY_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
