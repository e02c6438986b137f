"""Fixtures for the est_service protocol-core tests: golden files and a small PKI factory.

The suite runs with ``--import-mode=importlib``, so test modules cannot import helpers from
here; everything they need is a fixture (``now``, ``golden``, ``pki``, ``make_pki``,
``subject``).

Time is injected everywhere: `NOW` lies inside the validity of the golden certificates, so the
tests are independent of the wall clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tasks.est_service.trust import TrustAnchors

UTC = dt.UTC
NOW = dt.datetime(2025, 12, 1, 12, 0, tzinfo=UTC)
GOLDEN = Path(__file__).parent / "golden"


class Golden:
    """Read-only access to the files made by golden/regenerate.py."""

    def bytes(self, name: str) -> bytes:
        return (GOLDEN / name).read_bytes()

    def cert(self, name: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.bytes(name))

    @property
    def ta(self) -> x509.Certificate:
        return self.cert("ta.pem")

    @property
    def trust(self) -> TrustAnchors:
        return TrustAnchors((self.ta,))

    @property
    def csr(self) -> x509.CertificateSigningRequest:
        return x509.load_der_x509_csr(self.bytes("device.csr.der"))

    @property
    def device_key(self) -> ec.EllipticCurvePrivateKey:
        key = load_pem_private_key(self.bytes("device.key.pem"), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Pki:
    """A throwaway CA that issues certificates with explicit validity windows."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, cn: str = "Test CA", curve: ec.EllipticCurve = ec.SECP256R1()) -> Pki:
        key = ec.generate_private_key(curve)
        cert = (
            x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=365))
            .not_valid_after(NOW + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(
        self,
        public_key: ec.EllipticCurvePublicKey,
        subject: x509.Name = name("device"),
        *,
        not_before: dt.datetime = NOW - dt.timedelta(days=1),
        not_after: dt.datetime = NOW + dt.timedelta(days=30),
        sans: Sequence[x509.GeneralName] = (),
        ca: bool = False,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None),
                           critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                critical=True)
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)),
                                            critical=False)
        return builder.sign(self.key, hashes.SHA256())


@pytest.fixture
def now() -> dt.datetime:
    return NOW


@pytest.fixture
def golden() -> Golden:
    return Golden()


@pytest.fixture
def make_pki():
    """``make_pki(cn="Test CA", curve=P-256) -> Pki``."""
    return Pki.create


@pytest.fixture
def pki() -> Pki:
    return Pki.create()


@pytest.fixture
def subject():
    """``subject(cn) -> x509.Name`` with a single CN."""
    return name
