"""HSM backend (PKCS#11): the KEK never leaves the token; AES service keys live in it.

Through the maintained binding ``python-pkcs11`` and any PKCS#11 module
(``storage.module``: SoftHSM2's ``/usr/lib/softhsm/libsofthsm2.so`` in
development, a vendor's module on a device). In the token named by
``storage.token_label``, after a user login with the PIN (``pin_file``, or the
``pin_rom`` boot module):

- ``l4emu-kek:<store>``: an AES-256 secret key, generated in the token,
  CKA_SENSITIVE and not extractable. The store file is sealed with AES-GCM
  *by the token* under it, so the key-encryption key is never in process
  memory. ML-DSA and ML-KEM keys (seeds) live in that file: wrapped by the
  token key, unwrapped into memory for their operations (PKCS#11 3.0 tokens
  have no ML-DSA/ML-KEM; SoftHSM2 2.6 has neither).
- ``l4emu-key:<store>``: every AES-256 service key, generated (or imported)
  in the token, not extractable; AES_ENCRYPT/AES_DECRYPT run in the token
  (CKM_AES_GCM with the service's nonce). The store file keeps only the key's
  CKA_ID (record format 3).
- ``l4emu-gen:<store>``: data objects holding the store generation, the
  rollback witness (a new object is created before older ones are removed,
  so a crash leaves the maximum in place).

Errors: a wrong PIN is reported and never retried automatically (tokens lock
after a few failures); an absent token or a token that stops answering is
retried by the service.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag

from durable.atomic import Step
from durable.fileops import OS, FileOps
from protocols.crypto import KeyFormat, KeyType, Usage

from .keys import SPECS, Key
from .keystore import Rng, SealedStore, StoreError

_LIBS: dict[str, Any] = {}


def _lib(module: str) -> Any:
    import pkcs11

    if module not in _LIBS:
        try:
            _LIBS[module] = pkcs11.lib(module)
        except Exception as exc:
            raise StoreError(f"cannot load the PKCS#11 module {module}: {exc}") from exc
    return _LIBS[module]


def _device_errors() -> tuple[type[BaseException], ...]:
    from pkcs11 import exceptions as e

    return tuple(getattr(e, n) for n in ("DeviceRemoved", "DeviceError", "DeviceMemory", "SessionClosed",
                                          "SessionHandleInvalid", "TokenNotPresent", "TokenNotRecognised",
                                          "CryptokiNotInitialised", "UserNotLoggedIn") if hasattr(e, n))


class TokenAead:
    """An AES-256 key inside the token, with AESGCM's ``encrypt``/``decrypt``."""

    __slots__ = ("obj", "ref", "store")

    def __init__(self, store: HsmKeyStore, obj: Any, ref: bytes) -> None:
        self.store, self.obj, self.ref = store, obj, ref

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes | None) -> bytes:
        from pkcs11 import Mechanism
        from pkcs11.mechanisms import GCMParams

        return self.store._call(lambda: bytes(self.obj.encrypt(
            bytes(data), mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(bytes(nonce), bytes(aad or b"")))))

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes | None) -> bytes:
        from pkcs11 import Mechanism, PKCS11Error
        from pkcs11.mechanisms import GCMParams

        def run() -> bytes:
            try:
                return bytes(self.obj.decrypt(bytes(data), mechanism=Mechanism.AES_GCM,
                                              mechanism_param=GCMParams(bytes(nonce), bytes(aad or b""))))
            except _device_errors():
                raise
            except PKCS11Error as exc:  # tag mismatch: SoftHSM2 says GeneralError, others EncryptedDataInvalid
                raise InvalidTag() from exc

        return self.store._call(run)


class TokenSealer:
    """Seals the store file with the token's KEK (AES-GCM in the token)."""

    def __init__(self, aead: TokenAead) -> None:
        self._aead = aead

    def seal(self, nonce: bytes, data: bytes | bytearray, aad: bytes) -> bytes:
        return self._aead.encrypt(nonce, bytes(data), aad)

    def unseal(self, nonce: bytes, blob: bytes, aad: bytes) -> bytearray:
        return bytearray(self._aead.decrypt(nonce, blob, aad))


class TokenGeneration:
    """Rollback witness: the largest value of the store's generation data objects."""

    def __init__(self, store: HsmKeyStore) -> None:
        self._store = store

    def _objects(self) -> list[tuple[int, Any]]:
        from pkcs11 import Attribute, ObjectClass

        found = self._store._session.get_objects({Attribute.CLASS: ObjectClass.DATA,
                                                  Attribute.LABEL: self._store.label("gen")})
        return [(int.from_bytes(bytes(o[Attribute.VALUE]), "big"), o) for o in found]

    def read(self) -> int:
        self._store._open_device()
        return self._store._call(lambda: max((v for v, _ in self._objects()), default=0))

    def advance(self, generation: int) -> None:
        from pkcs11 import Attribute, ObjectClass

        def run() -> None:
            old = self._objects()
            if any(v >= generation for v, _ in old):
                return
            self._store._session.create_object({
                Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: True, Attribute.PRIVATE: True,
                Attribute.LABEL: self._store.label("gen"), Attribute.VALUE: generation.to_bytes(8, "big")})
            for _, obj in old:  # the new maximum exists first: a crash here leaves it in place
                obj.destroy()

        self._store._open_device()
        self._store._call(run)


class HsmKeyStore(SealedStore):
    backend = "hsm"

    def __init__(self, path: str | os.PathLike[str], module: str, token_label: str, pin: str,
                 rng: Rng = os.urandom, *, softhsm2_conf: str | None = None, must_exist: bool = False,
                 step_hook: Step | None = None, ops: FileOps = OS) -> None:
        path = Path(path)
        self.module, self.token_label, self._pin = module, token_label, pin
        self.softhsm2_conf = os.path.abspath(softhsm2_conf) if softhsm2_conf else None
        super().__init__(path, None, TokenGeneration(self), rng, step_hook, must_exist, ops)
        self._session: Any = None
        self._pin_refused = ""

    def label(self, kind: str) -> str:
        return f"l4emu-{kind}:{self.path.name}"

    # -- the device

    def _call(self, fn: Any) -> Any:
        try:
            return fn()
        except StoreError:
            raise
        except _device_errors() as exc:
            self._drop_session()
            raise StoreError(f"token {self.token_label!r} stopped answering: {type(exc).__name__} {exc}",
                             retry=True) from exc

    def _drop_session(self) -> None:
        if self._session is not None:
            try:
                self._session.close()
            except Exception:
                pass
        self._session, self._sealer = None, None

    def _open_device(self) -> None:
        if self._session is not None:
            return
        if self._pin_refused:
            raise StoreError(self._pin_refused)
        import pkcs11
        from pkcs11 import exceptions as e

        if self.softhsm2_conf:
            os.environ["SOFTHSM2_CONF"] = self.softhsm2_conf
        lib = _lib(self.module)
        missing: tuple[type[BaseException], ...] = (e.NoSuchToken, *_device_errors())
        try:
            token = lib.get_token(token_label=self.token_label)
        except missing:
            try:  # a token plugged in (or created) since the module was initialised
                lib.reinitialize()
                token = lib.get_token(token_label=self.token_label)
            except missing as exc:
                raise StoreError(f"PKCS#11 token {self.token_label!r} not found in {self.module}", retry=True) from exc
        try:
            try:
                session = token.open(user_pin=self._pin, rw=True)
            except e.UserAlreadyLoggedIn:  # login is per process and token: another store of ours did it
                session = token.open(rw=True)
        except (e.PinIncorrect, e.PinInvalid, e.PinLenRange, e.PinLocked, e.PinExpired) as exc:
            self._pin_refused = (f"token {self.token_label!r} refused the PIN ({type(exc).__name__}); not retried, "
                                 "to keep the token from locking: fix the PIN and restart the service")
            raise StoreError(self._pin_refused) from exc
        except pkcs11.PKCS11Error as exc:
            raise StoreError(f"cannot open token {self.token_label!r}: {type(exc).__name__} {exc}",
                             retry=True) from exc
        self._session = session
        self._sealer = TokenSealer(self._call(self._kek))

    def close(self) -> None:
        self._drop_session()

    def _find_key(self, ref: bytes | None, kind: str) -> Any:
        from pkcs11 import Attribute, ObjectClass

        attrs = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: self.label(kind)}
        if ref is not None:
            attrs[Attribute.ID] = ref
        found = list(self._session.get_objects(attrs))
        return found[0] if found else None

    def _template(self, kind: str, ref: bytes) -> dict:
        from pkcs11 import Attribute

        return {Attribute.TOKEN: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                Attribute.ENCRYPT: True, Attribute.DECRYPT: True, Attribute.LABEL: self.label(kind),
                Attribute.ID: ref, Attribute.PRIVATE: True}

    def _kek(self) -> TokenAead:
        from pkcs11 import KeyType as PK

        obj = self._find_key(None, "kek")
        if obj is None:
            if self.path.exists():
                raise StoreError(f"{self.path} exists but its KEK {self.label('kek')!r} is not in token "
                                 f"{self.token_label!r} (another token?): nothing can decrypt it")
            ref = b"kek"
            obj = self._session.generate_key(PK.AES, 256, store=True, template=self._template("kek", ref))
        return TokenAead(self, obj, b"kek")

    # -- keys in the token

    def _resolve(self) -> Any:
        def resolve(key_id: int, key_type: KeyType, usage: Usage, version: int, lease: int, ref: bytes) -> Key:
            obj = self._call(lambda: self._find_key(ref, "key"))
            if obj is None:
                raise StoreError(f"key {key_id} is stored in token {self.token_label!r}, but the token does not "
                                 "have it")
            return Key(key_id, SPECS[key_type], usage, version, None, None, lease, device=TokenAead(self, obj, ref))

        return resolve

    def _token_key(self, key_id: int, key_type: KeyType, usage: Usage, version: int, make: Any) -> Key:
        self._open_device()
        ref = self._rng(16)
        obj = self._call(lambda: make(ref))
        try:
            return Key(key_id, SPECS[key_type], usage, version, None, None, 0, device=TokenAead(self, obj, ref))
        except ValueError:
            self._call(obj.destroy)
            raise

    def generate(self, key_id: int, key_type: KeyType, usage: Usage, rng: Rng, version: int = 1) -> Key:
        if KeyType(key_type) is not KeyType.AES_256:
            return super().generate(key_id, key_type, usage, rng, version)
        from pkcs11 import KeyType as PK

        return self._token_key(key_id, key_type, usage, version, lambda ref: self._session.generate_key(
            PK.AES, 256, store=True, template=self._template("key", ref)))

    def import_key(self, key_id: int, key_type: KeyType, usage: Usage, fmt: KeyFormat, material: bytes) -> Key:
        if KeyType(key_type) is not KeyType.AES_256 or KeyFormat(fmt) is not KeyFormat.SECRET:
            return super().import_key(key_id, key_type, usage, fmt, material)
        if len(material) != 32:
            raise ValueError("AES_256 secret is 32 bytes")
        from pkcs11 import Attribute, ObjectClass
        from pkcs11 import KeyType as PK

        def create(ref: bytes) -> Any:
            return self._session.create_object({**self._template("key", ref), Attribute.CLASS: ObjectClass.SECRET_KEY,
                                                Attribute.KEY_TYPE: PK.AES, Attribute.VALUE: bytes(material)})

        return self._token_key(key_id, key_type, usage, 1, create)

    def discard(self, key: Key) -> None:
        device = key.device
        if device is None:
            return
        try:
            self._call(device.obj.destroy)
        except Exception as exc:
            self.log(f"token object of key {key.key_id} could not be deleted: {exc}")
