"""EST body codec: wrapped base64 out; base64 with or without line breaks in; no PEM armour."""

from __future__ import annotations

import base64
import subprocess
import textwrap

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given
from hypothesis import strategies as st

from tasks.est_service.codec import (
    check_media_type,
    decode_base64_body,
    decode_certs_only,
    encode_base64_body,
    encode_certs_only,
    parse_media_type,
)
from tasks.est_service.results import ErrorKind, EstError


def test_encode_base64_body_matches_openssl_wrapping(golden) -> None:
    # device.csr.b64 was written by `openssl base64`: 64 columns, "\n" line ends.
    assert encode_base64_body(golden.bytes("device.csr.der")) == golden.bytes("device.csr.b64")


@given(st.binary(max_size=600))
def test_encode_base64_body_lines_are_at_most_64_and_round_trip(data: bytes) -> None:
    body = encode_base64_body(data)
    lines = body.split(b"\n")
    assert lines[-1] == b""  # every line, including the last, ends in "\n"
    assert all(len(line) <= 64 for line in lines)
    assert all(len(line) == 64 for line in lines[:-2])
    if data:
        assert decode_base64_body(body) == data
    else:  # an empty body is never a valid EST message
        assert isinstance(decode_base64_body(body), EstError)


@pytest.mark.parametrize(
    "layout",
    [
        lambda b64: b64,                                               # no line breaks at all
        lambda b64: b64 + b"\n",
        lambda b64: "\n".join(textwrap.wrap(b64.decode(), 64)).encode(),
        lambda b64: ("\r\n".join(textwrap.wrap(b64.decode(), 76)) + "\r\n").encode(),
        lambda b64: " ".join(textwrap.wrap(b64.decode(), 10)).encode(),
        lambda b64: b"\t" + b64 + b"\n\n",
    ],
    ids=["unwrapped", "trailing-lf", "lf-64", "crlf-76", "spaces", "tabs-blank-lines"],
)
def test_decode_base64_body_tolerates_whitespace_layouts(layout, golden) -> None:
    der = golden.bytes("device.csr.der")
    assert decode_base64_body(layout(base64.b64encode(der))) == der


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"-----BEGIN PKCS7-----\nMIIB\n-----END PKCS7-----\n", ErrorKind.PEM_ARMOUR),
        (b"-----BEGIN CERTIFICATE REQUEST-----\n", ErrorKind.PEM_ARMOUR),
        (b"", ErrorKind.BAD_BASE64),
        (b" \r\n", ErrorKind.BAD_BASE64),
        (b"not base64!", ErrorKind.BAD_BASE64),
        (b"QU=J", ErrorKind.BAD_BASE64),         # padding in the middle
        (b"QUJ", ErrorKind.BAD_BASE64),          # truncated
    ],
)
def test_decode_base64_body_errors(body: bytes, kind: ErrorKind) -> None:
    result = decode_base64_body(body)
    assert isinstance(result, EstError)
    assert result.kind is kind


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ("", {})),
        ("application/pkcs7-mime", ("application/pkcs7-mime", {})),
        ("Application/PKCS7-MIME; smime-type=certs-only",
         ("application/pkcs7-mime", {"smime-type": "certs-only"})),
        ('application/pkcs7-mime ; Smime-Type="certs-only"; name=x.p7c',
         ("application/pkcs7-mime", {"smime-type": "certs-only", "name": "x.p7c"})),
    ],
)
def test_parse_media_type(value, expected) -> None:
    assert parse_media_type(value) == expected


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("application/pkcs7-mime; smime-type=certs-only", True),
        ("application/pkcs7-mime", True),  # parameter absent: accepted
        ("application/pkcs7-mime; smime-type=CERTS-ONLY", True),
        ("application/pkcs7-mime; smime-type=server-generated-key", False),
        ("application/pkcs7", False),
        ("text/html", False),
        (None, False),
    ],
)
def test_check_media_type(value: str | None, ok: bool) -> None:
    error = check_media_type(value, "application/pkcs7-mime", smime_type="certs-only")
    if ok:
        assert error is None
    else:
        assert isinstance(error, EstError) and error.kind is ErrorKind.WRONG_CONTENT_TYPE


def test_decode_certs_only_reads_openssl_output(golden) -> None:
    der = decode_base64_body(golden.bytes("enroll.b64"))
    assert isinstance(der, bytes)
    certs = decode_certs_only(der)
    assert certs == (golden.cert("device.crt.pem"),)


def test_decode_certs_only_round_trips_our_encoder(golden) -> None:
    certs = (golden.cert("device.crt.pem"), golden.ta)
    decoded = decode_certs_only(encode_certs_only(certs))
    assert isinstance(decoded, tuple)
    assert set(decoded) == set(certs)  # certificates are a SET OF: DER may reorder them


@pytest.mark.parametrize("der", [b"\x30\x03\x02\x01\x07", b"garbage", None],
                         ids=["integer", "garbage", "bare-certificate"])
def test_decode_certs_only_malformed(der: bytes | None, golden) -> None:
    if der is None:  # a certificate is DER, but not PKCS#7
        der = golden.ta.public_bytes(Encoding.DER)
    result = decode_certs_only(der)
    assert isinstance(result, EstError) and result.kind is ErrorKind.MALFORMED_PKCS7


def test_decode_certs_only_empty_signed_data() -> None:
    # `openssl crl2pkcs7 -nocrl` without -certfile: a valid SignedData holding nothing.
    der = subprocess.run(["openssl", "crl2pkcs7", "-nocrl", "-outform", "DER"],
                         capture_output=True, check=True).stdout
    result = decode_certs_only(der)
    assert isinstance(result, EstError) and result.kind is ErrorKind.NO_CERTIFICATES
