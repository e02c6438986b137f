"""Wire format: golden bytes for every request and response, header validation order."""

from __future__ import annotations

import pytest

from protocols import crypto as p
from protocols.crypto import KeyType, Status, Usage


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", "").replace("|", ""))


NONCE = bytes(range(12))
TAG = b"\x10" * 16

# (request object, golden frame) -- bytes written from docs/crypto_protocol.md by hand
GOLDEN_REQUESTS = [
    (p.AesEncryptRequest(7, b"aa", b"xxx"), h("c7 01 01 00 0b000000 | 07000000 0200 6161 787878")),
    (
        p.AesDecryptRequest(1, b"A", NONCE, b"\xee\xff", TAG),
        h("c7 01 02 00 25000000 | 01000000 0100 41 000102030405060708090a0b eeff") + TAG,
    ),
    (p.MldsaSignRequest(2, b"ct", b"m"), h("c7 01 10 00 08000000 | 02000000 02 6374 6d")),
    (p.MldsaVerifyRequest(3, b"", b"\xaa\xbb", b"hi"), h("c7 01 11 00 0b000000 | 03000000 00 0200 aabb 6869")),
    (p.MlkemKeygenRequest(0, KeyType.MLKEM_768), h("c7 01 20 00 05000000 | 00000000 21")),
    (p.MlkemEncapsRequest(9), h("c7 01 21 00 04000000 | 09000000")),
    (p.MlkemDecapsRequest(9, b"\x01\x02"), h("c7 01 22 00 06000000 | 09000000 0102")),
    (
        p.KeyGenerateRequest(0x01020304, KeyType.MLDSA_65, Usage.SIGN | Usage.VERIFY),
        h("c7 01 40 00 09000000 | 04030201 11 0c000000"),
    ),
    (
        p.KeyImportRequest(0, KeyType.AES_256, Usage.ENCRYPT | Usage.DECRYPT, p.KeyFormat.SECRET, b"\x5a" * 32),
        h("c7 01 41 00 2a000000 | 00000000 01 03000000 01") + b"\x5a" * 32,
    ),
    (p.KeyExportPublicRequest(5), h("c7 01 42 00 04000000 | 05000000")),
    (p.KeyDestroyRequest(5), h("c7 01 43 00 04000000 | 05000000")),
    (p.KeyRotateRequest(5), h("c7 01 44 00 04000000 | 05000000")),
    (p.KeyListRequest(0x100), h("c7 01 45 00 04000000 | 00010000")),
]

INFO_KEM = p.KeyInfo(1, KeyType.MLKEM_768, p.KeyFlags.HAS_SECRET, Usage(0x1F0), 1)
INFO_AES = p.KeyInfo(2, KeyType.AES_256, p.KeyFlags.HAS_SECRET, Usage(0x183), 3)
INFO_DSA_PUB = p.KeyInfo(7, KeyType.MLDSA_44, p.KeyFlags(0), Usage(0x48), 1)

# (request type answered, body, golden frame)
GOLDEN_RESPONSES = [
    (
        p.RequestType.AES_ENCRYPT,
        p.AesEncryptResponse(NONCE, b"\xc1\xc2", TAG),
        h("c8 01 00 00 1e000000 | 000102030405060708090a0b c1c2") + TAG,
    ),
    (p.RequestType.AES_DECRYPT, p.AesDecryptResponse(b"pt"), h("c8 01 00 00 02000000 | 7074")),
    (p.RequestType.MLDSA_SIGN, p.MldsaSignResponse(b"\x01\x02\x03"), h("c8 01 00 00 03000000 | 010203")),
    (p.RequestType.MLDSA_VERIFY, p.EmptyResponse(), h("c8 01 00 00 00000000")),
    (
        p.RequestType.MLKEM_ENCAPS,
        p.MlkemEncapsResponse(b"\x11" * 32, b"\x22\x22"),
        h("c8 01 00 00 22000000") + b"\x11" * 32 + h("2222"),
    ),
    (p.RequestType.MLKEM_DECAPS, p.MlkemDecapsResponse(b"\x33" * 32), h("c8 01 00 00 20000000") + b"\x33" * 32),
    (
        p.RequestType.MLKEM_KEYGEN,
        p.KeyResponse(INFO_KEM, b"\xab\xcd"),
        h("c8 01 00 00 10000000 | 01000000 21 01 f0010000 01000000 | abcd"),
    ),
    (p.RequestType.KEY_GENERATE, p.KeyResponse(INFO_AES, b""),
     h("c8 01 00 00 0e000000 | 02000000 01 01 83010000 03000000")),
    (p.RequestType.KEY_IMPORT, p.KeyResponse(INFO_DSA_PUB, b"\x99"),
     h("c8 01 00 00 0f000000 | 07000000 10 00 48000000 01000000 99")),
    (p.RequestType.KEY_EXPORT_PUBLIC, p.KeyResponse(INFO_KEM, b""),
     h("c8 01 00 00 0e000000 | 01000000 21 01 f0010000 01000000")),
    (p.RequestType.KEY_DESTROY, p.EmptyResponse(), h("c8 01 00 00 00000000")),
    (p.RequestType.KEY_ROTATE, p.KeyResponse(INFO_AES, b""),
     h("c8 01 00 00 0e000000 | 02000000 01 01 83010000 03000000")),
    (
        p.RequestType.KEY_LIST,
        p.KeyListResponse(0, (INFO_AES, INFO_DSA_PUB)),
        h("c8 01 00 00 22000000 | 0200 00000000 | 02000000 01 01 83010000 03000000 | 07000000 10 00 48000000 01000000"),
    ),
]


def test_golden_tables_cover_every_request_type() -> None:
    assert {req.TYPE for req, _ in GOLDEN_REQUESTS} == set(p.RequestType)
    assert {t for t, _, _ in GOLDEN_RESPONSES} == set(p.RequestType)


@pytest.mark.parametrize("request_obj,golden", GOLDEN_REQUESTS, ids=[r.TYPE.name for r, _ in GOLDEN_REQUESTS])
def test_request_golden_bytes(request_obj: p.Request, golden: bytes) -> None:
    assert request_obj.encode() == golden
    assert p.parse_request(golden) == request_obj
    assert p.parse_request(bytearray(golden)) == request_obj
    assert p.parse_request(memoryview(golden)) == request_obj


@pytest.mark.parametrize("rtype,body,golden", GOLDEN_RESPONSES, ids=[t.name for t, _, _ in GOLDEN_RESPONSES])
def test_response_golden_bytes(rtype: p.RequestType, body: p.Response, golden: bytes) -> None:
    assert p.encode_response(Status.SUCCESS, body) == golden
    assert p.parse_response(golden, rtype) == (Status.SUCCESS, body)


@pytest.mark.parametrize("status", list(Status))
def test_error_responses_are_header_only(status: Status) -> None:
    frame = p.encode_response(status, p.AesDecryptResponse(b"must not leak"))
    if status == Status.SUCCESS:
        assert frame == h("c8 01 00 00 0d000000") + b"must not leak"
    else:
        assert frame == bytes([0xC8, 0x01, status, 0, 0, 0, 0, 0])
        assert p.parse_response(frame, p.RequestType.AES_DECRYPT) == (status, None)


def frame(rtype: int, payload: bytes = b"", *, magic: int = 0xC7, version: int = 1, flags: int = 0,
          length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    return bytes([magic, version, rtype, flags]) + n.to_bytes(4, "little") + payload


@pytest.mark.parametrize(
    "raw,expected",
    [
        (b"", Status.INVALID_HEADER),
        (frame(0x45, b"")[:7], Status.INVALID_HEADER),
        (frame(0x45, bytes(4), magic=0xC8), Status.INVALID_HEADER),
        (frame(0x45, bytes(4), version=2), Status.INVALID_HEADER),
        (frame(0x45, bytes(4), flags=1), Status.INVALID_HEADER),
        (frame(0x03, bytes(4)), Status.INVALID_TYPE),
        (frame(0x46, bytes(4)), Status.INVALID_TYPE),
        (frame(0x45, b"", length=65537), Status.PAYLOAD_TOO_LARGE),
        (frame(0x45, b"", length=0xFFFF_FFFF), Status.PAYLOAD_TOO_LARGE),
        (frame(0x45, bytes(3)), Status.INVALID_PAYLOAD),
        (frame(0x45, bytes(5)), Status.INVALID_PAYLOAD),  # fixed-size payloads are exact
        (frame(0x45, bytes(4), length=5), Status.INVALID_PAYLOAD),  # length field lies
        (frame(0x45, bytes(4), length=3), Status.INVALID_PAYLOAD),
        (frame(0x40, h("00000000 99 00000000")), Status.INVALID_PAYLOAD),  # unknown key type
        (frame(0x40, h("00000000 01 00800000")), Status.INVALID_PAYLOAD),  # unknown usage bit
        (frame(0x41, h("00000000 01 00000000 03")), Status.INVALID_PAYLOAD),  # unknown format
        (frame(0x01, h("01000000 0500 6161")), Status.INVALID_PAYLOAD),  # AAD length past the end
        (frame(0x02, h("01000000 0000") + bytes(27)), Status.INVALID_PAYLOAD),  # no room for nonce + tag
        (frame(0x11, h("01000000 00 0900 aabb")), Status.INVALID_PAYLOAD),  # SigLen past the end
        # order: magic beats type, type beats size, size beats length mismatch
        (frame(0x99, b"", magic=0, length=1 << 20), Status.INVALID_HEADER),
        (frame(0x99, b"", length=1 << 20), Status.INVALID_TYPE),
        (frame(0x01, bytes(3), length=1 << 20), Status.PAYLOAD_TOO_LARGE),
    ],
)
def test_parse_request_rejections(raw: bytes, expected: Status) -> None:
    assert p.parse_request(raw) == expected


def test_huge_request_is_refused_from_the_header_alone() -> None:
    # 16 MiB on the wire: 0x09 comes from the length field, before any payload parsing
    big = frame(0x01, bytes(16 << 20))
    assert p.parse_request(big) == Status.PAYLOAD_TOO_LARGE
    assert p.parse_request(big[:8]) == Status.PAYLOAD_TOO_LARGE


def test_payload_of_exactly_64k_is_accepted() -> None:
    req = p.AesEncryptRequest(1, b"", bytes(65536 - 6))
    assert len(req.encode()) == 8 + 65536
    assert p.parse_request(req.encode()) == req


@pytest.mark.parametrize("request_obj,golden", GOLDEN_REQUESTS, ids=[r.TYPE.name for r, _ in GOLDEN_REQUESTS])
def test_every_prefix_of_a_request_is_rejected(request_obj: p.Request, golden: bytes) -> None:
    for cut in range(len(golden)):
        result = p.parse_request(golden[:cut])
        assert result in (Status.INVALID_HEADER, Status.INVALID_PAYLOAD), cut


def test_non_buffer_input_is_an_invalid_header() -> None:
    assert p.parse_request("c7 01") == Status.INVALID_HEADER  # type: ignore[arg-type]
    assert p.parse_request(None) == Status.INVALID_HEADER  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "build",
    [
        lambda: p.MldsaSignRequest(1, bytes(256), b""),  # FIPS 204: ctx <= 255
        lambda: p.AesDecryptRequest(1, b"", bytes(11), b"", bytes(16)),
        lambda: p.AesDecryptRequest(1, b"", bytes(12), b"", bytes(15)),
        lambda: p.AesEncryptRequest(1 << 32, b"", b""),
        lambda: p.AesEncryptRequest(-1, b"", b""),
        lambda: p.AesEncryptRequest(1, bytes(65536), b""),
        lambda: p.KeyGenerateRequest(0, 0x77, 0),  # type: ignore[arg-type]
        lambda: p.KeyGenerateRequest(0, KeyType.AES_256, 0x10000),  # type: ignore[arg-type]
        lambda: p.MlkemDecapsResponse(bytes(31)),
    ],
)
def test_invalid_objects_cannot_be_constructed(build) -> None:
    with pytest.raises(ValueError):
        build()


def test_bytes_fields_refuse_integers() -> None:
    with pytest.raises(TypeError):
        p.AesEncryptRequest(1, 5, b"")  # type: ignore[arg-type]  # bytes(5) would be 5 zero bytes


@pytest.mark.parametrize(
    "raw",
    [
        b"\xc8\x01\x00",  # short
        bytes.fromhex("c7 01 00 00 00000000"),  # request magic
        bytes.fromhex("c8 02 00 00 00000000"),  # version
        bytes.fromhex("c8 01 00 01 00000000"),  # flags
        bytes.fromhex("c8 01 00 00 05000000 aa"),  # length mismatch
        bytes.fromhex("c8 01 03 00 01000000 aa"),  # error with payload
        bytes.fromhex("c8 01 00 00 03000000 aabbcc"),  # AES_ENCRYPT body < 28
    ],
)
def test_parse_response_rejects_malformed_frames(raw: bytes) -> None:
    with pytest.raises(p.ResponseError):
        p.parse_response(raw, p.RequestType.AES_ENCRYPT)


def test_parse_response_passes_unknown_status_through_as_int() -> None:
    status, body = p.parse_response(bytes.fromhex("c8 01 7f 00 00000000"), p.RequestType.KEY_LIST)
    assert status == 0x7F and not isinstance(status, Status) and body is None


def test_key_list_count_must_match_length() -> None:
    bad = p.encode_response(Status.SUCCESS, p.KeyListResponse(0, (INFO_AES,)))
    bad = bad[:8] + b"\x02" + bad[9:]  # claims two entries, carries one
    with pytest.raises(p.ResponseError):
        p.parse_response(bad, p.RequestType.KEY_LIST)


def test_wvds_codes_are_kept_and_extensions_stay_out_of_their_range() -> None:
    assert [int(s) for s in Status][:10] == list(range(10))
    assert all(s >= 0x40 for s in list(Status)[10:])
    assert {int(t) for t in p.RequestType} >= {0x01, 0x02, 0x10, 0x11, 0x20, 0x21, 0x22}
    assert all(0x40 <= t <= 0x4F for t in p.RequestType if t.name.startswith("KEY_"))
