"""The development certificate authority behind the EST server: keys, certificates, issuance.

`EstCa(state_dir)` loads the CA key and certificate from ``state_dir`` or, on first start,
creates them (EC P-256 or P-384) and keeps them there (see `store.py`). It issues

* device certificates from PKCS#10 requests (`issue`): Subject and SubjectAltName copied from
  the CSR, ``digitalSignature`` key usage, EKU clientAuth + serverAuth, so the certificate can
  authenticate the device to this server at re-enrollment;
* its own TLS server certificate (`server_credentials`), SAN ``127.0.0.1``, ``::1``,
  ``localhost`` plus any extra host names.

This is a development CA: the key is unencrypted on disk (mode 0600) and there is no
revocation. Nothing here does network I/O.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from .store import KEY_MODE, PUBLIC_MODE, atomic_write, ensure_private_dir, locked

__all__ = ["CURVES", "EstCa", "EstCaError", "Refused"]

log = logging.getLogger("l4emu.est_ca")

CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}
_HASHES = {"secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384}
_CA_VALIDITY = dt.timedelta(days=3650)
_SERVER_VALIDITY = dt.timedelta(days=30)


CLOCK_SKEW = dt.timedelta(seconds=60)  #: how far issued certificates are backdated


class EstCaError(Exception):
    """The CA cannot start: unusable state directory or inconsistent key material."""


@dataclass(frozen=True, slots=True)
class Refused:
    """A CSR the CA will not sign; ``reason`` is sent to the client as text/plain."""

    reason: str


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _hash_for(key: ec.EllipticCurvePrivateKey) -> hashes.HashAlgorithm:
    return _HASHES[key.curve.name]()


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


class EstCa:
    """A CA kept in ``state_dir``. Thread-safe: issuing touches no shared mutable state."""

    CA_KEY = "ca.key"
    CA_CERT = "ca.crt"
    SERVER_KEY = "server.key"
    SERVER_CERT = "server.crt"

    def __init__(
        self,
        state_dir: str | Path,
        *,
        curve: str = "P-256",
        validity: dt.timedelta = dt.timedelta(days=30),
        common_name: str = "l4emu development EST CA",
        clock: Callable[[], dt.datetime] = _utc_now,
    ) -> None:
        """Load or create the CA. ``curve`` applies only when the CA is created.

        Raises:
            EstCaError: the directory holds only half a CA, or a key that does not match its
                certificate, or an expired CA certificate.
        """
        if curve not in CURVES:
            raise EstCaError(f"curve must be one of {', '.join(CURVES)}, got {curve!r}")
        if validity <= dt.timedelta(0):
            raise EstCaError("validity must be positive")
        self.state_dir = ensure_private_dir(Path(state_dir))
        self.validity = validity
        self._clock = clock
        with locked(self.state_dir):
            self.created = not self.ca_key_path.exists() and not self.ca_cert_path.exists()
            if self.created:
                self._key, self.certificate = self._create(CURVES[curve], common_name)
            else:
                self._key, self.certificate = self._load()

    @property
    def ca_key_path(self) -> Path:
        return self.state_dir / self.CA_KEY

    @property
    def ca_cert_path(self) -> Path:
        """The trust anchor file to hand to clients (``curl --cacert``, bootstrap TA)."""
        return self.state_dir / self.CA_CERT

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(Encoding.PEM)

    def _create(self, curve: ec.EllipticCurve, common_name: str
                ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(curve)
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "l4emu"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ])
        now = self._now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + _CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, _hash_for(key))
        )
        # Key first: a crash in between leaves a key without certificate, which _load reports.
        atomic_write(self.ca_key_path, _pem_key(key), KEY_MODE)
        atomic_write(self.ca_cert_path, cert.public_bytes(Encoding.PEM), PUBLIC_MODE)
        return key, cert

    def _load(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        missing = [p.name for p in (self.ca_key_path, self.ca_cert_path) if not p.exists()]
        if missing:
            raise EstCaError(f"{self.state_dir} holds half a CA ({', '.join(missing)} missing); "
                             "restore it or remove the directory to create a new CA")
        try:
            key = load_pem_private_key(self.ca_key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())
        except ValueError as exc:
            raise EstCaError(f"cannot read the CA in {self.state_dir}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in _HASHES:
            raise EstCaError(f"{self.ca_key_path} is not an EC P-256/P-384 key")
        fmt = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        if key.public_key().public_bytes(*fmt) != cert.public_key().public_bytes(*fmt):
            raise EstCaError(f"{self.ca_key_path} does not belong to {self.ca_cert_path}")
        if stat.S_IMODE(self.ca_key_path.stat().st_mode) & 0o077:
            log.warning("%s is readable by group/others; it should be mode 0600",
                        self.ca_key_path)
        if cert.not_valid_after_utc <= self._now():
            raise EstCaError(f"the CA certificate in {self.ca_cert_path} has expired; "
                             "remove the state directory to create a new CA")
        return key, cert

    def _now(self) -> dt.datetime:
        return self._clock().replace(microsecond=0)

    def _sign_leaf(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        sans: x509.SubjectAlternativeName | None,
        eku: Sequence[x509.ObjectIdentifier],
        validity: dt.timedelta,
        issuer_key: ec.EllipticCurvePrivateKey,
        issuer: x509.Certificate,
    ) -> x509.Certificate:
        now = self._now()
        not_after = min(now + validity, issuer.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            # backdated, as CAs do, so a device whose clock runs a little behind accepts it
            .not_valid_before(max(now - CLOCK_SKEW, issuer.not_valid_before_utc))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer_key.public_key()), critical=False)
        )
        if sans is not None:
            builder = builder.add_extension(sans, critical=False)
        return builder.sign(issuer_key, _hash_for(issuer_key))

    def issue(self, csr: x509.CertificateSigningRequest, *,
              validity: dt.timedelta | None = None) -> x509.Certificate | Refused:
        """Sign ``csr`` if it is self-consistent and uses an EC P-256/P-384 key."""
        return self._issue(csr, validity, self._key, self.certificate)

    def issue_from_rogue_ca(
        self, csr: x509.CertificateSigningRequest
    ) -> x509.Certificate | Refused:
        """Fault injection: sign with a throwaway CA of the same name that clients do not trust."""
        rogue_key = ec.generate_private_key(self._key.curve)
        return self._issue(csr, None, rogue_key, self.certificate)

    def _issue(self, csr: x509.CertificateSigningRequest, validity: dt.timedelta | None,
               issuer_key: ec.EllipticCurvePrivateKey,
               issuer: x509.Certificate) -> x509.Certificate | Refused:
        if not csr.is_signature_valid:
            return Refused("CSR signature does not verify")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or \
                public_key.curve.name not in _HASHES:
            return Refused("only EC P-256 and P-384 keys are accepted")
        if len(csr.subject) == 0:
            return Refused("CSR subject is empty")
        try:
            sans = csr.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
        except x509.ExtensionNotFound:
            san_value = None
        else:
            san_value = sans.value
        eku = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
        return self._sign_leaf(csr.subject, public_key, san_value, eku,
                               validity or self.validity, issuer_key, issuer)

    def issued_by_us(self, cert: x509.Certificate) -> bool:
        """True if this CA's key signed ``cert`` and ``cert`` is valid now."""
        try:
            cert.verify_directly_issued_by(self.certificate)
        except (InvalidSignature, ValueError, TypeError):
            return False
        now = self._clock()
        return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc

    def server_credentials(self, extra_hosts: Sequence[str] = ()) -> tuple[Path, Path]:
        """Issue a fresh TLS server certificate; returns (cert path, key path) in state_dir."""
        key = ec.generate_private_key(self._key.curve)
        names: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
            x509.DNSName("localhost"),
        ]
        for host in extra_hosts:
            try:
                general: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
            except ValueError:
                general = x509.DNSName(host)
            if general not in names:
                names.append(general)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "l4emu EST server")])
        cert = self._sign_leaf(subject, key.public_key(), x509.SubjectAlternativeName(names),
                               [ExtendedKeyUsageOID.SERVER_AUTH], _SERVER_VALIDITY,
                               self._key, self.certificate)
        cert_path = self.state_dir / self.SERVER_CERT
        key_path = self.state_dir / self.SERVER_KEY
        with locked(self.state_dir):
            atomic_write(key_path, _pem_key(key), KEY_MODE)
            atomic_write(cert_path, cert.public_bytes(Encoding.PEM) + self.certificate_pem,
                         PUBLIC_MODE)
        return cert_path, key_path
