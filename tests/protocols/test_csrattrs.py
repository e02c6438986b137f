"""The /csrattrs DER codec against openssl's encoding of the RFC 7030 §4.5.2 example."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.csrattrs import (
    OID_CHALLENGE_PASSWORD,
    OID_EC_PUBLIC_KEY,
    OID_ECDSA_WITH_SHA384,
    OID_EXTENSION_REQUEST,
    OID_SECP384R1,
    CsrAttribute,
    CsrAttrs,
    decode_csrattrs,
    encode_csrattrs,
    encode_oid,
)

#: openssl's encoding of the RFC example (made by tests/tasks/est_service/golden/regenerate.py)
GOLDEN_B64 = Path(__file__).parents[1] / "tasks" / "est_service" / "golden" / "csrattrs.b64"

RFC_EXAMPLE = CsrAttrs((
    OID_CHALLENGE_PASSWORD,
    CsrAttribute(OID_EC_PUBLIC_KEY, (encode_oid(OID_SECP384R1),)),
    CsrAttribute(OID_EXTENSION_REQUEST, (encode_oid("1.3.6.1.1.1.1.22"),)),
    OID_ECDSA_WITH_SHA384,
))


def test_decode_openssl_encoding_of_rfc_example() -> None:
    der = base64.b64decode(GOLDEN_B64.read_bytes())
    assert decode_csrattrs(der) == RFC_EXAMPLE


def test_encode_matches_openssl_byte_for_byte() -> None:
    assert encode_csrattrs(RFC_EXAMPLE) == base64.b64decode(GOLDEN_B64.read_bytes())


def test_openssl_parses_our_encoding() -> None:
    out = subprocess.run(["openssl", "asn1parse", "-inform", "DER"],
                         input=encode_csrattrs(RFC_EXAMPLE), capture_output=True, check=True)
    text = out.stdout.decode()
    for expected in ("challengePassword", "id-ecPublicKey", "secp384r1", "ecdsa-with-SHA384"):
        assert expected in text


def test_helpers() -> None:
    assert RFC_EXAMPLE.requested_curve == OID_SECP384R1
    assert RFC_EXAMPLE.wants_challenge_password
    assert CsrAttrs().requested_curve is None and not CsrAttrs().wants_challenge_password
    assert decode_csrattrs(b"") == CsrAttrs()


@pytest.mark.parametrize(
    "der",
    [
        b"\x31\x00",                          # a SET, not a SEQUENCE
        b"\x30\x05\x06\x03\x2a\x03",          # length runs past the end
        b"\x30\x00\x00",                      # trailing garbage
        b"\x30\x80\x00\x00",                  # indefinite length
        b"\x30\x03\x02\x01\x01",              # INTEGER is not an AttrOrOID
        b"\x30\x04\x30\x02\x02\x00",          # Attribute type is not an OID
        b"\x30\x05\x06\x03\x2a\x03\x84",      # truncated OID (last byte has the high bit)
        b"\x30\x07\x30\x05\x06\x01\x2a\x30\x00",  # Attribute values are not a SET
    ],
)
def test_decode_rejects_malformed(der: bytes) -> None:
    with pytest.raises(ValueError):
        decode_csrattrs(der)


@pytest.mark.parametrize(
    "oid", ["1.2", "2.999.1", "1.2.840.113549.1.9.7", "1.3.6.1.4.1.311.21.20"])
def test_oid_round_trip_against_openssl(oid: str) -> None:
    der = encode_oid(oid)
    out = subprocess.run(["openssl", "asn1parse", "-inform", "DER", "-oid", "/dev/null"],
                         input=der, capture_output=True, check=True).stdout.decode()
    assert "OBJECT" in out
    assert decode_csrattrs(encode_csrattrs(CsrAttrs((oid,)))).items == (oid,)


@pytest.mark.parametrize("bad", ["", "1", "3.1", "1.40", "a.b", "1.-2"])
def test_invalid_oids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        encode_oid(bad)


oids = st.builds(
    lambda a, b, rest: ".".join(map(str, [a, b, *rest])),
    st.integers(0, 2), st.integers(0, 39), st.lists(st.integers(0, 2**40), max_size=6),
)
items = st.one_of(
    oids,
    st.builds(lambda oid, vals: CsrAttribute(oid, tuple(sorted(encode_oid(v) for v in vals))),
              oids, st.lists(oids, min_size=1, max_size=3)),
)


@given(st.lists(items, max_size=8))
def test_round_trip(values: list) -> None:
    attrs = CsrAttrs(tuple(values))
    assert decode_csrattrs(encode_csrattrs(attrs)) == attrs
