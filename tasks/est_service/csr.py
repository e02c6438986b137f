"""Device keys and PKCS#10 requests for EST (RFC 7030 §4.2).

Keys are EC P-256 or P-384: `cryptography` cannot build or sign ML-DSA certificates or CSRs
(docs/reference §D.6), and the TLS client key used for re-enrollment must be one the TLS stack
can use. ML-DSA stays with crypto_service for application signatures.

Re-enrollment (§4.2.2): "the Subject field and SubjectAltName extension MUST be identical to
the corresponding fields in the certificate being renewed or rekeyed". `build_reenroll_csr`
copies both from the current certificate; the subject is re-encoded from the parsed Name,
which keeps every attribute's string type, so the DER is byte-identical (tested).

A CSR is signed with the key it certifies, so the key must be present here: this module runs
inside the task that owns the device key and never exports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import AttributeOID, ExtensionOID

from .codec import encode_base64_body

__all__ = [
    "Curve",
    "build_csr",
    "build_reenroll_csr",
    "encode_pkcs10",
    "generate_key",
    "same_identity",
    "same_public_key",
]


class Curve(IntEnum):
    """Curves allowed for EST and TLS keys; the value is the curve size in bits."""

    P256 = 256
    P384 = 384

    def curve(self) -> ec.EllipticCurve:
        return ec.SECP256R1() if self is Curve.P256 else ec.SECP384R1()

    def hash(self) -> hashes.SHA256 | hashes.SHA384:
        """The hash paired with the curve for signatures (ecdsa-with-SHA256 / -SHA384)."""
        return hashes.SHA256() if self is Curve.P256 else hashes.SHA384()

    @classmethod
    def of(cls, key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> Curve:
        """The `Curve` of an EC key.

        Raises:
            TypeError: not an EC key, or a curve other than P-256/P-384 (a programming error:
                keys are made by `generate_key`).
        """
        if not isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
            raise TypeError(f"EST keys are EC P-256/P-384, got {type(key).__name__}")
        name = key.curve.name
        if name == "secp256r1":
            return cls.P256
        if name == "secp384r1":
            return cls.P384
        raise TypeError(f"EST keys are EC P-256/P-384, got curve {name}")


def generate_key(curve: Curve = Curve.P256) -> ec.EllipticCurvePrivateKey:
    """A fresh device key from the OS CSPRNG."""
    return ec.generate_private_key(curve.curve())


def build_csr(
    key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    sans: Sequence[x509.GeneralName] = (),
    *,
    challenge_password: str | None = None,
) -> x509.CertificateSigningRequest:
    """A PKCS#10 request for ``subject`` (and ``sans`` if any), signed by ``key``.

    ``challenge_password`` is where RFC 7030 §3.5 puts the base64 tls-unique value for proof
    of possession; callers that implement PoP pass it, others leave it out.
    """
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return _sign(builder, key, challenge_password)


def build_reenroll_csr(
    key: ec.EllipticCurvePrivateKey,
    current: x509.Certificate,
    *,
    challenge_password: str | None = None,
) -> x509.CertificateSigningRequest:
    """A CSR for renewing (same key) or rekeying (new key) ``current``.

    Subject and the SubjectAltName extension (value and criticality) are copied unchanged.
    """
    builder = x509.CertificateSigningRequestBuilder().subject_name(current.subject)
    try:
        san = current.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        pass
    else:
        builder = builder.add_extension(san.value, critical=san.critical)
    return _sign(builder, key, challenge_password)


def _sign(
    builder: x509.CertificateSigningRequestBuilder,
    key: ec.EllipticCurvePrivateKey,
    challenge_password: str | None,
) -> x509.CertificateSigningRequest:
    curve = Curve.of(key)
    if challenge_password is not None:
        builder = builder.add_attribute(
            AttributeOID.CHALLENGE_PASSWORD, challenge_password.encode("utf-8")
        )
    return builder.sign(key, curve.hash())


def encode_pkcs10(csr: x509.CertificateSigningRequest) -> bytes:
    """The ``application/pkcs10`` body: base64 DER, wrapped at 64 columns, no PEM armour."""
    return encode_base64_body(csr.public_bytes(Encoding.DER))


def _san(obj: x509.Certificate | x509.CertificateSigningRequest) -> x509.Extension | None:
    try:
        return obj.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        return None


def same_identity(
    csr: x509.CertificateSigningRequest, cert: x509.Certificate
) -> bool:
    """True if ``csr`` keeps ``cert``'s Subject (byte for byte) and SubjectAltName (§4.2.2)."""
    if csr.subject.public_bytes() != cert.subject.public_bytes():
        return False
    a, b = _san(csr), _san(cert)
    if a is None or b is None:
        return a is None and b is None
    return a.value == b.value


def same_public_key(
    a: x509.Certificate | x509.CertificateSigningRequest,
    b: x509.Certificate | x509.CertificateSigningRequest,
) -> bool:
    """True if both carry the same SubjectPublicKeyInfo."""
    fmt = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return a.public_key().public_bytes(*fmt) == b.public_key().public_bytes(*fmt)
