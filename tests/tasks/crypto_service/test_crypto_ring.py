"""The crypto service behind the request ring (in-process: ``CryptoClient`` -> ``ShmClient`` ->
``shm_calls(ring=True)`` -> ``CryptoService.handle_parts`` on one buffer as the dataspace)."""
from __future__ import annotations

import os
import struct
from types import SimpleNamespace

import pytest

from protocols import crypto as p
from protocols import shm_ring as r
from protocols.crypto import KeyType, Status
from protocols.crypto_client import ChunkedCiphertext, CryptoClient, CryptoServiceError
from tasks.crypto_service.service import CryptoService
from tasks.runtime.memory import Region
from tasks.runtime.shm import RING_PROTO, ShmClient, ShmPeer, shm_calls

LABEL = 16


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000_000

    def __call__(self) -> int:
        return self.now


class Wired:
    """One client and its crypto service on a dataspace of ``slots`` ring slots."""

    def __init__(self, slots: int = 4, config: dict | None = None, size: int | None = None):
        size = size or r.HEADER_SIZE + slots * r.SLOT_SIZE
        self.region = Region(0x1000, size, True, bytearray(size))  # type: ignore[arg-type]  # a buffer like a mapping
        self.clock = FakeClock()
        self.service = CryptoService(config or {}, clock=self.clock)
        self.handled = 0
        self.signals: list[int] = []
        self.server = shm_calls({LABEL: ShmPeer("c", LABEL, self.region)}, self._handle, ring=True)
        self.shm = ShmClient(self, 1, 2)
        self.sleeps: list[float] = []
        self.client = CryptoClient(self.shm.transact, sleep=self._sleep)

    def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock.now += int(seconds * 1e9)

    def _handle(self, peer, frame):
        self.handled += 1
        return self.service.handle_parts(frame)

    def map_dataspace(self, shm, writable):
        return self.region

    def call(self, gate, proto, *words, timeout_us=None):
        self.signals.append(proto)
        reply = self.server(SimpleNamespace(proto=proto, label=LABEL, word=lambda i: words[i],
                                            has_words=lambda n: len(words) >= n))
        return SimpleNamespace(ok=True, status=reply.status, word=lambda i: reply.words[i],
                               has_words=lambda n: len(reply.words) >= n)


def test_chunked_encryption_goes_through_the_ring_and_decrypts_back():
    w = Wired(slots=4)
    aes = w.client.generate_key(KeyType.AES_256).info.key_id
    data = os.urandom(10 * 1000 + 7)
    w.signals.clear()
    sealed = w.client.encrypt_chunked(aes, data, aad=b"hdr", chunk_size=1000)
    assert len(sealed.chunks) == 11 and w.signals == [RING_PROTO] * 3  # 11 chunks, 4 slots
    wire = sealed.to_bytes()
    assert w.client.decrypt_chunked(aes, ChunkedCiphertext.from_bytes(wire), aad=b"hdr") == data
    with pytest.raises(CryptoServiceError, match="NONCE_REUSE"):  # the replay window saw every chunk
        w.client.decrypt_chunked(aes, sealed, aad=b"hdr")


def test_every_ring_request_takes_a_token_and_a_limited_one_is_answered_rate_limited():
    w = Wired(slots=8, config={"rate_limit": {"rate_per_s": 1, "burst": 5, "cooldown_ms": 100}})
    aes = w.client.generate_key(KeyType.AES_256).info.key_id  # one token
    requests = [p.AesEncryptRequest(aes, b"", bytes([i])) for i in range(8)]
    frames = [req.frame_parts(1000 + i) for i, req in enumerate(requests)]
    answers = w.shm.transact_many(frames)
    assert w.handled == 1 + 8  # nothing dropped: every request answered
    statuses = [p.parse_sequenced_response(a, p.RequestType.AES_ENCRYPT)[:2] for a in answers]
    assert statuses == [(1000 + i, Status.SUCCESS) for i in range(4)] + \
        [(1000 + i, Status.RATE_LIMITED) for i in range(4, 8)]  # tagged with each request's sequence


def test_the_client_retries_the_limited_ring_requests_after_the_policy_delay():
    w = Wired(slots=8, config={"rate_limit": {"rate_per_s": 1000, "burst": 3, "cooldown_ms": 100}})
    aes = w.client.generate_key(KeyType.AES_256).info.key_id
    sealed = w.client.encrypt_chunked(aes, bytes(6 * 100), chunk_size=100)
    assert len(sealed.chunks) == 6 and w.sleeps == [0.1, 0.2]  # 2 of 6 pass, then a burst of 3, then the last
    assert w.client.decrypt_chunked(aes, sealed) == bytes(600)


def test_malformed_frames_in_the_ring_get_their_status_and_the_rest_are_served():
    w = Wired(slots=4)
    aes = w.client.generate_key(KeyType.AES_256).info.key_id
    good = p.AesEncryptRequest(aes, b"", b"x").frame_parts(7)
    bad_magic = ([b"\x00" * 12], 12)
    too_large = ([struct.pack("<BBBBII", 0xC7, 1, 1, 0x80, 1 << 20, 9)], 12)
    answers = w.shm.transact_many([bad_magic, good, too_large, ([b""], 0)])
    parsed = [p.parse_sequenced_response(a, p.RequestType.AES_ENCRYPT)[:2] for a in answers]
    assert parsed == [(None, Status.INVALID_HEADER), (7, Status.SUCCESS), (9, Status.PAYLOAD_TOO_LARGE),
                      (None, Status.INVALID_HEADER)]


def test_a_small_dataspace_without_a_ring_slot_sends_one_by_one():
    w = Wired(size=4096)
    assert w.shm.ring_slots == 0
    aes = w.client.generate_key(KeyType.AES_256).info.key_id
    sealed = w.client.encrypt_chunked(aes, bytes(300), chunk_size=100)
    assert w.client.decrypt_chunked(aes, sealed) == bytes(300)
    assert RING_PROTO not in w.signals


def test_a_60_kib_request_allocates_no_transient_copies_of_its_payload():
    """What one 60 KiB AES_ENCRYPT allocates, client + shared-memory steps + service (tracemalloc's
    peak, warm): the service's private copy of the request and the ciphertext the caller keeps,
    nothing else of that size (no joined frames, no slices of the plaintext or the sealed data,
    no fresh output buffer, no zero buffers to clear the areas)."""
    import tracemalloc

    w = Wired(slots=2)
    aes = w.client.generate_key(KeyType.AES_256).info.key_id
    data = os.urandom(60 * 1024)
    w.client.encrypt(aes, data)  # warm: the service's output buffer and nonce lease exist
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        sealed = w.client.encrypt(aes, data)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert len(sealed.ciphertext) == len(data)
    assert peak < 2.5 * len(data), f"{peak} bytes allocated for a {len(data)}-byte request"
