"""Key storage: one small interface, a memory backend and an encrypted file backend.

Interface (``KeyStore``): ``load() -> Snapshot`` and ``save(keys, next_key_id)``.
A save replaces the whole store atomically; the service keeps its in-memory
table and the store in step (it rolls back its change when ``save`` raises
``StoreError``). TPM and HSM backends (own issue) implement the same two calls.

Selection mirrors the task's ``config.json``::

    "storage": {"backend": "file", "path": "/data/crypto/keys.bin",
                "kek_file": "/rom/crypto_kek.bin"}
    "storage": {"backend": "memory"}          # volatile, tests and demos

File format (all integers little-endian)::

    0   4  magic "L4KS"
    4   1  format version 0x01
    5   3  reserved, 0
    8  12  nonce (random per save)
    20  N  AES-256-GCM(KEK, nonce, plaintext, aad = bytes 0..19) = ct || tag(16)

    plaintext: next_key_id u32 | count u32 | count x record
    record:    key_id u32 | key_type u8 | format u8 (1 secret, 2 public) |
               usage u32 | version u32 | nonce_lease u64 | len u16 | material

Secret material never reaches the disk unencrypted; the plaintext image is
built in a ``bytearray`` and overwritten after sealing/after parsing.

Atomic write: write ``<path>.tmp`` (O_EXCL after removing a stale one), fsync
it, ``os.replace`` onto ``<path>``, fsync the directory. A crash before the
rename leaves the old file intact (a stale ``.tmp`` is ignored and replaced
next time); after the rename the new file is complete and synced. The store
is therefore always the old or the new state, never a mix and never empty.
Tests simulate the crash with the ``step_hook`` seam, called after each step.

Where the KEK comes from: ``kek_file`` is 32 raw bytes that the system image
provides as a read-only boot module (ROM dataspace) for the crypto task only.
This is a **development backend**: whoever can read the image's modules can
decrypt the store, and the KEK sits in ordinary process memory. It protects
a copied-off store file, not a compromised image. Device-bound protection
(KEK sealed in a TPM, or keys never leaving an HSM) is the TPM/HSM issue.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .keys import Key
from .protocol import KeyFormat, KeyType, Usage

MAGIC = b"L4KS"
FORMAT_VERSION = 1
KEK_SIZE = 32
_FILE_HEAD = struct.Struct("<4sB3x12s")
_RECORD = struct.Struct("<IBBIIQH")
_TAG = 16


class StoreError(Exception):
    """The store could not be read or written. A failed save changed nothing."""


class Snapshot(NamedTuple):
    keys: list[Key]
    next_key_id: int


class KeyStore(Protocol):
    def load(self) -> Snapshot: ...

    def save(self, keys: Iterable[Key], next_key_id: int) -> None: ...


# --------------------------------------------------------------------------- record image


def _serialize(keys: Iterable[Key], next_key_id: int) -> bytearray:
    keys = list(keys)
    out = bytearray(struct.pack("<II", next_key_id, len(keys)))
    for key in keys:
        fmt, material = key.storage_material()
        out += _RECORD.pack(
            key.key_id, key.key_type, fmt, key.usage, key.version, key.nonce_lease, len(material)
        )
        out += material
    return out


def _parse(image: bytearray | bytes) -> Snapshot:
    view = memoryview(image)
    try:
        next_key_id, count = struct.unpack_from("<II", view)
        pos, keys = 8, []
        for _ in range(count):
            kid, ktype, fmt, usage, version, lease, n = _RECORD.unpack_from(view, pos)
            pos += _RECORD.size
            if pos + n > len(view):
                raise ValueError("record runs past the end")
            material = bytearray(view[pos : pos + n])
            pos += n
            try:
                keys.append(
                    Key.from_material(kid, KeyType(ktype), Usage(usage), KeyFormat(fmt), material, version, lease)
                )
            finally:
                material[:] = bytes(n)
        if pos != len(view):
            raise ValueError("trailing bytes")
    except (struct.error, ValueError) as exc:
        raise StoreError(f"key store image is malformed: {exc}") from exc
    finally:
        view.release()
    return Snapshot(keys, next_key_id)


class MemoryKeyStore:
    """Volatile store holding the serialized image (so ``load`` gives fresh Key objects)."""

    def __init__(self) -> None:
        self._image: bytearray | None = None

    def load(self) -> Snapshot:
        return _parse(self._image) if self._image is not None else Snapshot([], 1)

    def save(self, keys: Iterable[Key], next_key_id: int) -> None:
        image = _serialize(keys, next_key_id)
        if self._image is not None:
            self._image[:] = bytes(len(self._image))
        self._image = image


# --------------------------------------------------------------------------- file backend


def load_kek(path: str | os.PathLike[str]) -> bytearray:
    """Read a 32-byte raw KEK into a zeroizable buffer."""
    kek = bytearray(KEK_SIZE + 1)
    with open(path, "rb", buffering=0) as f:
        n = f.readinto(kek)
    if n != KEK_SIZE:
        kek[:] = bytes(len(kek))
        raise ValueError(f"storage.kek_file must hold exactly {KEK_SIZE} bytes")
    del kek[KEK_SIZE:]
    return kek


class FileKeyStore:
    """Keys sealed with AES-256-GCM under a KEK in one file, replaced atomically."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        kek: bytearray,
        rng: Callable[[int], bytes] = os.urandom,
        step_hook: Callable[[str], None] | None = None,
    ) -> None:
        if len(kek) != KEK_SIZE:
            raise ValueError("KEK must be 32 bytes")
        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._aead = AESGCM(kek)
        self._rng = rng
        self._step = step_hook or (lambda step: None)

    def load(self) -> Snapshot:
        """The stored keys; an empty store if the file was never written."""
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return Snapshot([], 1)
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from exc
        head = _FILE_HEAD.size
        if len(blob) < head + _TAG or blob[:4] != MAGIC or blob[4] != FORMAT_VERSION:
            raise StoreError(f"{self.path} is not a version-{FORMAT_VERSION} key store")
        nonce = blob[8:head]
        image = bytearray(len(blob) - head - _TAG)
        try:
            self._aead.decrypt_into(nonce, blob[head:], blob[:head], image)
        except InvalidTag as exc:
            raise StoreError(f"{self.path}: wrong KEK or the file was modified") from exc
        try:
            return _parse(image)
        finally:
            image[:] = bytes(len(image))

    def save(self, keys: Iterable[Key], next_key_id: int) -> None:
        image = _serialize(keys, next_key_id)
        try:
            header = _FILE_HEAD.pack(MAGIC, FORMAT_VERSION, self._rng(12))
            blob = header + self._aead.encrypt(header[8:], image, header)
        finally:
            image[:] = bytes(len(image))
        try:
            self._write_atomically(blob)
        except OSError as exc:
            try:
                self._tmp.unlink()
            except OSError:
                pass
            raise StoreError(f"cannot write {self.path}: {exc}") from exc

    def _write_atomically(self, blob: bytes) -> None:
        try:
            self._tmp.unlink()  # stale leftover of an earlier crash
        except FileNotFoundError:
            pass
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            self._step("opened")
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view) :]
            self._step("written")
            os.fsync(fd)
            self._step("synced")
        finally:
            os.close(fd)
        os.replace(self._tmp, self.path)
        self._step("renamed")
        dir_fd = os.open(self.path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._step("dir_synced")


#: The step names ``step_hook`` sees, in order.
WRITE_STEPS = ("opened", "written", "synced", "renamed", "dir_synced")


def open_keystore(storage: Mapping[str, Any] | None, rng: Callable[[int], bytes] = os.urandom) -> KeyStore:
    """Backend from the ``"storage"`` section of config.json (strict keys)."""
    cfg = dict(storage) if storage is not None else {"backend": "memory"}
    backend = cfg.pop("backend", None)
    if backend == "memory":
        if cfg:
            raise ValueError(f"storage: unknown key(s) {sorted(cfg)} for the memory backend")
        return MemoryKeyStore()
    if backend == "file":
        unknown = set(cfg) - {"path", "kek_file"}
        if unknown:
            raise ValueError(f"storage: unknown key(s) {sorted(unknown)}")
        for name in ("path", "kek_file"):
            if not isinstance(cfg.get(name), str):
                raise ValueError(f"storage.{name} is required (a path string)")
        kek = load_kek(cfg["kek_file"])
        try:
            return FileKeyStore(cfg["path"], kek, rng)
        finally:
            kek[:] = bytes(len(kek))  # AESGCM keeps its own copy
    if backend in ("tpm", "hsm"):
        raise ValueError(f"storage.backend {backend!r} is not implemented yet (own issue)")
    raise ValueError(f"storage.backend must be 'file' or 'memory', not {backend!r}")
