"""Who is asking: the client identity the EST server sees, and the re-enrollment identity rule.

A request can carry a TLS client certificate (already verified by OpenSSL against the CA, and
checked again with `EstCa.issued_by_us`) and/or HTTP Basic credentials. The log shows the
certificate if there is one, else the Basic user name (never the password), else "anonymous".
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtensionOID

__all__ = ["ClientIdentity", "identity_matches", "parse_basic"]


@dataclass(frozen=True, slots=True, repr=False)
class ClientIdentity:
    """The TLS client certificate (if valid and ours) and the Basic credentials (if sent)."""

    certificate: x509.Certificate | None
    basic: tuple[str, str] | None

    def describe(self) -> str:
        if self.certificate is not None:
            subject = self.certificate.subject.rfc4514_string() or "<empty subject>"
            return f"cert:{subject} serial={self.certificate.serial_number:x}"
        if self.basic is not None:
            return f"basic:{self.basic[0]}"
        return "anonymous"

    def __repr__(self) -> str:
        return f"ClientIdentity({self.describe()})"


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic ...`` header, None if absent/garbled."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _san(
    obj: x509.Certificate | x509.CertificateSigningRequest,
) -> x509.SubjectAlternativeName | None:
    try:
        ext = obj.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        return None
    return ext.value  # type: ignore[return-value]


def identity_matches(csr: x509.CertificateSigningRequest, current: x509.Certificate) -> bool:
    """RFC 7030 §4.2.2: Subject byte-identical and SubjectAltName identical (or both absent)."""
    if csr.subject.public_bytes() != current.subject.public_bytes():
        return False
    return _san(csr) == _san(current)
