"""The /csrattrs body: a DER ``CsrAttrs`` codec (RFC 7030 §4.5.2).

::

    CsrAttrs  ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID
    AttrOrOID ::= CHOICE (oid OBJECT IDENTIFIER, attribute Attribute)
    Attribute ::= SEQUENCE { type OBJECT IDENTIFIER, values SET SIZE (1..MAX) OF ANY }

`cryptography` has no parser for this structure, so this module carries the smallest
DER reader/writer that covers it: definite lengths, single-byte tags, OIDs. Attribute values
stay opaque DER (``CsrAttribute.values``); only the few the client acts on are interpreted
(`CsrAttrs.requested_curve`, `CsrAttrs.wants_challenge_password`). Both the client and the
development CA (hil/est_ca) use this one codec; an independent check of the encoder is the
``openssl asn1parse`` test.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "OID_CHALLENGE_PASSWORD",
    "OID_ECDSA_WITH_SHA256",
    "OID_ECDSA_WITH_SHA384",
    "OID_EC_PUBLIC_KEY",
    "OID_EXTENSION_REQUEST",
    "OID_SECP256R1",
    "OID_SECP384R1",
    "CsrAttribute",
    "CsrAttrs",
    "decode_csrattrs",
    "encode_csrattrs",
    "encode_oid",
]

OID_CHALLENGE_PASSWORD = "1.2.840.113549.1.9.7"
OID_EXTENSION_REQUEST = "1.2.840.113549.1.9.14"
OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
OID_SECP256R1 = "1.2.840.10045.3.1.7"
OID_SECP384R1 = "1.3.132.0.34"
OID_ECDSA_WITH_SHA256 = "1.2.840.10045.4.3.2"
OID_ECDSA_WITH_SHA384 = "1.2.840.10045.4.3.3"

_TAG_OID = 0x06
_TAG_SEQUENCE = 0x30
_TAG_SET = 0x31
_MAX_BYTES = 64 * 1024  # a CsrAttrs larger than this is not a CSR hint any more


@dataclass(frozen=True, slots=True)
class CsrAttribute:
    """An ``Attribute``: its type OID and each value as opaque DER (at least one)."""

    oid: str
    values: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _oid_arcs(self.oid)  # validates
        if not self.values:
            raise ValueError("an Attribute needs at least one value (SET SIZE (1..MAX))")


@dataclass(frozen=True, slots=True)
class CsrAttrs:
    """The decoded sequence, order preserved: bare OIDs (``str``) and `CsrAttribute`s."""

    items: tuple[str | CsrAttribute, ...] = ()

    @property
    def oids(self) -> tuple[str, ...]:
        """Every OID mentioned at top level, bare or as an attribute type."""
        return tuple(i if isinstance(i, str) else i.oid for i in self.items)

    @property
    def wants_challenge_password(self) -> bool:
        """The CA asks for challengePassword, i.e. tls-unique proof of possession (§3.5)."""
        return OID_CHALLENGE_PASSWORD in self.oids

    @property
    def requested_curve(self) -> str | None:
        """Dotted OID of the named curve requested via an ecPublicKey attribute, if any."""
        for item in self.items:
            if isinstance(item, CsrAttribute) and item.oid == OID_EC_PUBLIC_KEY:
                for value in item.values:
                    tag, start, end = _read_tlv(value, 0)
                    if tag == _TAG_OID and end == len(value):
                        return _decode_oid(value[start:end])
        return None


def encode_oid(dotted: str) -> bytes:
    """DER of an OBJECT IDENTIFIER, tag and length included."""
    arcs = _oid_arcs(dotted)
    body = bytearray(_base128(arcs[0] * 40 + arcs[1]))
    for arc in arcs[2:]:
        body += _base128(arc)
    return _tlv(_TAG_OID, bytes(body))


def encode_csrattrs(attrs: CsrAttrs) -> bytes:
    """DER of a ``CsrAttrs`` sequence."""
    parts = bytearray()
    for item in attrs.items:
        if isinstance(item, str):
            parts += encode_oid(item)
        else:
            values = b"".join(sorted(item.values))  # DER: SET OF is sorted
            parts += _tlv(_TAG_SEQUENCE, encode_oid(item.oid) + _tlv(_TAG_SET, values))
    return _tlv(_TAG_SEQUENCE, bytes(parts))


def decode_csrattrs(der: bytes) -> CsrAttrs:
    """Parse a DER ``CsrAttrs``. An empty input means "no attributes".

    Raises:
        ValueError: the input is not a CsrAttrs sequence (the message says where).
    """
    if not der:
        return CsrAttrs()
    if len(der) > _MAX_BYTES:
        raise ValueError(f"CsrAttrs too large ({len(der)} bytes)")
    tag, start, end = _read_tlv(der, 0)
    if tag != _TAG_SEQUENCE or end != len(der):
        raise ValueError("CsrAttrs must be exactly one SEQUENCE")
    items: list[str | CsrAttribute] = []
    pos = start
    while pos < end:
        tag, c_start, c_end = _read_tlv(der, pos)
        if tag == _TAG_OID:
            items.append(_decode_oid(der[c_start:c_end]))
        elif tag == _TAG_SEQUENCE:
            items.append(_decode_attribute(der, c_start, c_end))
        else:
            raise ValueError(f"AttrOrOID at offset {pos}: unexpected tag 0x{tag:02x}")
        pos = c_end
    return CsrAttrs(tuple(items))


def _decode_attribute(der: bytes, start: int, end: int) -> CsrAttribute:
    tag, o_start, o_end = _read_tlv(der, start)
    if tag != _TAG_OID:
        raise ValueError(f"Attribute at offset {start}: type is not an OID")
    tag, s_start, s_end = _read_tlv(der, o_end)
    if tag != _TAG_SET or s_end != end:
        raise ValueError(f"Attribute at offset {start}: values are not one SET")
    values: list[bytes] = []
    pos = s_start
    while pos < s_end:
        _, _, v_end = _read_tlv(der, pos)
        values.append(der[pos:v_end])
        pos = v_end
    return CsrAttribute(_decode_oid(der[o_start:o_end]), tuple(values))


def _read_tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the TLV at ``pos``; definite lengths only."""
    if pos + 2 > len(data):
        raise ValueError(f"truncated TLV at offset {pos}")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise ValueError(f"multi-byte tag at offset {pos} not supported")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0:
            raise ValueError("indefinite length is not DER")
        if count > 4 or pos + count > len(data):
            raise ValueError(f"bad length field at offset {pos - 2}")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError(f"TLV at offset {pos} runs past the end of the input")
    return tag, pos, pos + length


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _base128(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def _oid_arcs(dotted: str) -> list[int]:
    try:
        arcs = [int(part) for part in dotted.split(".")]
    except ValueError:
        raise ValueError(f"not a dotted OID: {dotted!r}") from None
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] >= 40) or min(arcs) < 0:
        raise ValueError(f"not a valid OID: {dotted!r}")
    return arcs


def _decode_oid(body: bytes) -> str:
    if not body or body[-1] & 0x80:
        raise ValueError("truncated OBJECT IDENTIFIER")
    values: list[int] = []
    current = 0
    for i, byte in enumerate(body):
        if current == 0 and byte == 0x80:
            raise ValueError(f"non-minimal OID encoding at byte {i}")
        current = (current << 7) | (byte & 0x7F)
        if not byte & 0x80:
            values.append(current)
            current = 0
    first = values[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(arc) for arc in head + values[1:])
