"""The decrypt replay window made durable: an append-only journal beside the key store.

Every nonce whose GCM tag verified is appended (key id, key version, nonce)
and synced *before* the plaintext is returned, so after a restart or a crash
the service rebuilds each key's window from the journal and a ciphertext
decrypted before the restart is refused (NONCE_REUSE) after it, exactly as
before it. A failed append answers STORAGE_ERROR and releases no plaintext.

File ``<store>.replay``: ``"L4RJ" u8 version(1) 3x0`` then 20-byte records
``key_id u32 | version u32 | nonce(12)`` (little-endian). A torn last record
(a crash inside an append) is dropped when the journal is opened. When the
journal holds more than ``2 * window`` records per live key version it is
compacted (atomically, ``durable.atomic.replace_file``) to the last ``window`` of
each live key version, so a restart remembers at least the last ``window``
nonces of every key, the guarantee the in-memory window gives.

The journal is not secret (nonces are public) and not authenticated: it
protects against a client replaying captured ciphertexts, not against someone
who can rewrite the service's files (who could also roll back the store file;
see docs/crypto_keystore.md).
"""

from __future__ import annotations

import struct
from collections import defaultdict, deque
from collections.abc import Iterable
from pathlib import Path

from durable.atomic import Step, append_record, replace_file
from durable.fileops import OS, FileOps

MAGIC = b"L4RJ\x01\x00\x00\x00"
RECORD = struct.Struct("<II12s")


class ReplayJournal:
    def __init__(self, path: Path, step: Step | None = None, ops: FileOps = OS) -> None:
        self.path = path
        self._step = step
        self.ops = ops
        self._fd: int | None = None
        self.count = 0

    def load(self) -> list[tuple[int, int, bytes]]:
        """Every complete record, oldest first; repairs a torn tail. OSError if unreadable."""
        try:
            raw = self.ops.read(self.path)
        except FileNotFoundError:
            raw = b""
        if raw and not raw.startswith(MAGIC):
            raise OSError(f"{self.path} is not a replay journal")
        body = raw[len(MAGIC):]
        whole = len(body) - len(body) % RECORD.size
        records = [RECORD.unpack_from(body, i) for i in range(0, whole, RECORD.size)]
        if not raw or whole != len(body):
            self._rewrite(records)
        self.count = len(records)
        return records

    def append(self, key_id: int, version: int, nonce: bytes) -> None:
        """Durable before it returns; OSError otherwise (the record may or may not be there)."""
        if self._fd is None:
            self._fd = self.ops.open_append(self.path)
        try:
            append_record(self._fd, RECORD.pack(key_id, version, nonce), ops=self.ops, step=self._step)
        except OSError:
            self.close()  # reopen next time (and the next load drops a torn record)
            raise
        self.count += 1

    def compact(self, live: Iterable[tuple[int, int]], keep: int) -> None:
        """Keep the last ``keep`` records of each live (key id, version)."""
        live = set(live)
        last: dict[tuple[int, int], deque] = defaultdict(lambda: deque(maxlen=keep))
        for kid, version, nonce in self.load():
            if (kid, version) in live:
                last[(kid, version)].append(nonce)
        self._rewrite([(kid, v, n) for (kid, v), nonces in last.items() for n in nonces])

    def _rewrite(self, records: list[tuple[int, int, bytes]]) -> None:
        self.close()
        blob = MAGIC + b"".join(RECORD.pack(*r) for r in records)
        replace_file(self.path, blob, ops=self.ops, step=self._step)
        self.count = len(records)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self.ops.close(fd)
