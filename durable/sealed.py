"""One KEK-sealed store file: a plaintext image sealed under a key-encryption key, replaced whole.

Used by the crypto service's key store (every backend) and by the EST service's state. The
file (all integers little-endian)::

    0   4  magic (per store: "L4KS" key store, "L4ES" EST state)
    4   1  format version 0x02
    5   1  kind (the store's own code: the crypto backend; 0 for the EST state)
    6   2  reserved, 0
    8   8  generation (u64, +1 per write)
    16 12  nonce (random per write)
    28  N  AES-256-GCM(KEK, nonce, plaintext, aad = bytes 0..27) = ct || tag(16)

Version 1 (``magic 0x01 3x0 nonce(12)``, aad = bytes 0..15; no kind, no generation) is still
read when the store allows it. The seal itself is pluggable (``Sealer``): ``AesSealer`` holds
the KEK in process memory; the crypto service's TPM and HSM backends seal with a device.

Writes go through ``durable.atomic.replace_file`` on the store's ``FileOps``: a crash leaves the
old file or the new one. A bad KEK length is a ``KekError`` naming the length and the source.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .atomic import Step, clean_stale_temps, replace_file
from .fileops import OS, FileOps

KEK_SIZE = 32
FORMAT_VERSION = 2
TAG_SIZE = 16
HEAD_V1 = struct.Struct("<4sB3x12s")
HEAD_V2 = struct.Struct("<4sBBxxQ12s")
Rng = Callable[[int], bytes]


class SealedError(Exception):
    """The sealed file cannot be opened: not such a file, or the wrong KEK / modified."""


class KekError(ValueError):
    """A key-encryption key of the wrong length (the message names its source and length)."""


def check_kek(kek: bytes | bytearray, source: str) -> None:
    if len(kek) != KEK_SIZE:
        raise KekError(f"{source} holds {len(kek)} byte(s); a key-encryption key must be exactly "
                       f"{KEK_SIZE} bytes (AES-256)")


def read_kek(path: Path, *, ops: FileOps = OS, source: str | None = None) -> bytearray:
    """The KEK in ``path`` as a zeroizable buffer; FileNotFoundError, or KekError for a wrong length."""
    kek = bytearray(ops.read(Path(path)))
    try:
        check_kek(kek, source or str(path))
    except KekError:
        kek[:] = bytes(len(kek))
        raise
    return kek


def create_kek(path: Path, *, ops: FileOps = OS, rng: Rng = os.urandom) -> bytearray:
    """A new random KEK, written to ``path`` (mode 0600) atomically."""
    kek = bytearray(rng(KEK_SIZE))
    replace_file(Path(path), bytes(kek), ops=ops, mode=0o600)
    return kek


class Sealer(Protocol):
    def seal(self, nonce: bytes, data: bytes | bytearray, aad: bytes) -> bytes: ...

    def unseal(self, nonce: bytes, blob: bytes, aad: bytes) -> bytearray:
        """The plaintext; raises InvalidTag (wrong key, modified file) or a device error."""
        ...


class AesSealer:
    """AES-256-GCM in process memory under a KEK. **Consumes** the KEK buffer: it is
    overwritten with zeros once the cipher holds its own copy."""

    def __init__(self, kek: bytearray, source: str = "the KEK") -> None:
        try:
            check_kek(kek, source)
            self._aead = AESGCM(bytes(kek))
        finally:
            kek[:] = bytes(len(kek))

    def seal(self, nonce: bytes, data: bytes | bytearray, aad: bytes) -> bytes:
        return self._aead.encrypt(nonce, bytes(data), aad)

    def unseal(self, nonce: bytes, blob: bytes, aad: bytes) -> bytearray:
        out = bytearray(len(blob) - TAG_SIZE)
        self._aead.decrypt_into(nonce, blob, aad, out)
        return out


@dataclass
class Opened:
    version: int
    kind: int
    generation: int
    plaintext: bytearray  #: the caller overwrites it when done


@dataclass(frozen=True)
class Header:
    version: int
    kind: int
    generation: int
    nonce: bytes
    body: bytes
    aad: bytes


class SealedFile:
    """One sealed store file (format in the module doc). ``what`` names it in errors."""

    def __init__(self, path: Path, magic: bytes, *, what: str = "sealed store", ops: FileOps = OS,
                 rng: Rng = os.urandom, step: Step | None = None, accept_v1: bool = False) -> None:
        if len(magic) != 4:
            raise ValueError("magic must be 4 bytes")
        self.path = Path(path)
        self.magic, self.what, self.ops, self.rng, self.step = magic, what, ops, rng, step
        self.accept_v1 = accept_v1

    def clean_temps(self) -> list[str]:
        """Remove temporary files a crash left beside the file (call at start)."""
        return clean_stale_temps(self.path.parent, [self.path.name], ops=self.ops)

    def exists(self) -> bool:
        return self.ops.exists(self.path)

    def read_raw(self) -> bytes | None:
        """The file's bytes, None if it does not exist (OSError if unreadable)."""
        try:
            return self.ops.read(self.path)
        except FileNotFoundError:
            return None

    def header(self, blob: bytes) -> Header:
        magic = self.magic
        if self.accept_v1 and len(blob) >= HEAD_V1.size + TAG_SIZE and blob[:4] == magic and blob[4] == 1:
            head = HEAD_V1.size
            return Header(1, 0, 0, blob[8:head], blob[head:], blob[:head])
        head = HEAD_V2.size
        if len(blob) < head + TAG_SIZE or blob[:4] != magic or blob[4] != FORMAT_VERSION:
            raise SealedError(f"{self.path} is not a {self.what} (bad magic, version or length)")
        _, _, kind, generation, nonce = HEAD_V2.unpack_from(blob)
        return Header(FORMAT_VERSION, kind, generation, nonce, blob[head:], blob[:head])

    def open(self, blob: bytes, sealer: Sealer) -> Opened:
        h = self.header(blob)
        try:
            plaintext = sealer.unseal(h.nonce, h.body, h.aad)
        except InvalidTag as exc:
            raise SealedError(f"{self.path}: wrong key-encryption key or the file was modified") from exc
        return Opened(h.version, h.kind, h.generation, plaintext)

    def read(self, sealer: Sealer) -> Opened | None:
        """The unsealed content, None if the file does not exist. SealedError for a file that
        is not this store or does not unseal; OSError if unreadable."""
        blob = self.read_raw()
        return None if blob is None else self.open(blob, sealer)

    def seal(self, sealer: Sealer, plaintext: bytes | bytearray, generation: int, kind: int = 0) -> bytes:
        header = HEAD_V2.pack(self.magic, FORMAT_VERSION, kind, generation, self.rng(12))
        return header + sealer.seal(header[16:], plaintext, header)

    def write(self, sealer: Sealer, plaintext: bytes | bytearray, generation: int, kind: int = 0) -> bool:
        """Seal and replace the file. ``replace_file``'s contract: OSError only before the
        commit (old file intact); False when only the directory fsync failed."""
        blob = self.seal(sealer, plaintext, generation, kind)
        return replace_file(self.path, blob, ops=self.ops, step=self.step)
