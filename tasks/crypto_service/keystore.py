"""Key storage: one interface, three device backends (File, TPM, HSM) and a memory store.

docs/crypto_keystore.md says, per backend, what is protected against whom,
what is emulated and how to point it at a real device. This module holds the
interface, the record image, the sealed store file every backend writes, and
the File backend; ``keystore_tpm`` and ``keystore_hsm`` add the devices, ``backends`` picks one.

Interface (``KeyStore``)
------------------------
``load() -> Snapshot`` and ``save(keys, next_key_id)``: a save replaces the
whole store; ``generate`` / ``import_key`` make a key *for this store* (the
HSM backend creates AES keys inside the token) and ``discard`` is told when
the service has dropped a key version (destroy, rotate, a failed create), so
a token can delete its object. Failures are ``StoreError`` values with
``retry`` set when the device may come back (a stopped swtpm, an absent
token); the service turns them into STORAGE_ERROR and a log line.

``save`` either commits or raises: it raises only when the new state is *not*
in the store file (a failure before the rename of ``durable.atomic.replace_file``);
from the rename on the change is committed and ``save`` returns, so the service
never reports STORAGE_ERROR for a change that a restart would bring back.

Selection mirrors the task's ``config.json``::

    "storage": {"backend": "file", "path": "keys.store", "kek_file": "kek.bin"}
    "storage": {"backend": "tpm",  "path": "keys.store", "tcti": "swtpm:/run/swtpm.sock"}
    "storage": {"backend": "hsm",  "path": "keys.store", "module": "/usr/lib/softhsm/libsofthsm2.so",
                "token_label": "wvds", "pin_file": "pin"}
    "storage": {"backend": "memory"}          # volatile, tests and demos

plus, for every device backend, ``"must_exist": true`` (refuse to start
empty when the store file is missing).

Store file: ``durable.sealed``'s KEK-sealed file (the one the EST service's state uses too),
magic "L4KS", kind = the backend (all integers little-endian; version 1 files are still read)::

    0   4  magic "L4KS"
    4   1  format version 0x02
    5   1  backend (0 file, 1 TPM, 2 HSM)
    6   2  reserved, 0
    8   8  generation (u64, +1 per save)
    16 12  nonce (random per save)
    28  N  AES-256-GCM(KEK, nonce, plaintext, aad = bytes 0..27) = ct || tag(16)

    plaintext: next_key_id u32 | count u32 | count x record
    record:    key_id u32 | key_type u8 | format u8 (1 secret, 2 public, 3 token) |
               usage u32 | version u32 | nonce_lease u64 | len u16 | material

Rollback: each save writes generation g + 1 and then advances a *witness*
that an old copy of the store file cannot rewind: a TPM NV counter (TPM), a
token object (HSM), a ``<path>.gen`` file beside the store (File: detects an
old store file copied back, not a restore of the whole directory). Loading a
store whose generation is below the witness is refused (rollback); one above
it (a crash between the two writes) is accepted and the witness catches up.

Secret material never reaches the disk unencrypted; the plaintext image is
built in a ``bytearray`` and overwritten after sealing/after parsing. The KEK
buffer handed to ``AesSealer`` is overwritten once the cipher holds it.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple, Protocol

from cryptography.exceptions import InvalidTag

from durable.atomic import WRITE_STEPS, Step, clean_stale_temps, replace_file
from durable.fileops import OS, FileOps
from durable.sealed import KEK_SIZE, AesSealer, KekError, SealedError, SealedFile, Sealer, check_kek, read_kek
from protocols.crypto import KeyFormat, KeyType, Usage

from .keys import DEVICE_FORMAT, Key

__all__ = ["KEK_SIZE", "WRITE_STEPS", "AesSealer", "KekError", "Sealer", "StoreError", "check_kek"]

MAGIC = b"L4KS"
BACKEND_CODES = {"file": 0, "tpm": 1, "hsm": 2}
#: Files beside a store ``<path>``: their temporary leftovers are removed when it is loaded.
COMPANIONS = ("", ".gen", ".replay", ".tpmkek")
_RECORD = struct.Struct("<IBBIIQH")
Rng = Callable[[int], bytes]
Log = Callable[[str], None]


class StoreError(Exception):
    """The store could not be read or written; a failed save changed nothing.

    ``retry``: the cause may go away by itself (a device that is stopped or
    absent), so loading again later makes sense; False for a corrupt or
    rolled-back store and for a wrong PIN (retrying could lock the token)."""

    def __init__(self, message: str, *, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


class Snapshot(NamedTuple):
    keys: list[Key]
    next_key_id: int
    note: str = ""  #: something the service should log (e.g. "created an empty store")


class KeyStore(Protocol):
    @property
    def path(self) -> Path | None: ...  # read-only here: a sealed store narrows it to its Path

    log: Log

    def load(self) -> Snapshot: ...

    def save(self, keys: Iterable[Key], next_key_id: int) -> None: ...

    def generate(self, key_id: int, key_type: KeyType, usage: Usage, rng: Rng, version: int = 1) -> Key: ...

    def import_key(self, key_id: int, key_type: KeyType, usage: Usage, fmt: KeyFormat, material: bytes) -> Key: ...

    def discard(self, key: Key) -> None: ...

    def close(self) -> None: ...


class KeyFactory:
    """Keys held in process memory (File, TPM and memory stores; HSM for non-AES keys)."""

    path: Path | None = None

    def __init__(self) -> None:
        self.log: Log = lambda line: None

    def generate(self, key_id: int, key_type: KeyType, usage: Usage, rng: Rng, version: int = 1) -> Key:
        return Key.generate(key_id, key_type, usage, rng, version)

    def import_key(self, key_id: int, key_type: KeyType, usage: Usage, fmt: KeyFormat, material: bytes) -> Key:
        return Key.from_material(key_id, key_type, usage, fmt, material)

    def discard(self, key: Key) -> None:
        return None

    def close(self) -> None:
        return None


# --------------------------------------------------------------------------- record image


def serialize(keys: Iterable[Key], next_key_id: int) -> bytearray:
    keys = list(keys)
    out = bytearray(struct.pack("<II", next_key_id, len(keys)))
    for key in keys:
        fmt, material = key.storage_material()
        out += _RECORD.pack(
            key.key_id, key.key_type, fmt, key.usage, key.version, key.nonce_lease, len(material)
        )
        out += material
    return out


Resolve = Callable[[int, KeyType, Usage, int, int, bytes], Key]


def parse(image: bytearray | bytes, resolve: Resolve | None = None) -> Snapshot:
    """The keys in a record image; ``resolve(key_id, type, usage, version, lease, ref)``
    builds a key whose record names a token object (format 3)."""
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
                if fmt == DEVICE_FORMAT:
                    if resolve is None:
                        raise ValueError(f"key {kid} lives in a token, but this backend has none")
                    keys.append(resolve(kid, KeyType(ktype), Usage(usage), version, lease, bytes(material)))
                else:
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


class MemoryKeyStore(KeyFactory):
    """Volatile store holding the serialized image (so ``load`` gives fresh Key objects)."""

    def __init__(self) -> None:
        super().__init__()
        self._image: bytearray | None = None

    def load(self) -> Snapshot:
        return parse(self._image) if self._image is not None else Snapshot([], 1)

    def save(self, keys: Iterable[Key], next_key_id: int) -> None:
        image = serialize(keys, next_key_id)
        if self._image is not None:
            self._image[:] = bytes(len(self._image))
        self._image = image


class UnavailableStore(KeyFactory):
    """A client's store that could not even be opened (``reason``): every load and save fails,
    not retried, so that client is answered STORAGE_ERROR while the others are served."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.error = StoreError(reason)

    def load(self) -> Snapshot:
        raise self.error

    def save(self, keys: Iterable[Key], next_key_id: int) -> None:
        raise self.error


# --------------------------------------------------------------------------- sealing and witnesses


class Witness(Protocol):
    def read(self) -> int:
        """The last generation known committed (0: none); StoreError if unreachable."""
        ...

    def advance(self, generation: int) -> None: ...


class FileWitness:
    """The generation in ``<store>.gen`` (8 bytes LE), written like the store."""

    def __init__(self, path: Path, step: Step | None = None, ops: FileOps = OS) -> None:
        self.path = path
        self._step = step
        self.ops = ops

    def read(self) -> int:
        try:
            raw = self.ops.read(self.path)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from exc
        if len(raw) != 8:
            raise StoreError(f"{self.path} is damaged (not an 8-byte generation)")
        return int.from_bytes(raw, "little")

    def advance(self, generation: int) -> None:
        try:
            replace_file(self.path, generation.to_bytes(8, "little"), ops=self.ops, step=self._step)
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc}") from exc


class SealedStore(KeyFactory):
    """The store file every device backend writes (format in the module doc)."""

    backend = "file"
    path: Path  # always a file

    def __init__(
        self,
        path: str | os.PathLike[str],
        sealer: Sealer | None,
        witness: Witness,
        rng: Rng = os.urandom,
        step_hook: Step | None = None,
        must_exist: bool = False,
        ops: FileOps = OS,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.ops = ops  #: every file operation of the store (and of the service's replay journal)
        self._file = SealedFile(self.path, MAGIC, what="key store", ops=ops, rng=rng, step=step_hook,
                                accept_v1=True)
        self._sealer = sealer
        self._witness = witness
        self._rng = rng
        self._step = step_hook
        self.must_exist = must_exist
        self.generation = 0  #: of the store as last loaded or saved
        self.missing = False  #: the last load found no store file (and started empty)

    # -- hooks for the device backends

    def _open_device(self) -> None:
        """Connect to the device and make ``self._sealer`` ready (TPM: unseal the KEK)."""

    def _resolve(self) -> Resolve | None:
        return None

    # -- KeyStore

    def clean_temps(self) -> list[str]:
        """Remove temporary files a crash left beside the store and its companions."""
        try:
            return clean_stale_temps(self.path.parent, [self.path.name + c for c in COMPANIONS], ops=self.ops)
        except OSError as exc:
            self.log(f"{self.path}: could not remove stale temporary files: {exc}")
            return []

    def load(self) -> Snapshot:
        removed = self.clean_temps()
        if removed:
            self.log(f"{self.path}: removed {len(removed)} temporary file(s) left by a crash: {', '.join(removed)}")
        self._open_device()
        committed = self._witness.read()
        self.missing = False
        try:
            blob = self.ops.read(self.path)
        except FileNotFoundError:  # a witness this process just created vouches for nothing yet
            self.missing = True
            return self._no_store(0 if getattr(self._witness, "fresh", False) else committed)
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc}", retry=transient(exc)) from exc
        generation, nonce, body, aad = self._split(blob)
        try:
            assert self._sealer is not None
            image = self._sealer.unseal(nonce, body, aad)
        except InvalidTag as exc:
            raise StoreError(f"{self.path}: wrong key-encryption key or the file was modified") from exc
        try:
            snapshot = parse(image, self._resolve())
        finally:
            image[:] = bytes(len(image))
        if generation < committed:
            for key in snapshot.keys:
                key.zeroize()
            raise StoreError(
                f"{self.path}: rollback detected: the file is generation {generation}, but generation "
                f"{committed} was committed ({self._witness_name()}); an older copy of the store was put back"
            )
        self.generation = generation
        note = ""
        if generation > committed:  # a crash between the file and the witness: catch up
            try:
                self._witness.advance(generation)
            except StoreError as exc:
                note = f"store generation {generation} loaded, but the rollback witness could not be advanced: {exc}"
        return Snapshot(snapshot.keys, snapshot.next_key_id, note)

    def save(self, keys: Iterable[Key], next_key_id: int) -> None:
        self._open_device()
        generation = max(self.generation, self._witness.read()) + 1  # the device must answer first
        image = serialize(keys, next_key_id)
        try:
            assert self._sealer is not None
            blob = self._file.seal(self._sealer, image, generation, BACKEND_CODES[self.backend])
        finally:
            image[:] = bytes(len(image))
        try:
            synced = replace_file(self.path, blob, ops=self.ops, step=self._step)
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc}", retry=transient(exc)) from exc
        # committed: from here on the file holds the new state, whatever fails next
        self.generation = generation
        if not synced:
            self.log(f"{self.path}: written, but the directory could not be synced; "
                     "the change is in the file (it may not survive a power loss)")
        try:
            self._witness.advance(generation)
        except StoreError as exc:
            self.log(f"{self.path}: generation {generation} written, but the rollback witness was not advanced "
                     f"({exc}); it catches up at the next load or save")

    # -- helpers

    def _witness_name(self) -> str:
        return type(self._witness).__name__

    def _no_store(self, committed: int) -> Snapshot:
        if committed > 0:
            raise StoreError(
                f"{self.path} is missing, but generation {committed} of it was committed "
                f"({self._witness_name()}): restore the file (or reset the witness to start empty)"
            )
        if self.must_exist:
            raise StoreError(f"{self.path} does not exist and storage.must_exist (required) is set: "
                             "refusing to start empty")
        self.save([], 1)  # exists from now on: a later disappearance is detected
        return Snapshot([], 1, f"MISSING STORE: no key store at {self.path}: created an empty one (generation "
                               f"{self.generation}); set storage.required to refuse instead")

    def _split(self, blob: bytes) -> tuple[int, bytes, bytes, bytes]:
        try:
            head = self._file.header(blob)
        except SealedError as exc:
            raise StoreError(str(exc)) from exc
        if head.version == 1:
            if self.backend != "file":
                raise StoreError(f"{self.path} is a version-1 (File backend) key store, not a {self.backend} one")
            return 0, head.nonce, head.body, head.aad
        generation, nonce, backend = head.generation, head.nonce, head.kind
        if backend != BACKEND_CODES[self.backend]:
            names = {v: k for k, v in BACKEND_CODES.items()}
            raise StoreError(f"{self.path} was written by the {names.get(backend, backend)!r} backend, "
                             f"not {self.backend!r}")
        return generation, nonce, head.body, head.aad


def transient(exc: OSError) -> bool:
    """A write failure that may go away by itself (space, quota, I/O): retry later."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EINTR)


# --------------------------------------------------------------------------- file backend


def load_kek(path: str | os.PathLike[str]) -> bytearray:
    """Read a 32-byte raw KEK into a zeroizable buffer (KekError naming the length otherwise)."""
    return read_kek(Path(path), source=f"storage.kek_file {path}")


class FileKeyStore(SealedStore):
    """File backend: keys sealed under a KEK from a file or boot module; a
    ``<path>.gen`` witness beside the store. Consumes (zeroes) ``kek``."""

    backend = "file"

    def __init__(
        self,
        path: str | os.PathLike[str],
        kek: bytearray,
        rng: Rng = os.urandom,
        step_hook: Step | None = None,
        must_exist: bool = False,
        ops: FileOps = OS,
    ) -> None:
        path = Path(path)
        super().__init__(path, AesSealer(kek, "storage.kek_file"),
                         FileWitness(path.with_name(path.name + ".gen"), None, ops),
                         rng, step_hook, must_exist, ops)


# --------------------------------------------------------------------------- selection
