"""Key objects: key types, PSA-style usage policy, key-bound operations, zeroization.

Key types and their secret form (the form KEY_IMPORT takes and the store keeps):

==========  =====================  ========  ==========  ==========
type        secret form            secret    public      sig / ct
==========  =====================  ========  ==========  ==========
AES-256     raw key                32        --          --
ML-DSA-44   seed xi (FIPS 204)     32        1312        sig 2420
ML-DSA-65   seed xi                32        1952        sig 3309
ML-DSA-87   seed xi                32        2592        sig 4627
ML-KEM-512  seed d||z (FIPS 203)   64        800         ct 768
ML-KEM-768  seed d||z              64        1184        ct 1088
ML-KEM-1024 seed d||z              64        1568        ct 1568
==========  =====================  ========  ==========  ==========

Backends: ``cryptography`` for everything it has. Up to release 50.0.2 it has
no ML-KEM-512, so ML-KEM-512 uses ``kyber-py`` (pure Python, FIPS 203, seed
``key_derive``). kyber-py is not constant-time; it is acceptable for this
emulator, not for production secrets.

Policy (PSA style): a key carries a set of ``Usage`` bits fixed at creation.
An operation needs its bit, or the service answers POLICY_DENIED. What a key
*may* be given depends on its type and on whether it holds a secret:

- AES-256: ENCRYPT, DECRYPT, DESTROY, ROTATE
- ML-DSA with secret: SIGN, VERIFY, EXPORT_PUBLIC, DESTROY, ROTATE;
  public only: VERIFY, EXPORT_PUBLIC, DESTROY
- ML-KEM with secret: ENCAPS, DECAPS, EXPORT_PUBLIC, DESTROY, ROTATE;
  public only: ENCAPS, EXPORT_PUBLIC, DESTROY

Usage 0 in a create request means "everything allowed for that form". No
usage bit lets a secret out: no request returns secret bytes.

Zeroization, and its limits in Python (honestly)
------------------------------------------------
The canonical secret (AES key or seed) lives in one ``bytearray`` that
``zeroize()`` overwrites; destroy and rotate call it, and cached library
objects are dropped. That is all Python can promise. It does **not** reach:

- copies made by ``cryptography``/OpenSSL when a key object is built (they are
  freed, and OpenSSL clears private key memory on free, when the object is
  garbage-collected; we cannot force or check this from Python);
- kyber-py's expanded decapsulation key and intermediates, which are
  immutable ``bytes`` and ``int`` objects (only freed, never overwritten);
- the request frame itself: an imported secret arrives inside an immutable
  ``bytes`` payload, and decoding slices copy it (the transport should zero
  its shared request area, as issue 3 asks, but heap copies remain until
  reused); plaintexts and shared secrets likewise;
- swap, core dumps and the allocator's free lists.

So zeroization here shortens the life of the one copy we control; it is not a
guarantee. A real deployment keeps keys in a TPM/HSM backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from kyber_py.ml_kem import ML_KEM_512  # imported eagerly: a confined task cannot import later

from protocols.crypto import KeyFlags, KeyFormat, KeyInfo, KeyType, Usage

Rng = Callable[[int], bytes]
#: Store-record format of a key held in a token (never on the wire): material = the token's id for it.
DEVICE_FORMAT = 3


class Family(Enum):
    AES = "aes"
    MLDSA = "ml-dsa"
    MLKEM = "ml-kem"


_LIFECYCLE = Usage.DESTROY | Usage.ROTATE


@dataclass(frozen=True, slots=True)
class KeySpec:
    key_type: KeyType
    family: Family
    secret_size: int
    public_size: int  # 0: no public form
    out_size: int  # signature size (ML-DSA) or ciphertext size (ML-KEM); 0 for AES
    private_usage: Usage  # allowed when the secret is held
    public_usage: Usage  # allowed for public-only keys (0: no public form)
    backend: Any  # (private_cls, public_cls) for cryptography, or None for kyber-py


def _dsa(t: KeyType, pub: int, sig: int, classes: Any) -> KeySpec:
    return KeySpec(
        t, Family.MLDSA, 32, pub, sig,
        Usage.SIGN | Usage.VERIFY | Usage.EXPORT_PUBLIC | _LIFECYCLE,
        Usage.VERIFY | Usage.EXPORT_PUBLIC | Usage.DESTROY,
        classes,
    )  # fmt: skip


def _kem(t: KeyType, pub: int, ct: int, classes: Any) -> KeySpec:
    return KeySpec(
        t, Family.MLKEM, 64, pub, ct,
        Usage.ENCAPS | Usage.DECAPS | Usage.EXPORT_PUBLIC | _LIFECYCLE,
        Usage.ENCAPS | Usage.EXPORT_PUBLIC | Usage.DESTROY,
        classes,
    )  # fmt: skip


# fmt: off
SPECS: dict[KeyType, KeySpec] = {
    KeyType.AES_256: KeySpec(
        KeyType.AES_256, Family.AES, 32, 0, 0,
        Usage.ENCRYPT | Usage.DECRYPT | _LIFECYCLE, Usage(0), None,
    ),
    KeyType.MLDSA_44: _dsa(KeyType.MLDSA_44, 1312, 2420, (mldsa.MLDSA44PrivateKey, mldsa.MLDSA44PublicKey)),
    KeyType.MLDSA_65: _dsa(KeyType.MLDSA_65, 1952, 3309, (mldsa.MLDSA65PrivateKey, mldsa.MLDSA65PublicKey)),
    KeyType.MLDSA_87: _dsa(KeyType.MLDSA_87, 2592, 4627, (mldsa.MLDSA87PrivateKey, mldsa.MLDSA87PublicKey)),
    KeyType.MLKEM_512: _kem(KeyType.MLKEM_512, 800, 768, None),
    KeyType.MLKEM_768: _kem(KeyType.MLKEM_768, 1184, 1088, (mlkem.MLKEM768PrivateKey, mlkem.MLKEM768PublicKey)),
    KeyType.MLKEM_1024: _kem(KeyType.MLKEM_1024, 1568, 1568, (mlkem.MLKEM1024PrivateKey, mlkem.MLKEM1024PublicKey)),
}
# fmt: on


class KeyDestroyed(RuntimeError):
    """A zeroized key was used (a service bug if it ever escapes)."""


# --------------------------------------------------------------------------- ML-KEM-512 via kyber-py


class _Kyber512Public:
    """The slice of cryptography's MLKEM public-key API the service uses."""

    def __init__(self, ek: bytes, *, validate: bool = True) -> None:
        if len(ek) != 800:
            raise ValueError("ML-KEM-512 public key is 800 bytes")
        self._ek = bytes(ek)
        if validate:  # FIPS 203 7.2 type + modulus check, done by encaps; ValueError if bad
            ML_KEM_512.encaps(self._ek)

    def public_bytes_raw(self) -> bytes:
        return self._ek

    def encapsulate(self) -> tuple[bytes, bytes]:
        return ML_KEM_512.encaps(self._ek)  # (shared secret, ciphertext)


class _Kyber512Private:
    def __init__(self, seed: bytes | bytearray) -> None:
        ek, dk = ML_KEM_512.key_derive(bytes(seed))
        self._dk = bytearray(dk)  # expanded key; see "limits" in the module doc
        self._public = _Kyber512Public(ek, validate=False)

    def public_key(self) -> _Kyber512Public:
        return self._public

    def decapsulate(self, ciphertext: bytes) -> bytes:
        if len(ciphertext) != 768:
            raise ValueError("ML-KEM-512 ciphertext is 768 bytes")
        return ML_KEM_512.decaps(bytes(self._dk), ciphertext)

    def zeroize(self) -> None:
        self._dk[:] = bytes(len(self._dk))


def _private_obj(spec: KeySpec, secret: bytearray) -> Any:
    if spec.family is Family.AES:
        return AESGCM(secret)
    if spec.key_type is KeyType.MLKEM_512:
        return _Kyber512Private(secret)
    return spec.backend[0].from_seed_bytes(secret)


def _public_obj(spec: KeySpec, public: bytes) -> Any:
    if spec.key_type is KeyType.MLKEM_512:
        return _Kyber512Public(public)
    return spec.backend[1].from_public_bytes(public)


# --------------------------------------------------------------------------- Key


class Key:
    """One key version under one key id. Mutable only through ``zeroize``.

    Build with ``Key.generate`` or ``Key.from_material``; both raise ValueError
    for bad material or a usage the key's form may not have.
    """

    __slots__ = (
        "_device",
        "_private",
        "_public",
        "_public_bytes",
        "_secret",
        "key_id",
        "nonce_lease",
        "spec",
        "usage",
        "version",
    )

    def __init__(
        self,
        key_id: int,
        spec: KeySpec,
        usage: Usage,
        version: int,
        secret: bytearray | None,
        public: bytes | None,
        nonce_lease: int = 0,
        device: Any = None,
    ) -> None:
        """``device``: a key that lives in a token (HSM backend, AES only): an object with
        AESGCM's ``encrypt``/``decrypt`` and a ``ref`` (bytes naming it in the token)."""
        self.key_id, self.spec, self.version, self.nonce_lease = key_id, spec, version, nonce_lease
        allowed = spec.private_usage if secret is not None or device is not None else spec.public_usage
        if not allowed:
            raise ValueError(f"{spec.key_type.name} has no public-only form")
        if not 1 <= key_id <= 0xFFFF_FFFF or not 1 <= version <= 0xFFFF_FFFF:
            raise ValueError("key id and version must be 1..2^32-1")
        usage = Usage(usage) or allowed
        if int(usage) & ~int(allowed):
            raise ValueError(f"usage {usage!r} not allowed for this {spec.key_type.name} key")
        self.usage = usage
        self._secret = secret
        self._device = device
        self._private: Any = None
        self._public: Any = None
        if device is not None:
            if spec.family is not Family.AES or secret is not None:
                raise ValueError("only AES keys live in a token")
            self._private = device
        elif secret is not None:
            if len(secret) != spec.secret_size:
                raise ValueError(f"{spec.key_type.name} secret is {spec.secret_size} bytes")
            self._private = _private_obj(spec, secret)
            if spec.family is not Family.AES:
                self._public = self._private.public_key()
        elif public is not None:
            if len(public) != spec.public_size:
                raise ValueError(f"{spec.key_type.name} public key is {spec.public_size} bytes")
            self._public = _public_obj(spec, public)  # validates (ValueError)
        self._public_bytes = self._public.public_bytes_raw() if self._public is not None else b""

    @classmethod
    def generate(cls, key_id: int, key_type: KeyType, usage: Usage, rng: Rng, version: int = 1) -> Key:
        spec = SPECS[KeyType(key_type)]
        return cls(key_id, spec, usage, version, bytearray(rng(spec.secret_size)), None)

    @classmethod
    def from_material(
        cls,
        key_id: int,
        key_type: KeyType,
        usage: Usage,
        fmt: KeyFormat,
        material: bytes | bytearray,
        version: int = 1,
        nonce_lease: int = 0,
    ) -> Key:
        spec = SPECS[KeyType(key_type)]
        if KeyFormat(fmt) is KeyFormat.SECRET:
            return cls(key_id, spec, usage, version, bytearray(material), None, nonce_lease)
        return cls(key_id, spec, usage, version, None, bytes(material), nonce_lease)

    def rotated(self, rng: Rng) -> Key:
        """Fresh material, same id, type and policy, version + 1, counters reset."""
        if not self.has_secret:
            raise ValueError("a public-only key cannot be rotated")
        return Key.generate(self.key_id, self.key_type, self.usage, rng, self.version + 1)

    # -- facts

    @property
    def key_type(self) -> KeyType:
        return self.spec.key_type

    @property
    def family(self) -> Family:
        return self.spec.family

    @property
    def has_secret(self) -> bool:
        return self._secret is not None or self._device is not None

    @property
    def device(self) -> Any:
        """The token object holding this key, or None (the secret is in memory)."""
        return self._device

    @property
    def destroyed(self) -> bool:
        return self._private is None and self._public is None

    @property
    def public_key(self) -> bytes:
        return self._public_bytes

    def permits(self, usage: Usage) -> bool:
        wanted = int(usage)  # plain ints: IntFlag's & runs Python-level enum code on every request
        return (int(self.usage) & wanted) == wanted

    def info(self) -> KeyInfo:
        flags = KeyFlags.HAS_SECRET if self.has_secret else KeyFlags(0)
        return KeyInfo(self.key_id, self.key_type, flags, self.usage, self.version)

    def storage_material(self) -> tuple[KeyFormat, bytes | bytearray]:
        """For the key store only: what to persist. Never put this on the wire."""
        if self._device is not None:
            return DEVICE_FORMAT, self._device.ref  # type: ignore[return-value]
        if self._secret is not None:
            return KeyFormat.SECRET, self._secret
        return KeyFormat.PUBLIC, self._public_bytes

    # -- operations (the service has checked type and policy already)

    def _need(self, obj: Any) -> Any:
        if obj is None:
            raise KeyDestroyed(f"key {self.key_id} has no such material")
        return obj

    def aead(self) -> AESGCM:
        return self._need(self._private)

    def sign(self, message: bytes, context: bytes) -> bytes:
        return self._need(self._private).sign(message, context)

    def verify(self, signature: bytes, message: bytes, context: bytes) -> bool:
        if len(signature) != self.spec.out_size:
            return False
        try:
            self._need(self._public).verify(signature, message, context)
        except InvalidSignature:
            return False
        return True

    def encapsulate(self) -> tuple[bytes, bytes]:
        """(shared secret, ciphertext)."""
        return self._need(self._public).encapsulate()

    def decapsulate(self, ciphertext: bytes) -> bytes:
        return self._need(self._private).decapsulate(ciphertext)

    def zeroize(self) -> None:
        """Overwrite the secret and drop library objects; the key is unusable after."""
        if isinstance(self._private, _Kyber512Private):
            self._private.zeroize()
        if self._secret is not None:
            self._secret[:] = bytes(len(self._secret))
        self._private = self._public = self._device = None

    def __repr__(self) -> str:  # never print material
        return f"Key(id={self.key_id}, type={self.key_type.name}, usage={self.usage!r}, v{self.version})"
