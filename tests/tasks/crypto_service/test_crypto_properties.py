"""Property tests: no input makes the service raise or answer with a malformed frame."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import crypto as p
from protocols.crypto import KeyType, RequestType, Status
from tasks.crypto_service.keystore import MemoryKeyStore
from tasks.crypto_service.service import CryptoService

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def populated_service() -> CryptoService:
    """Keys 1..7, one of each type, so random key ids often hit a real key.

    Built fresh for every example (about 2 ms), so examples cannot affect each other
    and a failure replays deterministically."""
    svc = CryptoService(
        {"rate_limit": {"enabled": False}, "max_keys": 64},
        store=MemoryKeyStore(),
        clock=lambda: 0,
        rng=random.Random(0).randbytes,
    )
    for i, t in enumerate(KeyType, start=1):
        frame = svc.handle(p.KeyGenerateRequest(i, t).encode())
        assert frame[2] == Status.SUCCESS
    return svc


KNOWN_TYPES = [int(t) for t in RequestType]


def assert_well_formed(frame: bytes, request_type: RequestType | None) -> None:
    assert isinstance(frame, bytes) and len(frame) >= 8
    head = 12 if frame[3] == p.FLAG_SEQUENCE else 8  # a sequenced request gets its number back
    assert frame[0] == 0xC8 and frame[1] == 0x01 and frame[3] in (0, p.FLAG_SEQUENCE)
    assert int.from_bytes(frame[4:8], "little") == len(frame) - head
    assert frame[2] in {int(s) for s in Status}
    assert frame[2] != Status.INTERNAL_ERROR  # no bug was hit on the way
    if frame[2] != Status.SUCCESS:
        assert len(frame) == head
    if request_type is not None:
        p.parse_response(frame, request_type)  # raises ResponseError if the body is malformed


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(raw: bytes) -> None:
    assert_well_formed(populated_service().handle(raw), None)


@SETTINGS
@given(
    rtype=st.sampled_from(KNOWN_TYPES),
    key_id=st.integers(0, 9),
    tail=st.binary(max_size=300),
)
def test_valid_headers_with_random_payloads(rtype: int, key_id: int, tail: bytes) -> None:
    payload = key_id.to_bytes(4, "little") + tail
    frame = bytes([0xC7, 0x01, rtype, 0]) + len(payload).to_bytes(4, "little") + payload
    assert_well_formed(populated_service().handle(frame), RequestType(rtype))


@SETTINGS
@given(
    rtype=st.sampled_from(KNOWN_TYPES),
    declared=st.integers(0, 2**32 - 1),
    body=st.binary(max_size=64),
    flags=st.integers(0, 255),
)
def test_lying_headers(rtype: int, declared: int, body: bytes, flags: int) -> None:
    frame = bytes([0xC7, 0x01, rtype, flags]) + declared.to_bytes(4, "little") + body
    out = populated_service().handle(frame)
    assert_well_formed(out, RequestType(rtype))
    sequenced = flags == p.FLAG_SEQUENCE and len(body) >= 4  # a u32 sequence number, then the payload
    if flags and not sequenced:
        assert out[2] == Status.INVALID_HEADER
    elif declared > p.MAX_PAYLOAD:
        assert out[2] == Status.PAYLOAD_TOO_LARGE
    elif declared != len(body) - (4 if sequenced else 0):
        assert out[2] == Status.INVALID_PAYLOAD
    if sequenced:
        assert p.response_sequence(out) == int.from_bytes(body[:4], "little")


@SETTINGS
@given(st.data())
def test_mutated_valid_requests(data: st.DataObject) -> None:
    """Take a well-formed request, flip or cut bytes: still a well-formed answer."""
    base = data.draw(
        st.sampled_from(
            [
                p.AesEncryptRequest(1, b"aad", b"plaintext").encode(),
                p.AesDecryptRequest(1, b"", bytes(12), b"ct", bytes(16)).encode(),
                p.MldsaSignRequest(2, b"c", b"m").encode(),
                p.MldsaVerifyRequest(3, b"", bytes(3309), b"m").encode(),
                p.MlkemDecapsRequest(5, bytes(768)).encode(),
                p.KeyImportRequest(0, KeyType.MLKEM_512, p.Usage(0), p.KeyFormat.PUBLIC, bytes(800)).encode(),
                p.KeyListRequest(0).encode(),
            ]
        )
    )
    raw = bytearray(base)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    assert_well_formed(populated_service().handle(bytes(raw[:cut])), None)
