"""The development certificate authority behind the EST server: keys, certificates, issuance.

`EstCa(state_dir)` loads its state from ``state_dir`` or, on first start, creates it (EC P-256
or P-384; see `store.py` for the layout). The CA is two-tier, like real EST CAs:

* the **root** (``ca.crt``): the trust anchor clients bootstrap with; it only certifies
  issuing CAs;
* the **issuing CA** (``issuing-NNNN.crt``): signs the server's and the devices' certificates.
  `rotate_issuing` starts a new one (the old one stays valid for the certificates it signed);
  /cacerts returns the current issuing CA and the root, enroll answers only the new
  certificate (RFC 7030 §4.2.3), so clients must refresh /cacerts to build the new chain.

It issues

* device certificates (`issue` for a first enrollment, `reissue` for a re-enrollment):
  EKU clientAuth only, subject and SAN fixed by `policy.DevicePolicy`; every certificate is
  recorded per identity in ``devices.json``, and only current ones authenticate a
  re-enrollment (`device_identity`);
* its own TLS server certificate (`server_credentials`): EKU serverAuth only, SAN
  ``127.0.0.1``, ``::1``, ``localhost`` plus any extra host names -- names no device gets.

This is a development CA: the keys are unencrypted on disk (mode 0600) and there is no
revocation. Nothing here does network I/O.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import stat
import threading
from collections.abc import Callable, Sequence
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
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .policy import DevicePolicy, Refused, ServerNames, san_of
from .store import KEY_MODE, PUBLIC_MODE, atomic_write, ensure_private_dir, locked

__all__ = ["CURVES", "EstCa", "EstCaError", "Refused"]

log = logging.getLogger("l4emu.est_ca")

CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}
_HASHES: dict[str, type[hashes.SHA256 | hashes.SHA384]] = {"secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384}
_CA_VALIDITY = dt.timedelta(days=3650)
_ISSUING_VALIDITY = dt.timedelta(days=1825)
_SERVER_VALIDITY = dt.timedelta(days=30)
_ISSUING_RE = re.compile(r"issuing-(\d{4})\.crt")


CLOCK_SKEW = dt.timedelta(seconds=60)  #: how far issued certificates are backdated


class EstCaError(Exception):
    """The CA cannot start: unusable state directory or inconsistent key material."""


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _hash_for(key: ec.EllipticCurvePrivateKey) -> hashes.SHA256 | hashes.SHA384:
    return _HASHES[key.curve.name]()


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def _spki(key) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def identity_key(subject: x509.Name, san: x509.SubjectAlternativeName | None) -> str:
    """The registry key of a device identity: hash of subject DER and SAN DER."""
    digest = hashlib.sha256(subject.public_bytes())
    digest.update(b"\0" + (san.public_bytes() if san is not None else b""))
    return digest.hexdigest()


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False)


class EstCa:
    """A CA kept in ``state_dir``. Thread-safe: issuance and rotation hold a lock."""

    CA_KEY = "ca.key"
    CA_CERT = "ca.crt"
    SERVER_KEY = "server.key"
    SERVER_CERT = "server.crt"
    DEVICES = "devices.json"

    def __init__(
        self,
        state_dir: str | Path,
        *,
        curve: str = "P-256",
        validity: dt.timedelta = dt.timedelta(days=30),
        common_name: str = "l4emu development EST CA",
        clock: Callable[[], dt.datetime] = _utc_now,
        policy: DevicePolicy = DevicePolicy(),
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
        self.policy = policy
        self.server_names = ServerNames()
        self._clock = clock
        self._lock = threading.RLock()
        with locked(self.state_dir):
            self.created = not self.ca_key_path.exists() and not self.ca_cert_path.exists()
            if self.created:
                self._key, self.certificate = self._create(CURVES[curve], common_name)
            else:
                self._key, self.certificate = self._load()
            self._issuing: list[tuple[ec.EllipticCurvePrivateKey, x509.Certificate]] = \
                self._load_issuing()
            if not self._issuing:
                self._issuing.append(self._new_issuing(1))
            self._devices: dict[str, dict] = self._load_devices()

    # -- paths and public material --------------------------------------------------------
    @property
    def ca_key_path(self) -> Path:
        return self.state_dir / self.CA_KEY

    @property
    def ca_cert_path(self) -> Path:
        """The trust anchor file to hand to clients (``curl --cacert``, bootstrap TA)."""
        return self.state_dir / self.CA_CERT

    @property
    def certificate_pem(self) -> bytes:
        """The root certificate (trust anchor) as PEM."""
        return self.certificate.public_bytes(Encoding.PEM)

    @property
    def issuing(self) -> x509.Certificate:
        """The issuing CA certificate new certificates are signed with."""
        return self._issuing[-1][1]

    @property
    def ca_certificates(self) -> list[x509.Certificate]:
        """What /cacerts returns: the current issuing CA, then the root."""
        return [self.issuing, self.certificate]

    # -- creation and loading ---------------------------------------------------------------
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
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
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
        key, cert = self._load_pair(self.ca_key_path, self.ca_cert_path)
        if cert.not_valid_after_utc <= self._now():
            raise EstCaError(f"the CA certificate in {self.ca_cert_path} has expired; "
                             "remove the state directory to create a new CA")
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if constraints.path_length == 0:
            raise EstCaError(f"{self.ca_cert_path} was made by an older l4emu (a root that cannot "
                             "certify an issuing CA); remove the state directory to create a new CA")
        return key, cert

    def _load_pair(self, key_path: Path, cert_path: Path
                   ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        try:
            key = load_pem_private_key(key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise EstCaError(f"cannot read the CA in {self.state_dir}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in _HASHES:
            raise EstCaError(f"{key_path} is not an EC P-256/P-384 key")
        if _spki(key.public_key()) != _spki(cert.public_key()):
            raise EstCaError(f"{key_path} does not belong to {cert_path}")
        if stat.S_IMODE(key_path.stat().st_mode) & 0o077:
            log.warning("%s is readable by group/others; it should be mode 0600", key_path)
        return key, cert

    def _load_issuing(self) -> list[tuple[ec.EllipticCurvePrivateKey, x509.Certificate]]:
        found = sorted((int(m.group(1)), p) for p in self.state_dir.iterdir()
                       if (m := _ISSUING_RE.fullmatch(p.name)))
        pairs = []
        for _, cert_path in found:
            key, cert = self._load_pair(cert_path.with_suffix(".key"), cert_path)
            try:
                cert.verify_directly_issued_by(self.certificate)
            except (InvalidSignature, ValueError, TypeError) as exc:
                raise EstCaError(f"{cert_path} is not issued by {self.ca_cert_path}") from exc
            pairs.append((key, cert))
        return pairs

    def _new_issuing(self, number: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(self._key.curve)
        now = self._now()
        root = self.certificate
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "l4emu"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"l4emu development EST issuing CA {number}"),
        ])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(root.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(max(now - CLOCK_SKEW, root.not_valid_before_utc))
            .not_valid_after(min(now + _ISSUING_VALIDITY, root.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False)
            .sign(self._key, _hash_for(self._key))
        )
        stem = self.state_dir / f"issuing-{number:04d}"
        atomic_write(stem.with_suffix(".key"), _pem_key(key), KEY_MODE)
        atomic_write(stem.with_suffix(".crt"), cert.public_bytes(Encoding.PEM), PUBLIC_MODE)
        return key, cert

    def rotate_issuing(self) -> x509.Certificate:
        """Start issuing from a new intermediate; certificates from older ones stay valid."""
        with self._lock, locked(self.state_dir):
            number = len(self._issuing) + 1
            self._issuing.append(self._new_issuing(number))
            log.info("rotated: now issuing from %s", self.issuing.subject.rfc4514_string())
            return self.issuing

    def _load_devices(self) -> dict[str, dict]:
        path = self.state_dir / self.DEVICES
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise EstCaError(f"{path} is unreadable: {exc}") from exc
        try:
            return {str(k): {"issued": [str(s) for s in v["issued"]],
                             "active_from": int(v["active_from"])} for k, v in doc.items()}
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise EstCaError(f"{path}: expected {{identity: {{issued: [serial...], "
                             f"active_from: index}}}}: {exc!r}") from exc

    def _now(self) -> dt.datetime:
        return self._clock().replace(microsecond=0)

    # -- issuance -------------------------------------------------------------------------
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
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer_key.public_key()), critical=False)
        )
        if sans is not None:
            builder = builder.add_extension(sans, critical=False)
        return builder.sign(issuer_key, _hash_for(issuer_key))

    @staticmethod
    def _check_csr(csr: x509.CertificateSigningRequest) -> ec.EllipticCurvePublicKey | Refused:
        if not csr.is_signature_valid:
            return Refused("CSR signature does not verify")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or \
                public_key.curve.name not in _HASHES:
            return Refused("only EC P-256 and P-384 keys are accepted")
        return public_key

    def issue(self, csr: x509.CertificateSigningRequest, *,
              validity: dt.timedelta | None = None) -> x509.Certificate | Refused:
        """First enrollment: a device certificate with the CSR's subject/SAN, if the policy
        allows them (`DevicePolicy.first_enrollment`)."""
        public_key = self._check_csr(csr)
        if isinstance(public_key, Refused):
            return public_key
        names = self.policy.first_enrollment(csr, self.server_names)
        if isinstance(names, Refused):
            return names
        return self._issue_device(public_key, *names, validity)

    def reissue(self, csr: x509.CertificateSigningRequest, current: x509.Certificate, *,
                validity: dt.timedelta | None = None) -> x509.Certificate | Refused:
        """Re-enrollment: the subject and SAN of ``current`` (which the caller authenticated,
        `device_identity`), exactly; the CSR must repeat them (RFC 7030 §4.2.2)."""
        public_key = self._check_csr(csr)
        if isinstance(public_key, Refused):
            return public_key
        if (csr.subject.public_bytes() != current.subject.public_bytes()
                or san_of(csr) != san_of(current)):
            return Refused("re-enrollment must keep the Subject and SubjectAltName of the "
                           "current certificate (RFC 7030 §4.2.2)")
        return self._issue_device(public_key, current.subject, san_of(current), validity)

    def _issue_device(self, public_key: ec.EllipticCurvePublicKey, subject: x509.Name,
                      san: x509.SubjectAlternativeName | None,
                      validity: dt.timedelta | None) -> x509.Certificate:
        with self._lock:
            issuer_key, issuer = self._issuing[-1]
            cert = self._sign_leaf(subject, public_key, san, [ExtendedKeyUsageOID.CLIENT_AUTH],
                                   validity or self.validity, issuer_key, issuer)
            entry = self._devices.setdefault(identity_key(subject, san),
                                             {"issued": [], "active_from": 0})
            entry["issued"].append(f"{cert.serial_number:x}")
            self._save_devices()
        return cert

    def _save_devices(self) -> None:
        with locked(self.state_dir):
            atomic_write(self.state_dir / self.DEVICES,
                         json.dumps(self._devices, indent=1, sort_keys=True).encode(),
                         PUBLIC_MODE)

    def issue_from_rogue_ca(
        self, csr: x509.CertificateSigningRequest
    ) -> x509.Certificate | Refused:
        """Fault injection: sign with a throwaway CA of the same name that clients do not trust."""
        public_key = self._check_csr(csr)
        if isinstance(public_key, Refused):
            return public_key
        rogue_key = ec.generate_private_key(self._key.curve)
        return self._sign_leaf(csr.subject, public_key, san_of(csr),
                               [ExtendedKeyUsageOID.CLIENT_AUTH], self.validity, rogue_key,
                               self.issuing)

    # -- who is a device ----------------------------------------------------------------------
    def _issuer_of(self, cert: x509.Certificate) -> x509.Certificate | None:
        for _, issuing in self._issuing:
            try:
                cert.verify_directly_issued_by(issuing)
            except (InvalidSignature, ValueError, TypeError):
                continue
            return issuing
        return None

    def issued_by_us(self, cert: x509.Certificate) -> bool:
        """True if one of our issuing CAs signed ``cert`` and it is valid now."""
        if self._issuer_of(cert) is None:
            return False
        now = self._clock()
        return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc

    def device_identity(self, cert: x509.Certificate) -> x509.Certificate | str:
        """``cert`` if it is a current device certificate of this CA, else why not.

        Current means: signed by one of our issuing CAs, inside its validity (by the CA's
        clock), a clientAuth-only end-entity certificate recorded in ``devices.json``, and not
        superseded: once a device authenticates with a renewed certificate, the older ones of
        the same subject/SAN stop authenticating anybody. (Until then the old one still works,
        so a device whose renewal answer was lost in transit can ask again.)
        """
        issuer = self._issuer_of(cert)
        if issuer is None:
            return "not issued by this CA"
        now = self._clock()
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return "outside its validity period"
        if not issuer.not_valid_before_utc <= now <= issuer.not_valid_after_utc:
            return "its issuing CA is outside its validity period"
        try:
            eku = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        except x509.ExtensionNotFound:
            eku = []
        if eku != [ExtendedKeyUsageOID.CLIENT_AUTH]:
            return "not a device certificate (EKU is not clientAuth only)"
        serial = f"{cert.serial_number:x}"
        with self._lock:
            entry = self._devices.get(identity_key(cert.subject, san_of(cert)))
            if entry is None or serial not in entry["issued"]:
                return "not a registered device"
            index = entry["issued"].index(serial)
            if index < entry["active_from"]:
                return "superseded: the device has used a newer certificate"
            if index > entry["active_from"]:  # the renewed certificate arrived: retire older ones
                entry["active_from"] = index
                self._save_devices()
        return cert

    # -- the server's own certificate -------------------------------------------------------------
    def server_credentials(self, extra_hosts: Sequence[str] = ()) -> tuple[Path, Path]:
        """Issue a fresh TLS server certificate; returns (cert path, key path) in state_dir.

        The certificate file holds the server certificate and its issuing CA (the chain a
        TLS client needs besides the root)."""
        key = ec.generate_private_key(self._key.curve)
        with self._lock:
            self.server_names = self.server_names.with_hosts(extra_hosts)
            names = self.server_names
            issuer_key, issuer = self._issuing[-1]
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names.common_name)])
        cert = self._sign_leaf(subject, key.public_key(),
                               x509.SubjectAlternativeName(names.general_names()),
                               [ExtendedKeyUsageOID.SERVER_AUTH], _SERVER_VALIDITY,
                               issuer_key, issuer)
        cert_path = self.state_dir / self.SERVER_CERT
        key_path = self.state_dir / self.SERVER_KEY
        with locked(self.state_dir):
            atomic_write(key_path, _pem_key(key), KEY_MODE)
            atomic_write(cert_path, cert.public_bytes(Encoding.PEM)
                         + issuer.public_bytes(Encoding.PEM), PUBLIC_MODE)
        return cert_path, key_path
