"""EST body encoding: base64 of DER, media types, and certs-only PKCS#7.

Decisions (interop traps gathered in docs/reference §D.1):

* **We emit** base64 wrapped at 64 columns with ``\\n`` line ends, like OpenSSL and libest.
  libest rejects unwrapped input; every decoder we know accepts wrapped input.
* **We accept** base64 with or without line breaks (LF, CRLF, spaces, tabs): RFC 8951 says the
  body is base64 and transfer-encoding headers carry no weight in HTTP; libest issue #100 was a
  client choking on OpenXPKI's unwrapped output.
* **We reject PEM armour** (``-----BEGIN ...``) with its own error kind, `ErrorKind.PEM_ARMOUR`,
  rather than tolerating it. RFC 7030 bodies are bare base64 of DER; a server sending PEM is
  misconfigured, and a precise error points the operator at the fix, whereas a lenient decoder
  would hide it until the next, stricter client (globalsign/est returns "400 invalid base64" for
  the same input, issue #23). Our development CA rejects PEM requests the same way.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from .results import ErrorKind, EstError

__all__ = [
    "MEDIA_CSRATTRS",
    "MEDIA_PKCS7",
    "MEDIA_PKCS10",
    "check_media_type",
    "decode_base64_body",
    "decode_certs_only",
    "encode_base64_body",
    "encode_certs_only",
    "parse_media_type",
]

MEDIA_PKCS10 = "application/pkcs10"
MEDIA_PKCS7 = "application/pkcs7-mime"
MEDIA_CSRATTRS = "application/csrattrs"

LINE_WIDTH = 64
_WHITESPACE = b" \t\r\n\v\f"
_STRIP = bytes.maketrans(b"", b"")


def encode_base64_body(der: bytes, width: int = LINE_WIDTH) -> bytes:
    """Base64 of ``der`` in lines of ``width`` characters, each ending in ``\\n``."""
    if width <= 0 or width % 4:
        raise ValueError("line width must be a positive multiple of 4")
    flat = base64.b64encode(der)
    return b"".join(flat[i : i + width] + b"\n" for i in range(0, len(flat), width))


def decode_base64_body(body: bytes) -> bytes | EstError:
    """DER from an EST body: base64 with or without line breaks; PEM armour is an error."""
    if b"-----BEGIN" in body or b"-----END" in body:
        return EstError(
            ErrorKind.PEM_ARMOUR,
            "body is PEM-armoured; EST bodies are bare base64 of DER (RFC 7030 §3.2.4, RFC 8951)",
        )
    compact = body.translate(_STRIP, _WHITESPACE)
    if not compact:
        return EstError(ErrorKind.BAD_BASE64, "body is empty")
    try:
        return base64.b64decode(compact, validate=True)
    except binascii.Error as exc:
        return EstError(ErrorKind.BAD_BASE64, f"body is not base64: {exc}")


def parse_media_type(value: str | None) -> tuple[str, dict[str, str]]:
    """``("type/subtype", {param: value})``, lower-cased except parameter values.

    A missing header gives ``("", {})``.
    """
    if not value:
        return "", {}
    head, *params = value.split(";")
    parsed: dict[str, str] = {}
    for param in params:
        key, sep, raw = param.partition("=")
        if sep:
            parsed[key.strip().lower()] = raw.strip().strip('"')
    return head.strip().lower(), parsed


def check_media_type(
    content_type: str | None, expected: str, *, smime_type: str | None = None
) -> EstError | None:
    """None if ``content_type`` is ``expected`` (and, if given, has no other smime-type).

    RFC 7030 §4.2.3 labels enroll responses ``smime-type=certs-only``; servers differ in whether
    they send the parameter at all, so only a *different* smime-type is an error.
    """
    media, params = parse_media_type(content_type)
    if media != expected:
        shown = content_type if content_type else "no Content-Type"
        return EstError(ErrorKind.WRONG_CONTENT_TYPE, f"expected {expected}, got {shown}")
    got = params.get("smime-type")
    if smime_type is not None and got is not None and got.lower() != smime_type:
        return EstError(
            ErrorKind.WRONG_CONTENT_TYPE, f"expected smime-type={smime_type}, got smime-type={got}"
        )
    return None


def decode_certs_only(der: bytes) -> tuple[x509.Certificate, ...] | EstError:
    """Certificates from a DER CMS SignedData certs-only structure (at least one)."""
    try:
        certs = pkcs7.load_der_pkcs7_certificates(der)
    except (ValueError, UnsupportedAlgorithm) as exc:
        # cryptography reports a well-formed SignedData without certificates as a ValueError
        # too; tell it apart so the log says "empty" rather than "garbage".
        if "no certificate" in str(exc):
            return EstError(ErrorKind.NO_CERTIFICATES, "certs-only PKCS#7 holds no certificate")
        return EstError(ErrorKind.MALFORMED_PKCS7, f"not a certs-only PKCS#7: {exc}")
    if not certs:
        return EstError(ErrorKind.NO_CERTIFICATES, "certs-only PKCS#7 holds no certificate")
    return tuple(certs)


def encode_certs_only(certs: Sequence[x509.Certificate]) -> bytes:
    """DER certs-only PKCS#7 of ``certs`` (what servers send, base64'd; used by tests)."""
    return pkcs7.serialize_certificates(list(certs), Encoding.DER)
