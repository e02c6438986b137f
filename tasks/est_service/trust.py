"""Explicit trust anchors: nothing the EST server sends is accepted unless it chains to them.

RFC 7030 §3.6.1 and §4.1.1: the client holds an *explicit trust anchor* (for the gateway, the
bootstrap TA baked into the image) and must verify what it receives against it. "Accept
anything" bootstrapping is deliberately not offered.

Path validation uses `cryptography.x509.verification` (RFC 5280 + Web PKI rules for the CA
certificates). The end-entity policy is relaxed to "any extensions" because EST device
certificates need not carry a subjectAltName or particular EKUs; the CA side keeps the
default checks (basicConstraints, keyUsage, path length, signature algorithms).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store, VerificationError

from .results import ErrorKind, EstError

__all__ = ["TrustAnchors", "still_valid", "verify_ca_certs", "verify_issued"]


def still_valid(cert: x509.Certificate, now: dt.datetime) -> bool:
    """``cert`` is inside its validity period at ``now``."""
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


@dataclass(frozen=True, slots=True)
class TrustAnchors:
    """The explicit trust anchors (at least one), e.g. the bootstrap TA of the image."""

    anchors: tuple[x509.Certificate, ...]

    def __post_init__(self) -> None:
        if not self.anchors:
            raise ValueError(
                "TrustAnchors needs at least one certificate; there is no 'trust all'")

    def is_anchor(self, cert: x509.Certificate) -> bool:
        der = cert.public_bytes(Encoding.DER)
        return any(a.public_bytes(Encoding.DER) == der for a in self.anchors)


def _verify(
    leaf: x509.Certificate,
    untrusted: Sequence[x509.Certificate],
    trust: TrustAnchors,
    now: dt.datetime,
) -> tuple[x509.Certificate, ...] | EstError:
    builder = (
        PolicyBuilder()
        .store(Store(list(trust.anchors)))
        .time(now)
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=ExtensionPolicy.permit_all(),
        )
    )
    try:
        verified = builder.build_client_verifier().verify(leaf, list(untrusted))
    except VerificationError as exc:
        return EstError(
            ErrorKind.UNTRUSTED_CHAIN,
            f"{leaf.subject.rfc4514_string() or '<empty subject>'} does not chain to the "
            f"trust anchor: {exc}",
        )
    return tuple(verified.chain)


def verify_ca_certs(
    certs: Sequence[x509.Certificate], trust: TrustAnchors, now: dt.datetime
) -> tuple[x509.Certificate, ...] | EstError:
    """Accept a /cacerts answer only if *every* certificate is an anchor or chains to one.

    The other certificates of the same answer may serve as intermediates. Being strict (one
    foreign certificate spoils the answer) keeps the rule simple to state. est_service passes
    the bootstrap TA plus the still-valid certificates of its current set as ``trust``, so a
    CA that moves to a new issuing CA (or publishes a new root certified by its current one,
    §4.1.3 NewWithOld) is followed, and nothing else is.
    """
    if not certs:
        return EstError(ErrorKind.NO_CERTIFICATES, "/cacerts returned no certificate")
    for cert in certs:
        if trust.is_anchor(cert):
            continue
        others = [c for c in certs if c is not cert]
        result = _verify(cert, others, trust, now)
        if isinstance(result, EstError):
            return result
    return tuple(certs)


def verify_issued(
    cert: x509.Certificate,
    untrusted: Sequence[x509.Certificate],
    trust: TrustAnchors,
    now: dt.datetime,
) -> tuple[x509.Certificate, ...] | EstError:
    """The verified chain ``cert … anchor`` or `ErrorKind.UNTRUSTED_CHAIN`.

    ``untrusted`` are candidate intermediates (the rest of the enroll response and a previous
    /cacerts answer); they help build a path but are never trusted on their own.
    """
    return _verify(cert, untrusted, trust, now)
