"""The crypto service core: ``CryptoService.handle(request) -> response``.

Pure apart from the key store it is given: no IPC, no shared memory, no
sleeping. The task shell (kernel IPC + shared dataspace, issue 3 part 2)
copies a request frame out of the dataspace, calls ``handle`` and writes the
answer back. One request at a time; ``handle`` is not re-entrant.

Contract: ``handle`` never raises (for any ``Exception``) and always returns
a well-formed response frame. A bug caught at this boundary becomes
INTERNAL_ERROR (0x46) instead of a dead task.

Validation order (docs/crypto_protocol.md): RATE_LIMITED first (every
request, valid or not, takes a token, and a limited one gets no further
look), then ``protocol.parse_request`` (INVALID_HEADER, INVALID_TYPE,
PAYLOAD_TOO_LARGE from the header's length field, INVALID_PAYLOAD), then per
request: KEY_NOT_FOUND, WRONG_KEY_TYPE, POLICY_DENIED, key-dependent sizes
(INVALID_PAYLOAD, PAYLOAD_TOO_LARGE for an AES_ENCRYPT whose response would
exceed 64 KiB), then the operation (NONCE_REUSE, DECRYPTION_FAILED,
INVALID_SIGNATURE, CRYPTO_ERROR, STORAGE_ERROR).

Randomness: everything the service draws itself (keys, seeds, nonce salts,
replay-window hash keys, store nonces) comes from the injectable ``rng``.
ML-DSA signing (hedged) and ML-KEM encapsulation take their randomness inside
the library and cannot be injected.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping

from cryptography.exceptions import InvalidTag

from .keys import SPECS, Family, Key
from .keystore import KeyStore, open_keystore
from .nonces import DEFAULT_FP_RATE, DEFAULT_LEASE_BLOCK, DEFAULT_WINDOW, NonceExhausted, NonceSequence, ReplayWindow
from .protocol import (
    ALLOCATE_KEY_ID,
    KEY_LIST_PAGE,
    MAX_PLAINTEXT,
    AesDecryptResponse,
    AesEncryptResponse,
    EmptyResponse,
    KeyFormat,
    KeyListResponse,
    KeyResponse,
    MldsaSignResponse,
    MlkemDecapsResponse,
    MlkemEncapsResponse,
    RequestType,
    Response,
    Status,
    TAG_SIZE,
    Usage,
    encode_response,
    parse_request,
)
from .ratelimit import RateLimitConfig, TokenBucket

Result = tuple[Status, Response | None]
_LAST_ALLOCATED_ID = 0xFFFF_FFFE  # 0xFFFFFFFF can only be chosen explicitly


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """The task's config.json, parsed strictly (unknown keys are errors)."""

    storage: Mapping[str, Any] = field(default_factory=lambda: {"backend": "memory"})
    allow_import: bool = True  #: KEY_IMPORT of secret material (AES key, seeds)
    allow_public_import: bool = True  #: KEY_IMPORT of public keys (verify / encaps peers)
    rate_limit: RateLimitConfig = RateLimitConfig()
    replay_window: int = DEFAULT_WINDOW  #: WvdS: 1,000,000
    replay_fp_rate: float = DEFAULT_FP_RATE
    nonce_lease_block: int = DEFAULT_LEASE_BLOCK
    max_keys: int = 1024

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ServiceConfig:
        raw = dict(raw)
        unknown = set(raw) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"config: unknown key(s) {sorted(unknown)}")
        for name in ("allow_import", "allow_public_import"):
            if name in raw and not isinstance(raw[name], bool):
                raise ValueError(f"config.{name} must be true or false")
        for name in ("replay_window", "nonce_lease_block", "max_keys"):
            if name in raw and (isinstance(raw[name], bool) or not isinstance(raw[name], int) or raw[name] < 1):
                raise ValueError(f"config.{name} must be a positive integer")
        if "replay_fp_rate" in raw and not (isinstance(raw["replay_fp_rate"], float) and 0 < raw["replay_fp_rate"] < 1):
            raise ValueError("config.replay_fp_rate must be a float in (0, 1)")
        if "storage" in raw and not isinstance(raw["storage"], Mapping):
            raise ValueError("config.storage must be an object")
        raw["rate_limit"] = RateLimitConfig.from_dict(raw.get("rate_limit"))
        return cls(**raw)


class CryptoService:
    """Holds the keys and answers WvdS request frames."""

    def __init__(
        self,
        config: ServiceConfig | Mapping[str, Any] | None = None,
        *,
        store: KeyStore | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """Load the keys. Raises (ValueError, StoreError) for a bad config or
        an unreadable store: a service that cannot start must not answer."""
        self.config = config if isinstance(config, ServiceConfig) else ServiceConfig.from_dict(config or {})
        self._clock, self._rng = clock, rng
        self._store = store if store is not None else open_keystore(self.config.storage, rng)
        snapshot = self._store.load()
        self._keys: dict[int, Key] = {k.key_id: k for k in snapshot.keys}
        self._next_key_id = snapshot.next_key_id
        self._sequences: dict[int, NonceSequence] = {}
        self._windows: dict[int, ReplayWindow] = {}
        self._buckets: dict[Hashable, TokenBucket] = {}
        self._handlers: dict[RequestType, Callable[[Any], Result]] = {
            RequestType.AES_ENCRYPT: self._aes_encrypt,
            RequestType.AES_DECRYPT: self._aes_decrypt,
            RequestType.MLDSA_SIGN: self._mldsa_sign,
            RequestType.MLDSA_VERIFY: self._mldsa_verify,
            RequestType.MLKEM_KEYGEN: self._mlkem_keygen,
            RequestType.MLKEM_ENCAPS: self._mlkem_encaps,
            RequestType.MLKEM_DECAPS: self._mlkem_decaps,
            RequestType.KEY_GENERATE: self._key_generate,
            RequestType.KEY_IMPORT: self._key_import,
            RequestType.KEY_EXPORT_PUBLIC: self._key_export_public,
            RequestType.KEY_DESTROY: self._key_destroy,
            RequestType.KEY_ROTATE: self._key_rotate,
            RequestType.KEY_LIST: self._key_list,
        }

    # ------------------------------------------------------------------ boundary

    def handle(self, request: bytes | bytearray | memoryview, *, client: Hashable = 0) -> bytes:
        """Answer one request frame. ``client`` selects the rate-limit bucket
        (the shell passes the IPC badge; clients are capability holders, so
        the set is small and fixed)."""
        try:
            bucket = self._buckets.get(client)
            now = self._clock()
            if bucket is None:
                bucket = self._buckets[client] = TokenBucket(self.config.rate_limit, now)
            if not bucket.allow(now):
                return encode_response(Status.RATE_LIMITED)
            req = parse_request(request)
            if isinstance(req, Status):
                return encode_response(req)
            status, body = self._handlers[req.TYPE](req)
            return encode_response(status, body)
        except Exception:  # the one boundary: a bug must not kill the task
            return encode_response(Status.INTERNAL_ERROR)

    @property
    def key_count(self) -> int:
        """Keys currently held (for the task shell's start-up log)."""
        return len(self._keys)

    def close(self) -> None:
        """Zeroize every in-memory key (the store keeps them)."""
        for key in self._keys.values():
            key.zeroize()
        self._keys.clear()
        self._sequences.clear()
        self._windows.clear()

    # ------------------------------------------------------------------ helpers

    def _key(self, key_id: int, families: tuple[Family, ...] | None, usage: Usage) -> Key | Status:
        key = self._keys.get(key_id)
        if key is None:
            return Status.KEY_NOT_FOUND
        if families is not None and key.family not in families:
            return Status.WRONG_KEY_TYPE
        if not key.permits(usage):
            return Status.POLICY_DENIED
        return key

    def _persist(self) -> bool:
        try:
            self._store.save(self._keys.values(), self._next_key_id)
        except Exception:
            return False
        return True

    def _forget_state(self, key_id: int) -> None:
        """Nonce sequence and replay window belong to one key version."""
        self._sequences.pop(key_id, None)
        self._windows.pop(key_id, None)

    def _allocate_id(self) -> int | None:
        kid = max(self._next_key_id, 1)
        while kid in self._keys and kid <= _LAST_ALLOCATED_ID:
            kid += 1
        return kid if kid <= _LAST_ALLOCATED_ID else None

    def _create(self, key_id: int, build: Callable[[int], Key]) -> Result:
        old_next = self._next_key_id
        if key_id == ALLOCATE_KEY_ID:
            kid = self._allocate_id()
            if kid is None:
                return Status.STORAGE_ERROR, None
        elif key_id in self._keys:
            return Status.KEY_EXISTS, None
        else:
            kid = key_id
        if len(self._keys) >= self.config.max_keys:
            return Status.STORAGE_ERROR, None
        try:
            key = build(kid)
        except ValueError:
            return Status.INVALID_PAYLOAD, None
        self._keys[kid] = key
        if key_id == ALLOCATE_KEY_ID:
            self._next_key_id = kid + 1
        if not self._persist():
            del self._keys[kid]
            self._next_key_id = old_next
            key.zeroize()
            return Status.STORAGE_ERROR, None
        return Status.SUCCESS, KeyResponse(key.info(), key.public_key)

    # ------------------------------------------------------------------ AES-256-GCM

    def _aes_encrypt(self, req: Any) -> Result:
        key = self._key(req.key_id, (Family.AES,), Usage.ENCRYPT)
        if isinstance(key, Status):
            return key, None
        if len(req.plaintext) > MAX_PLAINTEXT:
            return Status.PAYLOAD_TOO_LARGE, None
        seq = self._sequences.get(key.key_id)
        if seq is None:
            seq = NonceSequence(self._rng(4), key.nonce_lease, self.config.nonce_lease_block)
            self._sequences[key.key_id] = seq
        try:
            lease = seq.lease_needed()
        except NonceExhausted:
            return Status.CRYPTO_ERROR, None
        if lease is not None:  # persist the lease before using any nonce in it
            old, key.nonce_lease = key.nonce_lease, lease
            if not self._persist():
                key.nonce_lease = old
                return Status.STORAGE_ERROR, None
            seq.grant_lease(lease)
        nonce = seq.next_nonce()
        sealed = key.aead().encrypt(nonce, req.plaintext, req.aad)
        return Status.SUCCESS, AesEncryptResponse(nonce, sealed[:-TAG_SIZE], sealed[-TAG_SIZE:])

    def _aes_decrypt(self, req: Any) -> Result:
        key = self._key(req.key_id, (Family.AES,), Usage.DECRYPT)
        if isinstance(key, Status):
            return key, None
        window = self._windows.get(key.key_id)
        if window is None:
            window = ReplayWindow(self._rng(32), self.config.replay_window, self.config.replay_fp_rate)
            self._windows[key.key_id] = window
        if window.seen(req.nonce):
            return Status.NONCE_REUSE, None
        try:
            plaintext = key.aead().decrypt(req.nonce, req.ciphertext + req.tag, req.aad)
        except InvalidTag:
            return Status.DECRYPTION_FAILED, None
        window.add(req.nonce)  # only authenticated nonces: no poisoning
        return Status.SUCCESS, AesDecryptResponse(plaintext)

    # ------------------------------------------------------------------ ML-DSA

    def _mldsa_sign(self, req: Any) -> Result:
        key = self._key(req.key_id, (Family.MLDSA,), Usage.SIGN)
        if isinstance(key, Status):
            return key, None
        try:
            signature = key.sign(req.message, req.context)
        except ValueError:
            return Status.CRYPTO_ERROR, None
        return Status.SUCCESS, MldsaSignResponse(signature)

    def _mldsa_verify(self, req: Any) -> Result:
        key = self._key(req.key_id, (Family.MLDSA,), Usage.VERIFY)
        if isinstance(key, Status):
            return key, None
        if key.verify(req.signature, req.message, req.context):
            return Status.SUCCESS, EmptyResponse()
        return Status.INVALID_SIGNATURE, None

    # ------------------------------------------------------------------ ML-KEM

    def _mlkem_keygen(self, req: Any) -> Result:
        if SPECS[req.key_type].family is not Family.MLKEM:
            return Status.WRONG_KEY_TYPE, None
        return self._create(req.key_id, lambda kid: Key.generate(kid, req.key_type, Usage(0), self._rng))

    def _mlkem_encaps(self, req: Any) -> Result:
        key = self._key(req.key_id, (Family.MLKEM,), Usage.ENCAPS)
        if isinstance(key, Status):
            return key, None
        shared_secret, ciphertext = key.encapsulate()
        return Status.SUCCESS, MlkemEncapsResponse(shared_secret, ciphertext)

    def _mlkem_decaps(self, req: Any) -> Result:
        key = self._key(req.key_id, (Family.MLKEM,), Usage.DECAPS)
        if isinstance(key, Status):
            return key, None
        if len(req.ciphertext) != key.spec.out_size:
            return Status.INVALID_PAYLOAD, None
        try:
            shared_secret = key.decapsulate(req.ciphertext)
        except ValueError:
            return Status.CRYPTO_ERROR, None
        return Status.SUCCESS, MlkemDecapsResponse(shared_secret)

    # ------------------------------------------------------------------ key management

    def _key_generate(self, req: Any) -> Result:
        return self._create(req.key_id, lambda kid: Key.generate(kid, req.key_type, req.usage, self._rng))

    def _key_import(self, req: Any) -> Result:
        allowed = self.config.allow_import if req.format is KeyFormat.SECRET else self.config.allow_public_import
        if not allowed:
            return Status.IMPORT_DISABLED, None
        return self._create(
            req.key_id, lambda kid: Key.from_material(kid, req.key_type, req.usage, req.format, req.material)
        )

    def _key_export_public(self, req: Any) -> Result:
        key = self._key(req.key_id, (Family.MLDSA, Family.MLKEM), Usage.EXPORT_PUBLIC)
        if isinstance(key, Status):
            return key, None
        return Status.SUCCESS, KeyResponse(key.info(), key.public_key)

    def _key_destroy(self, req: Any) -> Result:
        key = self._key(req.key_id, None, Usage.DESTROY)
        if isinstance(key, Status):
            return key, None
        del self._keys[key.key_id]
        if not self._persist():
            self._keys[key.key_id] = key
            return Status.STORAGE_ERROR, None
        key.zeroize()
        self._forget_state(key.key_id)
        return Status.SUCCESS, EmptyResponse()

    def _key_rotate(self, req: Any) -> Result:
        old = self._key(req.key_id, None, Usage.ROTATE)
        if isinstance(old, Status):
            return old, None
        new = old.rotated(self._rng)
        self._keys[old.key_id] = new
        if not self._persist():
            self._keys[old.key_id] = old
            new.zeroize()
            return Status.STORAGE_ERROR, None
        old.zeroize()
        self._forget_state(old.key_id)  # WvdS: the tracker is reset on rotation
        return Status.SUCCESS, KeyResponse(new.info(), new.public_key)

    def _key_list(self, req: Any) -> Result:
        ids = sorted(k for k in self._keys if k >= req.cursor)
        page, rest = ids[:KEY_LIST_PAGE], ids[KEY_LIST_PAGE:]
        infos = tuple(self._keys[k].info() for k in page)
        return Status.SUCCESS, KeyListResponse(rest[0] if rest else 0, infos)


__all__ = ["CryptoService", "ServiceConfig"]
