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
PAYLOAD_TOO_LARGE from the header's length field, INVALID_PAYLOAD), then the
client's allowlist (POLICY_DENIED for a request type it may not send), then
STORAGE_ERROR if the key store is unavailable, then per request:
KEY_NOT_FOUND, WRONG_KEY_TYPE, POLICY_DENIED, key-dependent sizes
(INVALID_PAYLOAD, PAYLOAD_TOO_LARGE for an AES_ENCRYPT whose response or
whose matching decrypt request would exceed 64 KiB), then the operation
(NONCE_REUSE, DECRYPTION_FAILED, INVALID_SIGNATURE, CRYPTO_ERROR,
STORAGE_ERROR).

Key store unavailable (a stopped TPM, an absent token, a wrong PIN, a corrupt
or rolled-back store): the service starts anyway, logs why, and answers
STORAGE_ERROR to every request that passed the checks above, with nothing
written. A cause that may go away (``StoreError.retry``) is retried at most
every ``store_retry_ms`` by the next request; a corrupt store or a refused
PIN is not. A device that fails during an operation is reported the same way.

Randomness: everything the service draws itself (keys, seeds, nonce salts,
replay-window hash keys, store nonces) comes from the injectable ``rng``.
ML-DSA signing (hedged) and ML-KEM encapsulation take their randomness inside
the library and cannot be injected.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag

from durable.fileops import OS
from protocols.crypto import (
    ALLOCATE_KEY_ID,
    KEY_LIST_PAGE,
    MAX_AAD_AND_PLAINTEXT,
    MAX_PLAINTEXT,
    TAG_SIZE,
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
    Usage,
    parse_sequenced_request,
    request_sequence,
    response_parts,
)

from .backends import open_keystore
from .keys import SPECS, Family, Key
from .keystore import KeyStore, StoreError, transient
from .nonces import DEFAULT_FP_RATE, DEFAULT_LEASE_BLOCK, DEFAULT_WINDOW, NonceExhausted, NonceSequence, ReplayWindow
from .ratelimit import RateLimitConfig, TokenBucket
from .replay_journal import ReplayJournal


class _Sealed:
    """The AES_ENCRYPT answer as the cipher returned it: ``Nonce(12) | Ciphertext || Tag(16)`` is
    exactly ``nonce`` then ``sealed`` (the wire bytes of ``AesEncryptResponse``, without
    splitting and re-joining a 64 KiB ciphertext)."""

    __slots__ = ("nonce", "sealed")

    def __init__(self, nonce: bytes, sealed: memoryview) -> None:
        self.nonce, self.sealed = nonce, sealed

    def payload_parts(self) -> list[Any]:
        return [self.nonce, self.sealed]

    def to_payload(self) -> bytes:
        return self.nonce + bytes(self.sealed)

    def response(self) -> AesEncryptResponse:
        return AesEncryptResponse(self.nonce, bytes(self.sealed[:-TAG_SIZE]), bytes(self.sealed[-TAG_SIZE:]))


Result = tuple[Status, "Response | _Sealed | None"]
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
    replay_journal: bool = True  #: persist the replay window beside a store that has a file
    store_retry_ms: int = 1000  #: retry an unavailable device at most this often

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ServiceConfig:
        raw = dict(raw)
        unknown = set(raw) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"config: unknown key(s) {sorted(unknown)}")
        for name in ("allow_import", "allow_public_import"):
            if name in raw and not isinstance(raw[name], bool):
                raise ValueError(f"config.{name} must be true or false")
        if "replay_journal" in raw and not isinstance(raw["replay_journal"], bool):
            raise ValueError("config.replay_journal must be true or false")
        for name in ("replay_window", "nonce_lease_block", "max_keys", "store_retry_ms"):
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
        log: Callable[[str], None] | None = None,
        allowed: frozenset[int] | None = None,
    ) -> None:
        """Raises ValueError for a bad config. A store that cannot be loaded does
        not stop the service: it answers STORAGE_ERROR and says why in the log.
        ``allowed``: the request types this client may send (None: all)."""
        self.config = config if isinstance(config, ServiceConfig) else ServiceConfig.from_dict(config or {})
        self._clock, self._rng = clock, rng
        self._log = log if log is not None else (lambda line: None)
        self._allowed = allowed
        self._store = store if store is not None else open_keystore(self.config.storage, rng)
        self._store.log = self._log
        self._keys: dict[int, Key] = {}
        self._next_key_id = 1
        self._sequences: dict[int, NonceSequence] = {}
        self._windows: dict[int, ReplayWindow] = {}
        self._buckets: dict[Hashable, TokenBucket] = {}
        path = getattr(self._store, "path", None)
        self._journal = ReplayJournal(path.with_name(path.name + ".replay"), ops=getattr(self._store, "ops", OS)) \
            if path is not None and self.config.replay_journal else None
        self._store_error: StoreError | None = None
        self._retry_at = 0
        #: AES_ENCRYPT output, reused: valid until the next request (``handle_parts``' contract)
        self._sealed = memoryview(bytearray(MAX_PLAINTEXT + TAG_SIZE))
        self._load()
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
        the set is small and fixed). A request's sequence number, if it carries
        one, is echoed in the response."""
        return b"".join(self.handle_parts(request, client=client))

    def handle_parts(self, request: bytes | bytearray | memoryview, *, client: Hashable = 0) -> list[Any]:
        """``handle`` with the response frame as buffers to write one after the other (header
        first), so a large answer is written where it goes without a join. The buffers are
        valid until the next request (the service reuses its output buffer)."""
        seq = None
        try:
            bucket = self._buckets.get(client)
            now = self._clock()
            if bucket is None:
                bucket = self._buckets[client] = TokenBucket(self.config.rate_limit, now)
            if not bucket.allow(now):
                return response_parts(Status.RATE_LIMITED, seq=request_sequence(request))
            seq, req = parse_sequenced_request(request)
            if isinstance(req, Status):
                return response_parts(req, seq=seq)
            rtype = req.TYPE
            if self._allowed is not None and rtype not in self._allowed:
                return response_parts(Status.POLICY_DENIED, seq=seq)
            if self._store_error is not None and not self._reload(now):
                return response_parts(Status.STORAGE_ERROR, seq=seq)
            try:
                status, body = self._handlers[rtype](req)
            except StoreError as exc:  # the device failed during an operation
                self._unavailable(exc, now)
                return response_parts(Status.STORAGE_ERROR, seq=seq)
            return response_parts(status, body, seq=seq)  # type: ignore[arg-type]  # _Sealed: an AesEncryptResponse's bytes
        except Exception:  # the one boundary: a bug must not kill the task
            return response_parts(Status.INTERNAL_ERROR, seq=seq)

    # ------------------------------------------------------------------ the key store

    @property
    def store_error(self) -> StoreError | None:
        """Why the key store is unavailable (None when it is available)."""
        return self._store_error

    def _load(self) -> bool:
        try:
            snapshot = self._store.load()
            windows = self._journal_windows(snapshot.keys)
        except StoreError as exc:
            self._unavailable(exc, self._clock())
            return False
        except Exception as exc:
            self._unavailable(StoreError(f"{type(exc).__name__}: {exc}"), self._clock())
            return False
        self._keys = {k.key_id: k for k in snapshot.keys}
        self._next_key_id = snapshot.next_key_id
        self._windows = windows
        if snapshot.note:
            self._log(snapshot.note)
        if self._store_error is not None:
            self._log(f"key store available again: {len(self._keys)} key(s)")
        self._store_error = None
        return True

    def _reload(self, now: int) -> bool:
        assert self._store_error is not None
        if not self._store_error.retry or now < self._retry_at:
            return False
        return self._load()

    def _unavailable(self, exc: StoreError, now: int) -> None:
        if self._store_error is None or str(self._store_error) != str(exc):
            self._log(f"STORAGE: key store unavailable, answering STORAGE_ERROR: {exc}"
                      + (" (will retry)" if exc.retry else " (not retried)"))
        for key in self._keys.values():
            key.zeroize()
        self._keys.clear()
        self._sequences.clear()
        self._windows.clear()
        self._store_error = exc
        self._retry_at = now + self.config.store_retry_ms * 1_000_000

    def _journal_windows(self, keys: list[Key]) -> dict[int, ReplayWindow]:
        """Each key version's replay window as the journal left it (the journal is the truth)."""
        if self._journal is None:
            return {}
        try:
            records = self._journal.load()
        except OSError as exc:
            raise StoreError(f"cannot read the replay journal {self._journal.path}: {exc}",
                             retry=transient(exc)) from exc
        versions = {k.key_id: k.version for k in keys}
        windows: dict[int, ReplayWindow] = {}
        for kid, version, nonce in records:
            if versions.get(kid) == version:
                window = windows.get(kid)
                if window is None:
                    window = windows[kid] = self._new_window()
                window.add(nonce)
        return windows

    def _new_window(self) -> ReplayWindow:
        return ReplayWindow(self._rng(32), self.config.replay_window, self.config.replay_fp_rate)

    @property
    def store(self) -> KeyStore:
        return self._store

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
        if self._journal is not None:
            self._journal.close()
        self._store.close()

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
        """Save; False (and a log line) when the change is *not* in the store."""
        try:
            self._store.save(self._keys.values(), self._next_key_id)
        except Exception as exc:  # StoreError, or a store bug: either way nothing was committed
            self._log(f"STORAGE: saving the key store failed, change rolled back: {exc}")
            return False
        return True

    def _drop(self, key: Key) -> None:
        """A key version the service no longer holds: the device forgets it, memory is zeroed."""
        self._store.discard(key)
        key.zeroize()

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
        except StoreError as exc:
            self._log(f"STORAGE: cannot create key {kid}: {exc}")
            return Status.STORAGE_ERROR, None
        self._keys[kid] = key
        if key_id == ALLOCATE_KEY_ID:
            self._next_key_id = kid + 1
        if not self._persist():
            del self._keys[kid]
            self._next_key_id = old_next
            self._drop(key)
            return Status.STORAGE_ERROR, None
        return Status.SUCCESS, KeyResponse(key.info(), key.public_key)

    # ------------------------------------------------------------------ AES-256-GCM

    def _aes_encrypt(self, req: Any) -> Result:
        key = self._key(req.key_id, (Family.AES,), Usage.ENCRYPT)
        if isinstance(key, Status):
            return key, None
        if len(req.plaintext) > MAX_PLAINTEXT or len(req.aad) + len(req.plaintext) > MAX_AAD_AND_PLAINTEXT:
            return Status.PAYLOAD_TOO_LARGE, None  # the response, or the decrypt request, would pass 64 KiB
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
        aead = key.aead()
        into = getattr(aead, "encrypt_into", None)  # a token's AEAD (HSM) has encrypt() only
        if into is None:
            return Status.SUCCESS, _Sealed(nonce, memoryview(aead.encrypt(nonce, req.plaintext, req.aad)))
        out = self._sealed[:len(req.plaintext) + TAG_SIZE]  # a reused buffer: no 64 KiB allocation per request
        into(nonce, req.plaintext, req.aad, out)
        return Status.SUCCESS, _Sealed(nonce, out)

    def _aes_decrypt(self, req: Any) -> Result:
        key = self._key(req.key_id, (Family.AES,), Usage.DECRYPT)
        if isinstance(key, Status):
            return key, None
        window = self._windows.get(key.key_id)
        if window is None:
            window = self._windows[key.key_id] = self._new_window()
        if window.seen(req.nonce):
            return Status.NONCE_REUSE, None
        try:
            plaintext = key.aead().decrypt(req.nonce, b"".join((req.ciphertext, req.tag)), req.aad)
        except InvalidTag:
            return Status.DECRYPTION_FAILED, None
        if self._journal is not None:  # durable before any plaintext leaves
            try:
                self._journal.append(key.key_id, key.version, req.nonce)
            except OSError as exc:
                self._log(f"STORAGE: replay journal append failed, plaintext withheld: {exc}")
                return Status.STORAGE_ERROR, None
            if self._journal.count > 2 * self.config.replay_window * max(1, len(self._windows)):
                self._compact_journal()
        window.add(req.nonce)  # only authenticated nonces: no poisoning
        return Status.SUCCESS, AesDecryptResponse(plaintext)

    # ------------------------------------------------------------------ ML-DSA

    def _compact_journal(self) -> None:
        assert self._journal is not None
        try:
            self._journal.compact(((k.key_id, k.version) for k in self._keys.values()), self.config.replay_window)
        except OSError as exc:  # the old journal is intact (atomic replace); try again later
            self._log(f"STORAGE: replay journal compaction failed: {exc}")

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
        return self._create(req.key_id, lambda kid: self._store.generate(kid, req.key_type, Usage(0), self._rng))

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
        return self._create(req.key_id, lambda kid: self._store.generate(kid, req.key_type, req.usage, self._rng))

    def _key_import(self, req: Any) -> Result:
        allowed = self.config.allow_import if req.format is KeyFormat.SECRET else self.config.allow_public_import
        if not allowed:
            return Status.IMPORT_DISABLED, None
        return self._create(
            req.key_id, lambda kid: self._store.import_key(kid, req.key_type, req.usage, req.format, req.material)
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
        self._drop(key)
        self._forget_state(key.key_id)
        return Status.SUCCESS, EmptyResponse()

    def _key_rotate(self, req: Any) -> Result:
        old = self._key(req.key_id, None, Usage.ROTATE)
        if isinstance(old, Status):
            return old, None
        if not old.has_secret:
            return Status.INVALID_PAYLOAD, None
        try:
            new = self._store.generate(old.key_id, old.key_type, old.usage, self._rng, old.version + 1)
        except StoreError as exc:
            self._log(f"STORAGE: cannot rotate key {old.key_id}: {exc}")
            return Status.STORAGE_ERROR, None
        self._keys[old.key_id] = new
        if not self._persist():
            self._keys[old.key_id] = old
            self._drop(new)
            return Status.STORAGE_ERROR, None
        self._drop(old)
        self._forget_state(old.key_id)  # WvdS: the tracker is reset on rotation
        return Status.SUCCESS, KeyResponse(new.info(), new.public_key)

    def _key_list(self, req: Any) -> Result:
        ids = sorted(k for k in self._keys if k >= req.cursor)
        page, rest = ids[:KEY_LIST_PAGE], ids[KEY_LIST_PAGE:]
        infos = tuple(self._keys[k].info() for k in page)
        return Status.SUCCESS, KeyListResponse(rest[0] if rest else 0, infos)


__all__ = ["CryptoService", "ServiceConfig"]
