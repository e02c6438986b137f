"""est_service's state in its private work directory: one KEK-sealed file, replaced atomically.

What survives a restart (``Persisted``): the certificate's key, the certificate, its chain, the
CA certificates, and the pending (re-)enrollment request if any. It is one JSON document sealed
whole (AES-256-GCM) in ``durable.sealed``'s store file -- the same implementation the crypto
service's key store uses -- with magic ``L4ES``, named ``est-state.sealed``. Every write goes
through ``durable.atomic.replace_file`` on the store's ``FileOps``: a kill -9 at any point leaves
the old state or the new one (tests/tasks/est_service/test_est_store.py enumerates the points).

The KEK backend here is a *development* one: 32 random bytes in ``est-kek.bin`` (mode 0600) in
the same directory. It keeps the key out of anything that copies the state file alone (a backup,
a log attachment, a support bundle), and the GCM tag detects tampering of anything in it; it
does NOT protect against anyone who can read the whole work directory. On a device the KEK comes
from sealed storage (TPM / secure element) instead (docs/est.md). A KEK file of the wrong length
is a ``KekError`` naming the file and the length (the task refuses to start).

Older versions wrote ``est-state.json`` (plain JSON, only the keys sealed, format versions 1
and 2): it is still read when there is no sealed state, and removed by the next save.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_der_private_key,
)

from durable.atomic import clean_stale_temps
from durable.fileops import OS, FileOps
from durable.sealed import AesSealer, KekError, SealedError, SealedFile, create_kek, read_kek
from tasks.est_service.config import utc_now
from tasks.est_service.renewal import Action

STATE_FILE = "est-state.sealed"
LEGACY_STATE_FILE = "est-state.json"
KEK_FILE = "est-kek.bin"
STATE_MAGIC = b"L4ES"
STATE_FORMAT = "l4emu-est-state"
STATE_VERSION = 3  # 3: the whole document sealed; 2 (legacy file) adds "pending"; 1 and 2 are still read
KEY_AAD = b"l4emu est_service device key v1"  # legacy files: the AAD of each sealed key

__all__ = ["KekError", "Pending", "Persisted", "Store", "StoreError", "same_public_key_of"]


class StoreError(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Pending:
    """A (re-)enrollment request sent, or about to be sent, without a final answer yet.

    Kept on disk so that a restart resends *the same* request (RFC 7030 §4.2.3: after a 202 the
    client repeats the request), with the same key, and not before the server's Retry-After.
    """

    action: Action
    key: ec.EllipticCurvePrivateKey
    csr: x509.CertificateSigningRequest
    not_before: dt.datetime | None = None
    for_serial: str | None = None  # re-enrollment: serial of the certificate being renewed


@dataclasses.dataclass(frozen=True)
class Persisted:
    """What survives a restart: the certificate's key, the certificate, chain and CA
    certificates if any, and the pending request if any."""

    key: ec.EllipticCurvePrivateKey | None
    certificate: x509.Certificate | None = None
    chain: tuple[x509.Certificate, ...] = ()
    ca_certs: tuple[x509.Certificate, ...] = ()
    pending: Pending | None = None


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(Encoding.PEM).decode("ascii")


def _spki(public_key) -> bytes:
    return public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def same_public_key_of(key: ec.EllipticCurvePrivateKey, csr: x509.CertificateSigningRequest) -> bool:
    return _spki(key.public_key()) == _spki(csr.public_key())


def _der_key(key: ec.EllipticCurvePrivateKey) -> str:
    return base64.b64encode(key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())).decode()


def _ec_key(der: bytes) -> ec.EllipticCurvePrivateKey:
    key = load_der_private_key(der, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise StoreError("the stored key is not an EC key")
    return key


class Store:
    """The sealed state file and its KEK in ``directory`` (see the module doc)."""

    def __init__(self, directory: Path, state_name: str = STATE_FILE, kek_name: str = KEK_FILE, *,
                 ops: FileOps = OS) -> None:
        self.directory = Path(directory)
        self.ops = ops
        self.state_path = self.directory / state_name
        self.legacy_path = self.directory / LEGACY_STATE_FILE
        self.kek_path = self.directory / kek_name
        self.file = SealedFile(self.state_path, STATE_MAGIC, what="EST state file", ops=ops)
        self.generation = 0  #: of the state as last loaded or saved

    # -- start-up checks ---------------------------------------------------------------------
    def clean_temps(self) -> list[str]:
        """Remove temporary files a crash left (state, legacy state, KEK); the names removed."""
        names = [self.state_path.name, self.legacy_path.name, self.kek_path.name]
        return clean_stale_temps(self.directory, names, ops=self.ops)

    def exists(self) -> bool:
        """Is there a stored state (sealed, or a legacy file)?"""
        return self.ops.exists(self.state_path) or self.ops.exists(self.legacy_path)

    def check_kek(self) -> None:
        """KekError if the KEK file exists with the wrong length (nothing could ever be sealed)."""
        kek = self._kek(create=False)
        if kek is not None:
            kek[:] = bytes(len(kek))

    def _kek(self, create: bool) -> bytearray | None:
        try:
            return read_kek(self.kek_path, ops=self.ops, source=self.kek_path.name)
        except FileNotFoundError:
            if not create:
                return None
            return create_kek(self.kek_path, ops=self.ops)

    # -- load / save ---------------------------------------------------------------------------
    def load(self) -> Persisted | None:
        """The stored state; None if there is none; StoreError if it is unusable."""
        try:
            blob = self.file.read_raw()
        except OSError as exc:
            raise StoreError(f"{self.state_path.name} is unreadable: {exc}") from None
        if blob is None:
            return self._load_legacy()
        kek = self._kek(create=False)
        if kek is None:
            raise StoreError(f"{self.kek_path.name} is missing: the stored state cannot be decrypted")
        try:
            opened = self.file.open(blob, AesSealer(kek, self.kek_path.name))
        except SealedError as exc:
            raise StoreError(str(exc)) from None
        try:
            doc = json.loads(bytes(opened.plaintext))
        except ValueError as exc:
            raise StoreError(f"{self.state_path.name} holds no JSON document: {exc}") from None
        finally:
            opened.plaintext[:] = bytes(len(opened.plaintext))
        if doc.get("format") != STATE_FORMAT or doc.get("version") != STATE_VERSION:
            raise StoreError(f"{self.state_path.name}: unknown format {doc.get('format')!r} v{doc.get('version')!r}")
        state = self._decode(doc, lambda text: _ec_key(base64.b64decode(text)))
        self.generation = opened.generation
        return state

    def _load_legacy(self) -> Persisted | None:
        try:
            doc = json.loads(self.ops.read(self.legacy_path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.legacy_path.name} is unreadable: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT or doc.get("version") not in (1, 2):
            got = doc.get("format") if isinstance(doc, dict) else None
            raise StoreError(f"{self.legacy_path.name}: unknown format {got!r}")
        kek = self._kek(create=False)
        if kek is None:
            raise StoreError(f"{self.kek_path.name} is missing: the stored key cannot be decrypted")
        aead = AESGCM(bytes(kek))
        kek[:] = bytes(len(kek))

        def unseal(blob: dict) -> ec.EllipticCurvePrivateKey:
            return _ec_key(aead.decrypt(base64.b64decode(blob["nonce"]), base64.b64decode(blob["ciphertext"]),
                                        KEY_AAD))

        return self._decode(doc, unseal, self.legacy_path.name)

    def _decode(self, doc: dict, key_of, name: str | None = None) -> Persisted:
        name = name or self.state_path.name
        try:
            key = key_of(doc["key"]) if doc.get("key") else None
            pending = None
            if doc.get("pending"):
                raw = doc["pending"]
                when = raw.get("not_before")
                pending = Pending(Action[raw["action"]], key_of(raw["key"]),
                                  x509.load_der_x509_csr(base64.b64decode(raw["csr"])),
                                  dt.datetime.fromisoformat(when) if when else None, raw.get("for_serial"))
                if not same_public_key_of(pending.key, pending.csr):
                    raise StoreError(f"{name}: the pending CSR does not hold the pending key")
            cert = doc.get("certificate")
            certificate = x509.load_pem_x509_certificate(cert.encode()) if cert else None
            chain = tuple(x509.load_pem_x509_certificate(p.encode()) for p in doc.get("chain", []))
            ca_certs = tuple(x509.load_pem_x509_certificate(p.encode()) for p in doc.get("ca_certs", []))
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"{name} cannot be loaded: {type(exc).__name__}: {exc}") from None
        if certificate is not None and (key is None or _spki(certificate.public_key()) != _spki(key.public_key())):
            raise StoreError(f"{name}: the certificate does not hold the stored key")
        return Persisted(key, certificate, chain, ca_certs, pending)

    def save(self, state: Persisted) -> None:
        """Replace the stored state (OSError, nothing changed, if it could not be written)."""
        kek = self._kek(create=True)
        assert kek is not None
        pending = state.pending
        doc = {
            "format": STATE_FORMAT, "version": STATE_VERSION,
            "saved_at": utc_now().isoformat(timespec="seconds"),
            "key": _der_key(state.key) if state.key is not None else None,
            "certificate": _pem(state.certificate) if state.certificate is not None else None,
            "chain": [_pem(c) for c in state.chain],
            "ca_certs": [_pem(c) for c in state.ca_certs],
            "pending": None if pending is None else {
                "action": pending.action.name, "key": _der_key(pending.key),
                "csr": base64.b64encode(pending.csr.public_bytes(Encoding.DER)).decode(),
                "not_before": pending.not_before.isoformat() if pending.not_before else None,
                "for_serial": pending.for_serial},
        }
        plaintext = bytearray(json.dumps(doc, indent=1).encode())
        try:
            self.file.write(AesSealer(kek, self.kek_path.name), plaintext, self.generation + 1)
        finally:
            plaintext[:] = bytes(len(plaintext))
        self.generation += 1
        if self.ops.exists(self.legacy_path):  # superseded by the sealed file from now on
            try:
                self.ops.unlink(self.legacy_path)
                self.ops.fsync_dir(self.directory)
            except OSError:
                pass  # harmless: the sealed file is read first

    def set_aside(self) -> Path | None:
        """Move an unusable state file out of the way (kept for inspection, never deleted)."""
        moved = None
        for path in (self.state_path, self.legacy_path):
            if self.ops.exists(path):
                target = path.with_name(f"{path.name}.bad-{utc_now():%Y%m%dT%H%M%S}")
                self.ops.rename(path, target)
                moved = moved or target
        return moved
