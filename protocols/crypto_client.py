"""Client library for tasks: the ``wvds_crypto.h`` helpers, in Python.

Written against an abstract transport: ``transact(request_frame) -> response_frame``,
a callable the caller provides (the kernel IPC + shared-dataspace transport
in a task, ``CryptoService.handle`` in tests). The client builds frames with
``protocol``, never sees key material, and turns non-success statuses into
``CryptoServiceError`` (``verify`` answers False for INVALID_SIGNATURE).

Retry: WvdS advises exponential backoff on RATE_LIMITED at 100, 200, 400 ms
and so on, up to 5 tries. ``RetryPolicy()`` does exactly that: 5 tries with
sleeps of 0.1, 0.2, 0.4, 0.8 s between them, through an injectable ``sleep``.
Nothing else is retried: any other status is final.

Chunking (large data): WvdS caps payloads at 64 KiB and advises ~60 KB chunks
with a chunk counter in the AAD. ``encrypt_chunked`` splits data into
``CHUNK_SIZE`` (60 KiB) pieces and encrypts chunk ``i`` of ``n`` with::

    aad_i = b"chunk:" || stream_id (16 random bytes) || i (u32 LE) || n (u32 LE)
            || SHA-256(caller's aad)

- *reordering* changes ``i`` -> tag failure;
- *truncation* (dropping chunks) changes ``n`` -> tag failure; zero chunks is refused;
- *extension* or *splicing* (a chunk of another message) changes ``stream_id``
  or ``n`` -> tag failure;
- hashing the caller's AAD keeps every chunk's AAD 62 bytes, whatever its size.

``decrypt_chunked`` returns nothing unless every chunk verifies (partial
plaintext is overwritten). Note that the service records each decrypted
nonce: decrypting the same message twice fails with NONCE_REUSE (0x08), which
is the WvdS replay protection, not a bug.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from protocols.crypto import (
    ALLOCATE_KEY_ID,
    MAX_PAYLOAD,
    NONCE_SIZE,
    TAG_SIZE,
    AesDecryptRequest,
    AesEncryptRequest,
    AesEncryptResponse,
    KeyDestroyRequest,
    KeyExportPublicRequest,
    KeyFormat,
    KeyGenerateRequest,
    KeyImportRequest,
    KeyInfo,
    KeyListRequest,
    KeyResponse,
    KeyRotateRequest,
    KeyType,
    MldsaSignRequest,
    MldsaVerifyRequest,
    MlkemDecapsRequest,
    MlkemEncapsRequest,
    MlkemEncapsResponse,
    MlkemKeygenRequest,
    Request,
    Response,
    ResponseError,
    Status,
    Usage,
    parse_sequenced_response,
)

Transport = Callable[[bytes], bytes]
_FRAME_HEAD = 12  #: header + sequence number

CHUNK_SIZE = 60 * 1024
CHUNK_AAD_PREFIX = b"chunk:"
STREAM_ID_SIZE = 16
#: Largest chunk whose AES_DECRYPT request (4 + 2 + 62-byte AAD + 12 + chunk + 16)
#: fits in 64 KiB (the encrypt request is 28 bytes smaller): 65440.
MAX_CHUNK_SIZE = MAX_PAYLOAD - 6 - (len(CHUNK_AAD_PREFIX) + STREAM_ID_SIZE + 8 + 32) - NONCE_SIZE - TAG_SIZE
_CHUNKED_MAGIC = b"WVC1"
#: Responses that answer another frame (see ``CryptoClient.exchange``) tolerated per request.
MAX_MISMATCHED = 3


class CryptoServiceError(Exception):
    """The service answered with a non-success status (or would have: PAYLOAD_TOO_LARGE
    is raised locally, before sending, for frames that cannot fit)."""

    def __init__(self, status: Status | int, request: str) -> None:
        name = status.name if isinstance(status, Status) else f"0x{status:02x}"
        super().__init__(f"{request}: {name}")
        self.status = status


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 5
    first_delay_s: float = 0.1
    factor: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.first_delay_s < 0 or self.factor < 1:
            raise ValueError("attempts >= 1, first_delay_s >= 0, factor >= 1")

    def delays(self) -> list[float]:
        """Sleeps between tries: [0.1, 0.2, 0.4, 0.8] by default."""
        return [self.first_delay_s * self.factor**i for i in range(max(0, self.attempts - 1))]


def chunk_aad(stream_id: bytes, index: int, count: int, aad: bytes) -> bytes:
    """The AAD bound to chunk ``index`` of ``count`` (see the module doc)."""
    return _chunk_aad(stream_id, index, count, hashlib.sha256(aad).digest())


def _chunk_aad(stream_id: bytes, index: int, count: int, aad_digest: bytes) -> bytes:
    return CHUNK_AAD_PREFIX + stream_id + struct.pack("<II", index, count) + aad_digest


@dataclass(frozen=True, slots=True)
class ChunkedCiphertext:
    """A message encrypted in chunks. Serialized form::

    "WVC1" | stream_id(16) | count u32 | count x (ct_len u32 | nonce(12) | ct | tag(16))
    """

    stream_id: bytes
    chunks: tuple[AesEncryptResponse, ...]

    def to_bytes(self) -> bytes:
        out = bytearray(_CHUNKED_MAGIC + self.stream_id + struct.pack("<I", len(self.chunks)))
        for c in self.chunks:
            out += struct.pack("<I", len(c.ciphertext)) + c.nonce + c.ciphertext + c.tag
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> ChunkedCiphertext:
        if data[:4] != _CHUNKED_MAGIC or len(data) < 24:
            raise ValueError("not a chunked ciphertext")
        stream_id, (count,) = data[4:20], struct.unpack_from("<I", data, 20)
        pos, chunks = 24, []
        for _ in range(count):
            if pos + 4 > len(data):
                raise ValueError("truncated chunked ciphertext")
            (n,) = struct.unpack_from("<I", data, pos)
            end = pos + 4 + NONCE_SIZE + n + TAG_SIZE
            if end > len(data):
                raise ValueError("truncated chunked ciphertext")
            body = data[pos + 4 : end]
            chunks.append(AesEncryptResponse(body[:NONCE_SIZE], body[NONCE_SIZE:-TAG_SIZE], body[-TAG_SIZE:]))
            pos = end
        if pos != len(data):
            raise ValueError("trailing bytes after chunked ciphertext")
        return cls(stream_id, tuple(chunks))


class CryptoClient:
    """One task's handle on the crypto service. Synchronous, one call at a time."""

    def __init__(
        self,
        transact: Transport,
        *,
        sleep: Callable[[float], None] = time.sleep,
        retry: RetryPolicy = RetryPolicy(),
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """``transact``: frame -> response frame. When it is the ``transact`` method of an
        object that also has ``transact_parts(parts, size)`` (write the frame's buffers where
        they go, answer a view of the response) and ``transact_many(frames)`` (a request ring:
        many frames, one signal), those are used instead (``tasks.runtime.shm.ShmClient``)."""
        self._transact, self._sleep, self._retry, self._rng = transact, sleep, retry, rng
        self._seq = int.from_bytes(rng(4), "little")  #: the last sequence number sent
        owner = getattr(transact, "__self__", None)
        same = owner is not None and getattr(owner, "transact", None) == transact
        self._parts: Callable[[list[Any], int], Any] = (
            getattr(owner, "transact_parts", None) if same else None) or self._joined
        self._many: Callable[..., list[Any]] | None = (
            getattr(owner, "transact_many", None) if same else None)

    # ------------------------------------------------------------------ plumbing

    def _joined(self, parts: list[Any], size: int) -> bytes:
        return self._transact(b"".join(parts))

    def _next_seq(self) -> int:
        self._seq = seq = (self._seq + 1) & 0xFFFF_FFFF
        return seq

    def exchange(self, request: Request) -> tuple[Status | int, Response | None]:
        """Send one request, retrying on RATE_LIMITED per the policy.

        Every frame sent carries a new sequence number; a response that does not echo it
        answers some other frame (a late response, or a request area overwritten while the
        service read it): it is never taken as this request's answer. The service did not act
        on this frame then, so it is sent again, at most ``MAX_MISMATCHED`` times.
        Raises ResponseError for a malformed response frame (or too many mismatched ones).
        """
        attempt = mismatched = 0
        rtype = request.TYPE
        while True:
            seq = self._next_seq()
            parts, size = request.frame_parts(seq)
            if size - _FRAME_HEAD > MAX_PAYLOAD:
                return Status.PAYLOAD_TOO_LARGE, None
            got, status, body = parse_sequenced_response(self._parts(parts, size), rtype, seq)
            if got != seq:
                mismatched += 1
                if mismatched > MAX_MISMATCHED:
                    raise ResponseError(f"{rtype.name}: the response answers another request "
                                        f"(sequence {got}, sent {seq})")
                continue
            if status != Status.RATE_LIMITED:
                return status, body
            delays = self._retry.delays()
            if attempt >= len(delays):
                return status, body
            self._sleep(delays[attempt])
            attempt += 1

    def exchange_many(self, requests: Sequence[Request]) -> list[tuple[Status | int, Response | None]]:
        """``exchange`` for many requests at once: through the transport's request ring when it
        has one (every request queued, one signal per ring-full), one by one otherwise.

        Same rules per request: exactly one answer each, in order; a response must echo its
        request's sequence number (else the request is sent again, at most ``MAX_MISMATCHED``
        times in all); RATE_LIMITED ones are sent again after the policy's delays."""
        if self._many is None:
            return [self.exchange(r) for r in requests]
        results: list[tuple[Status | int, Response | None] | None] = [None] * len(requests)
        todo = list(range(len(requests)))
        attempt = mismatched = 0
        while todo:
            frames, batch, seqs = [], [], []
            for i in todo:
                seq = self._next_seq()
                frame = requests[i].frame_parts(seq)
                if frame[1] - _FRAME_HEAD > MAX_PAYLOAD:
                    results[i] = (Status.PAYLOAD_TOO_LARGE, None)
                    continue
                frames.append(frame)
                batch.append(i)
                seqs.append(seq)
            todo = batch

            def read(k: int, view: memoryview) -> tuple[int | None, Status | int, Response | None]:
                return parse_sequenced_response(view, requests[batch[k]].TYPE, seqs[k])  # noqa: B023

            answers = self._many(frames, read) if frames else []
            again, limited = [], []
            for i, seq, (got, status, body) in zip(todo, seqs, answers, strict=True):
                if got != seq:
                    again.append(i)
                elif status == Status.RATE_LIMITED:
                    limited.append(i)
                    results[i] = (status, body)
                else:
                    results[i] = (status, body)
            if again:
                mismatched += 1
                if mismatched > MAX_MISMATCHED:
                    raise ResponseError("the ring's responses answer other requests")
            delays = self._retry.delays()
            if limited and attempt < len(delays):
                self._sleep(delays[attempt])
                attempt += 1
                todo = sorted(again + limited)
            else:
                todo = again
        return results  # type: ignore[return-value]

    def call(self, request: Request) -> Response:
        status, body = self.exchange(request)
        if status != Status.SUCCESS or body is None:
            raise CryptoServiceError(status, request.TYPE.name)
        return body

    # ------------------------------------------------------------------ AES-256-GCM

    def encrypt(self, key_id: int, plaintext: bytes, aad: bytes = b"") -> AesEncryptResponse:
        """-> (nonce, ciphertext, tag); the service chose the nonce."""
        return self.call(AesEncryptRequest(key_id, aad, plaintext))  # type: ignore[return-value]

    def decrypt(self, key_id: int, nonce: bytes, ciphertext: bytes, tag: bytes, aad: bytes = b"") -> bytes:
        return self.call(AesDecryptRequest(key_id, aad, nonce, ciphertext, tag)).plaintext  # type: ignore[union-attr]

    def call_many(self, requests: Sequence[Request]) -> list[Response]:
        """``call`` for many requests (through the request ring when the transport has one):
        every body, in order, or CryptoServiceError for the first request that failed."""
        out = []
        for request, (status, body) in zip(requests, self.exchange_many(requests), strict=True):
            if status != Status.SUCCESS or body is None:
                raise CryptoServiceError(status, request.TYPE.name)
            out.append(body)
        return out

    def encrypt_chunked(
        self, key_id: int, data: bytes, aad: bytes = b"", chunk_size: int = CHUNK_SIZE
    ) -> ChunkedCiphertext:
        """Chunk ``i`` of ``n`` sealed with ``chunk_aad``; all chunks queued on the request ring
        (one signal per ring-full) when the transport has one."""
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be 1..{MAX_CHUNK_SIZE}")
        view = memoryview(data if data.__class__ is bytes else bytes(data))  # immutable: chunks are views
        pieces = [view[i : i + chunk_size] for i in range(0, len(view), chunk_size)] or [view[0:0]]
        stream_id = self._rng(STREAM_ID_SIZE)
        count = len(pieces)
        digest = hashlib.sha256(aad).digest()
        AesEncryptRequest(key_id, _chunk_aad(stream_id, 0, count, digest), b"")  # the checks, once
        requests = [AesEncryptRequest.from_values((key_id, _chunk_aad(stream_id, i, count, digest), piece))
                    for i, piece in enumerate(pieces)]  # views of the caller's bytes, not copies
        return ChunkedCiphertext(stream_id, tuple(self.call_many(requests)))  # type: ignore[arg-type]

    def decrypt_chunked(self, key_id: int, sealed: ChunkedCiphertext, aad: bytes = b"") -> bytes:
        """All chunks verify, in order and complete, or CryptoServiceError."""
        count = len(sealed.chunks)
        if count == 0:
            raise CryptoServiceError(Status.DECRYPTION_FAILED, "decrypt_chunked (no chunks)")
        digest = hashlib.sha256(aad).digest()
        requests = [AesDecryptRequest(key_id, _chunk_aad(sealed.stream_id, i, count, digest), c.nonce, c.ciphertext,
                                      c.tag) for i, c in enumerate(sealed.chunks)]
        results = self.exchange_many(requests)
        failed = next(((r, s) for r, (s, _b) in zip(requests, results, strict=True) if s != Status.SUCCESS), None)
        out = bytearray()
        try:
            if failed is not None:
                raise CryptoServiceError(failed[1], failed[0].TYPE.name)
            for _status, body in results:
                out += body.plaintext  # type: ignore[union-attr]
            return bytes(out)
        finally:
            out[:] = bytes(len(out))

    # ------------------------------------------------------------------ ML-DSA

    def sign(self, key_id: int, message: bytes, context: bytes = b"") -> bytes:
        return self.call(MldsaSignRequest(key_id, context, message)).signature  # type: ignore[union-attr]

    def verify(self, key_id: int, message: bytes, signature: bytes, context: bytes = b"") -> bool:
        """True/False for a (in)valid signature; other failures raise."""
        request = MldsaVerifyRequest(key_id, context, signature, message)
        status, _ = self.exchange(request)
        if status == Status.SUCCESS:
            return True
        if status == Status.INVALID_SIGNATURE:
            return False
        raise CryptoServiceError(status, request.TYPE.name)

    # ------------------------------------------------------------------ ML-KEM

    def kem_keygen(self, key_type: KeyType = KeyType.MLKEM_768, key_id: int = ALLOCATE_KEY_ID) -> KeyResponse:
        """New ML-KEM key pair held by the service -> (info, encapsulation key)."""
        return self.call(MlkemKeygenRequest(key_id, key_type))  # type: ignore[return-value]

    def kem_encaps(self, key_id: int) -> MlkemEncapsResponse:
        """-> (shared_secret, ciphertext) for the key's public half."""
        return self.call(MlkemEncapsRequest(key_id))  # type: ignore[return-value]

    def kem_decaps(self, key_id: int, ciphertext: bytes) -> bytes:
        return self.call(MlkemDecapsRequest(key_id, ciphertext)).shared_secret  # type: ignore[union-attr]

    # ------------------------------------------------------------------ key management

    def generate_key(
        self, key_type: KeyType, usage: Usage = Usage(0), key_id: int = ALLOCATE_KEY_ID
    ) -> KeyResponse:
        return self.call(KeyGenerateRequest(key_id, key_type, usage))  # type: ignore[return-value]

    def import_key(
        self,
        key_type: KeyType,
        material: bytes,
        *,
        fmt: KeyFormat = KeyFormat.SECRET,
        usage: Usage = Usage(0),
        key_id: int = ALLOCATE_KEY_ID,
    ) -> KeyResponse:
        return self.call(KeyImportRequest(key_id, key_type, usage, fmt, material))  # type: ignore[return-value]

    def export_public(self, key_id: int) -> KeyResponse:
        return self.call(KeyExportPublicRequest(key_id))  # type: ignore[return-value]

    def destroy_key(self, key_id: int) -> None:
        self.call(KeyDestroyRequest(key_id))

    def rotate_key(self, key_id: int) -> KeyResponse:
        return self.call(KeyRotateRequest(key_id))  # type: ignore[return-value]

    def list_keys(self) -> list[KeyInfo]:
        """Every key's metadata, following the pages."""
        out: list[KeyInfo] = []
        cursor = 0
        while True:
            page = self.call(KeyListRequest(cursor))
            out.extend(page.keys)  # type: ignore[union-attr]
            cursor = page.next_cursor  # type: ignore[union-attr]
            if cursor == 0:
                return out


__all__ = [
    "CHUNK_SIZE",
    "ChunkedCiphertext",
    "CryptoClient",
    "CryptoServiceError",
    "ResponseError",
    "RetryPolicy",
    "Transport",
    "chunk_aad",
]
