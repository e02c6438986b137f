"""Who is asking: the client identity the EST server sees, and the re-enrollment identity rule.

A request can carry a TLS client certificate and/or HTTP Basic credentials. The TLS layer
accepts *any* client certificate (no handshake abort: a manufacturer IDevID, an expired or a
foreign certificate are simply "no client identity"); `EstCa.device_identity` then decides
whether it is one of the CA's current device certificates. Only such a certificate
authenticates /simplereenroll; /simpleenroll is authenticated by HTTP Basic alone.

The log shows the accepted certificate, else the Basic user name (never the password), else
"anonymous", plus why a presented certificate was not accepted.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from cryptography import x509

from .policy import san_of

__all__ = ["ClientIdentity", "identity_matches", "parse_basic"]


@dataclass(frozen=True, slots=True, repr=False)
class ClientIdentity:
    """The accepted device certificate (if any), the Basic credentials (if sent), and why a
    presented certificate was not accepted (``rejected``, empty if none was presented)."""

    certificate: x509.Certificate | None
    basic: tuple[str, str] | None
    rejected: str = ""

    def describe(self) -> str:
        if self.certificate is not None:
            subject = self.certificate.subject.rfc4514_string() or "<empty subject>"
            return f"cert:{subject} serial={self.certificate.serial_number:x}"
        who = f"basic:{self.basic[0]}" if self.basic is not None else "anonymous"
        return f"{who} (client cert ignored: {self.rejected})" if self.rejected else who

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


def identity_matches(csr: x509.CertificateSigningRequest, current: x509.Certificate) -> bool:
    """RFC 7030 §4.2.2: Subject byte-identical and SubjectAltName identical (or both absent)."""
    if csr.subject.public_bytes() != current.subject.public_bytes():
        return False
    return san_of(csr) == san_of(current)
