"""The client library over an abstract transport: calls, backoff, chunked encryption."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from protocols import crypto as p
from protocols.crypto import KeyFormat, KeyType, Status, Usage
from protocols.crypto_client import (
    CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    ChunkedCiphertext,
    CryptoClient,
    CryptoServiceError,
    RetryPolicy,
    chunk_aad,
)


class Sleeps(list):
    """An injectable sleep that records instead of sleeping (optionally moving a fake clock)."""

    def __init__(self, clock: Any = None) -> None:
        super().__init__()
        self.clock = clock

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        if self.clock is not None:
            self.clock.advance_ms(seconds * 1000)


@pytest.fixture
def client(harness: Any) -> CryptoClient:
    return CryptoClient(harness.service.handle, sleep=Sleeps(), rng=random.Random(3).randbytes)


@pytest.fixture
def aes(client: CryptoClient) -> int:
    return client.generate_key(KeyType.AES_256).info.key_id


# --------------------------------------------------------------------------- plain calls


def test_encrypt_decrypt(client: CryptoClient, aes: int) -> None:
    sealed = client.encrypt(aes, b"hello", aad=b"hdr")
    assert client.decrypt(aes, sealed.nonce, sealed.ciphertext, sealed.tag, aad=b"hdr") == b"hello"
    with pytest.raises(CryptoServiceError) as err:
        client.decrypt(aes, sealed.nonce, sealed.ciphertext, sealed.tag, aad=b"hdr")
    assert err.value.status == Status.NONCE_REUSE


def test_sign_verify(client: CryptoClient) -> None:
    kid = client.generate_key(KeyType.MLDSA_65).info.key_id
    sig = client.sign(kid, b"msg", context=b"boot")
    assert client.verify(kid, b"msg", sig, context=b"boot") is True
    assert client.verify(kid, b"msg", sig, context=b"b00t") is False
    with pytest.raises(CryptoServiceError) as err:
        client.verify(999, b"msg", sig)
    assert err.value.status == Status.KEY_NOT_FOUND


@pytest.mark.parametrize("key_type", [KeyType.MLKEM_512, KeyType.MLKEM_768, KeyType.MLKEM_1024])
def test_kem(client: CryptoClient, key_type: KeyType) -> None:
    pair = client.kem_keygen(key_type)
    enc = client.kem_encaps(pair.info.key_id)
    assert client.kem_decaps(pair.info.key_id, enc.ciphertext) == enc.shared_secret
    assert client.export_public(pair.info.key_id).public_key == pair.public_key


def test_key_management(client: CryptoClient) -> None:
    imported = client.import_key(KeyType.AES_256, bytes(range(32)), usage=Usage.ENCRYPT | Usage.DESTROY)
    kid = imported.info.key_id
    dsa = client.generate_key(KeyType.MLDSA_44, key_id=500)
    pub = client.import_key(KeyType.MLDSA_44, dsa.public_key, fmt=KeyFormat.PUBLIC)
    assert [k.key_id for k in client.list_keys()] == sorted([kid, 500, pub.info.key_id])
    assert client.rotate_key(500).info.version == 2
    client.destroy_key(kid)
    assert kid not in [k.key_id for k in client.list_keys()]
    with pytest.raises(CryptoServiceError) as err:
        client.destroy_key(kid)
    assert err.value.status == Status.KEY_NOT_FOUND


def test_oversized_request_is_refused_locally(harness: Any) -> None:
    sent = []

    def transact(f: bytes) -> bytes:
        sent.append(f)
        return harness.service.handle(f)

    client = CryptoClient(transact, sleep=Sleeps())
    with pytest.raises(CryptoServiceError) as err:
        client.encrypt(1, bytes(70_000))
    assert err.value.status == Status.PAYLOAD_TOO_LARGE and sent == []


def test_malformed_response_raises(aes: int) -> None:
    client = CryptoClient(lambda f: b"\xc8\x01\x00\x00\x01\x00\x00\x00", sleep=Sleeps())
    with pytest.raises(p.ResponseError):
        client.encrypt(aes, b"x")


# --------------------------------------------------------------------------- backoff


def scripted(statuses: list[Status], success: bytes) -> tuple[Any, list[bytes]]:
    calls: list[bytes] = []

    def transact(frame: bytes) -> bytes:
        calls.append(frame)
        seq = p.request_sequence(frame)  # the service echoes it; the client checks it
        if statuses:
            return p.encode_response(statuses.pop(0), seq=seq)
        return p.encode_response(Status.SUCCESS, p.parse_response(success, p.RequestType.KEY_LIST)[1], seq=seq)

    return transact, calls


LIST_OK = p.encode_response(Status.SUCCESS, p.KeyListResponse(0, ()))


@pytest.mark.parametrize("limited", [0, 1, 2, 3, 4])
def test_backoff_100_200_400_800_then_success(limited: int) -> None:
    transact, calls = scripted([Status.RATE_LIMITED] * limited, LIST_OK)
    sleeps = Sleeps()
    assert CryptoClient(transact, sleep=sleeps).list_keys() == []
    assert sleeps == [0.1, 0.2, 0.4, 0.8][:limited]
    # the same frame each time, each with its own sequence number
    assert len(calls) == limited + 1 and len({c[:8] + c[12:] for c in calls}) == 1
    assert len({p.request_sequence(c) for c in calls}) == len(calls)


def test_gives_up_after_five_tries() -> None:
    transact, calls = scripted([Status.RATE_LIMITED] * 10, LIST_OK)
    sleeps = Sleeps()
    with pytest.raises(CryptoServiceError) as err:
        CryptoClient(transact, sleep=sleeps).list_keys()
    assert err.value.status == Status.RATE_LIMITED
    assert len(calls) == 5 and sleeps == [0.1, 0.2, 0.4, 0.8]


def test_other_errors_are_not_retried() -> None:
    transact, calls = scripted([Status.KEY_NOT_FOUND], LIST_OK)
    sleeps = Sleeps()
    with pytest.raises(CryptoServiceError):
        CryptoClient(transact, sleep=sleeps).destroy_key(1)
    assert len(calls) == 1 and sleeps == []


def test_retry_policy_is_configurable() -> None:
    assert RetryPolicy(attempts=3, first_delay_s=0.05, factor=3).delays() == pytest.approx([0.05, 0.15])
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def test_documented_backoff_gets_through_the_real_cooldown(make_harness: Any) -> None:
    h = make_harness({"rate_limit": {}})  # the published numbers
    sleeps = Sleeps(clock=h.clock)  # sleeping moves the service's clock
    client = CryptoClient(h.service.handle, sleep=sleeps)
    kid = client.generate_key(KeyType.AES_256).info.key_id
    for _ in range(99):
        client.encrypt(kid, b"x")  # 100 requests: the whole burst
    assert sleeps == []
    client.encrypt(kid, b"x")  # limited once, then succeeds after the first 100 ms backoff
    assert sleeps == [0.1]


# --------------------------------------------------------------------------- chunking


DATA = random.Random(11).randbytes(3 * CHUNK_SIZE + 12_345)


def test_chunked_round_trip_and_serialization(client: CryptoClient, aes: int) -> None:
    sealed = client.encrypt_chunked(aes, DATA, aad=b"file.bin")
    assert len(sealed.chunks) == 4 and len(sealed.chunks[-1].ciphertext) == 12_345
    wire = sealed.to_bytes()
    assert ChunkedCiphertext.from_bytes(wire) == sealed
    assert client.decrypt_chunked(aes, ChunkedCiphertext.from_bytes(wire), aad=b"file.bin") == DATA


def test_empty_message_is_one_authenticated_chunk(client: CryptoClient, aes: int) -> None:
    sealed = client.encrypt_chunked(aes, b"")
    assert len(sealed.chunks) == 1
    assert client.decrypt_chunked(aes, sealed) == b""
    with pytest.raises(CryptoServiceError):
        client.decrypt_chunked(aes, replace(sealed, chunks=()))


def tampered(sealed: ChunkedCiphertext, other: ChunkedCiphertext, how: str) -> ChunkedCiphertext:
    c = list(sealed.chunks)
    if how == "reorder":
        c[1], c[2] = c[2], c[1]
    elif how == "truncate":
        c = c[:-1]
    elif how == "extend":
        c = c + [other.chunks[-1]]
    elif how == "splice":  # same index, another message under the same key
        c[2] = other.chunks[2]
    elif how == "stream_id":
        return replace(sealed, stream_id=other.stream_id)
    return replace(sealed, chunks=tuple(c))


@pytest.mark.parametrize("how", ["reorder", "truncate", "extend", "splice", "stream_id"])
def test_chunk_tampering_is_detected(client: CryptoClient, aes: int, how: str) -> None:
    sealed = client.encrypt_chunked(aes, DATA)
    other = client.encrypt_chunked(aes, DATA)
    with pytest.raises(CryptoServiceError) as err:
        client.decrypt_chunked(aes, tampered(sealed, other, how))
    assert err.value.status == Status.DECRYPTION_FAILED


def test_chunk_aad_binds_the_callers_aad(client: CryptoClient, aes: int) -> None:
    sealed = client.encrypt_chunked(aes, b"abc", aad=b"one")
    with pytest.raises(CryptoServiceError):
        client.decrypt_chunked(aes, sealed, aad=b"two")


def test_chunk_aad_layout() -> None:
    aad = chunk_aad(b"S" * 16, 2, 5, b"")
    assert aad[:6] == b"chunk:" and aad[6:22] == b"S" * 16
    assert aad[22:30] == bytes.fromhex("02000000 05000000")
    assert len(aad) == 62


def test_largest_chunk_fits_the_wire(client: CryptoClient, aes: int) -> None:
    data = bytes(2 * MAX_CHUNK_SIZE)
    sealed = client.encrypt_chunked(aes, data, chunk_size=MAX_CHUNK_SIZE)
    assert len(sealed.chunks) == 2
    assert client.decrypt_chunked(aes, sealed) == data
    with pytest.raises(ValueError):
        client.encrypt_chunked(aes, data, chunk_size=MAX_CHUNK_SIZE + 1)


@pytest.mark.parametrize("cut", [3, 23, 30, -1])
def test_chunked_parser_rejects_damage(client: CryptoClient, aes: int, cut: int) -> None:
    wire = client.encrypt_chunked(aes, b"abc").to_bytes()
    with pytest.raises(ValueError):
        ChunkedCiphertext.from_bytes(wire[:cut])
    with pytest.raises(ValueError):
        ChunkedCiphertext.from_bytes(wire + b"\x00")
