"""The est_service task: enrolls the device over EST, renews its certificate, hands it out.

Program ``est_service.task``. What it holds and why (docs/est.md has the full story):

* the **device key** (EC P-256/P-384): generated here, used here (CSR signatures, TLS client
  authentication at re-enrollment), stored here encrypted at rest; it never leaves the task;
* **TLS**: terminated here (`tls_stream.py`); the network proxy only moves ciphertext;
* **no network**: a capability to the network proxy (``net`` + ``net_shm``) is its only way out.

The loop (one thread, no ``time.sleep``): est_service waits for client requests with a kernel
receive timeout that ends when enrollment work is due (the renewal policy's next decision, a
202 ``Retry-After``, or a backoff). When the timeout fires it does the work; while an exchange
is in flight it keeps answering clients between proxy reads (``poll_clients``).

Config (``env.config``; docs/est.md lists every key with its default)::

    server: {endpoint: "127.0.0.1:8443", host: null, label: null}
    trust_anchor_rom: est-ta          # boot module with the bootstrap TA (PEM)
    auth: {username: estuser, password: estpwd}
    subject: {CN: gateway-0001, O: WvdS}   # or "CN=gateway-0001,O=WvdS"
    sans: ["dns:gateway-0001.local", "ip:10.0.0.7"]
    curve: P-256                      # or P-384
    renew_at_fraction: 0.66
    backoff: {initial_s: 30, factor: 2, max_s: 3600}
    deferral: {min_delay_s: 1, max_deferrals: 10}   # Retry-After is honoured, never shortened
    timeout_s: 10                     # per connection (connect .. last byte)
    min_reenroll_interval_s: 60       # never re-enroll more often than this
    check_interval_s: 3600            # re-check the clock at least this often
    rekey: true                       # a new key at every re-enrollment
    net: {gate: net, shm: net_shm}    # capability names of the proxy connection
    clients: {gateway: {gate: est_gw, shm: est_gw_shm}}
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import ipaddress
import json
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import (Encoding, NoEncryption, PrivateFormat,
                                                          PublicFormat, load_der_private_key)
from cryptography.x509.oid import NameOID

from tasks.est_service import protocol
from tasks.est_service.csr import Curve, build_csr, build_reenroll_csr, generate_key, same_identity
from tasks.est_service.exchange import DeferralLimits, Exchange
from tasks.est_service.http_transport import HttpTransport, make_ssl_context
from tasks.est_service.messages import BasicAuth, EstServer
from tasks.est_service.renewal import (Action, RenewalPolicy, RenewalState, decide, record_failure,
                                       record_success)
from tasks.est_service.results import (AuthRequired, CaCerts, Deferred, Enrolled, ErrorKind, EstError,
                                       Redirected)
from tasks.est_service.service_protocol import (AUTH_REFUSED, LOCAL_ERROR, Activity, CertState,
                                                Op, ServiceStatus, Status, decode_request, encode_cert,
                                                encode_chain, encode_response, too_large)
from tasks.est_service.tls_stream import proxy_connector
from tasks.est_service.trust import TrustAnchors, still_valid
from tasks.runtime.files import atomic_write
from tasks.runtime.shm import ShmClient, ShmPeer, bind_peers, handle_shm_call

UTC = dt.timezone.utc
STATE_FILE = "est-state.json"
KEK_FILE = "est-kek.bin"
STATE_FORMAT = "l4emu-est-state"
STATE_VERSION = 2  # 2 adds "pending"; version 1 files are still read
KEY_AAD = b"l4emu est_service device key v1"
MAX_WAIT_US = 24 * 3600 * 1_000_000  # one day: well inside l4_timeout_t's range


class ConfigError(ValueError):
    pass


class StoreError(Exception):
    pass


def utc_now() -> dt.datetime:
    return dt.datetime.now(UTC)


# ---------------------------------------------------------------------------- configuration
_NAME_OIDS = {
    "CN": NameOID.COMMON_NAME, "O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "C": NameOID.COUNTRY_NAME, "L": NameOID.LOCALITY_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "serialNumber": NameOID.SERIAL_NUMBER,
}


def _subject(value) -> x509.Name:
    if isinstance(value, str):
        try:
            name = x509.Name.from_rfc4514_string(value)
        except ValueError as exc:
            raise ConfigError(f"subject: {exc}") from None
    elif isinstance(value, dict):
        attrs = []
        for key, text in value.items():
            if key not in _NAME_OIDS:
                raise ConfigError(f"subject: unknown attribute {key!r} (expected one of {', '.join(_NAME_OIDS)})")
            attrs.append(x509.NameAttribute(_NAME_OIDS[key], str(text)))
        name = x509.Name(attrs)
    else:
        raise ConfigError("subject: expected a mapping such as {CN: gateway-0001} or an RFC 4514 string")
    if len(name) == 0:
        raise ConfigError("subject: must not be empty")
    return name


def _san(text: str) -> x509.GeneralName:
    kind, _, value = str(text).partition(":")
    try:
        if kind == "dns" and value:
            return x509.DNSName(value)
        if kind == "ip" and value:
            return x509.IPAddress(ipaddress.ip_address(value))
        if kind == "uri" and value:
            return x509.UniformResourceIdentifier(value)
        if kind == "email" and value:
            return x509.RFC822Name(value)
    except ValueError as exc:
        raise ConfigError(f"sans: {text!r}: {exc}") from None
    raise ConfigError(f"sans: expected dns:NAME, ip:ADDRESS, uri:URI or email:ADDR, got {text!r}")


@dataclasses.dataclass(frozen=True)
class Config:
    endpoint: str
    server: EstServer
    trust_anchor_rom: str
    auth: BasicAuth | None
    subject: x509.Name
    sans: tuple[x509.GeneralName, ...]
    curve: Curve
    policy: RenewalPolicy
    limits: DeferralLimits
    timeout_s: float
    min_reenroll_interval_s: float
    check_interval_s: float
    rekey: bool
    net: dict
    clients: dict

    @classmethod
    def parse(cls, raw: dict) -> "Config":
        try:
            return cls._parse(raw or {})
        except ConfigError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(f"{type(exc).__name__}: {exc}") from None

    @classmethod
    def _parse(cls, raw: dict) -> "Config":
        server = raw.get("server") or {}
        endpoint = str(server.get("endpoint", ""))
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"server.endpoint: expected host:port, got {endpoint!r}")
        tls_host = str(server.get("host") or host.strip("[]"))
        est_server = EstServer(tls_host, int(port), server.get("label"))
        auth = raw.get("auth")
        curve = {"P-256": Curve.P256, "P-384": Curve.P384}.get(str(raw.get("curve", "P-256")))
        if curve is None:
            raise ConfigError(f"curve: expected P-256 or P-384, got {raw.get('curve')!r}")
        backoff = raw.get("backoff") or {}
        policy = RenewalPolicy(renew_at_fraction=float(raw.get("renew_at_fraction", 0.66)),
                               initial_backoff=float(backoff.get("initial_s", 30.0)),
                               backoff_factor=float(backoff.get("factor", 2.0)),
                               max_backoff=float(backoff.get("max_s", 3600.0)))
        deferral = raw.get("deferral") or {}
        if "max_delay_s" in deferral:
            raise ConfigError("deferral.max_delay_s is gone: RFC 7030 §4.2.3 says the client waits at least "
                              "the server's Retry-After, so it is never shortened")
        limits = DeferralLimits(min_delay=float(deferral.get("min_delay_s", 1.0)),
                                max_deferrals=int(deferral.get("max_deferrals", 10)))
        timeout_s = float(raw.get("timeout_s", 10.0))
        if timeout_s <= 0:
            raise ConfigError("timeout_s must be positive")
        net = raw.get("net") or {"gate": "net", "shm": "net_shm"}
        return cls(
            endpoint=endpoint, server=est_server,
            trust_anchor_rom=str(raw.get("trust_anchor_rom", "est-ta")),
            auth=BasicAuth(str(auth["username"]), str(auth["password"])) if auth else None,
            subject=_subject(raw.get("subject", {"CN": "l4emu-device"})),
            sans=tuple(_san(s) for s in raw.get("sans", [])),
            curve=curve, policy=policy, limits=limits, timeout_s=timeout_s,
            min_reenroll_interval_s=float(raw.get("min_reenroll_interval_s", 60.0)),
            check_interval_s=max(1.0, float(raw.get("check_interval_s", 3600.0))),
            rekey=bool(raw.get("rekey", True)),
            net={"gate": str(net["gate"]), "shm": str(net["shm"])},
            clients=dict(raw.get("clients") or {}),
        )


# ---------------------------------------------------------------------------- persistence
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


class Store:
    """The task's state in its private work directory: one JSON file, replaced atomically.

    The private key is stored as AES-256-GCM ciphertext of its PKCS#8 DER under a key-encryption
    key (KEK). The KEK backend here is a *development* one: 32 random bytes in ``est-kek.bin``
    (mode 0600) in the same directory. It keeps the key out of anything that copies the state
    file alone (a backup, a log attachment, a support bundle), and the GCM tag detects tampering;
    it does NOT protect against anyone who can read the whole work directory. On a device the
    KEK comes from sealed storage (TPM / secure element) instead (docs/est.md).
    """

    def __init__(self, directory: Path, state_name: str = STATE_FILE, kek_name: str = KEK_FILE):
        self.directory = directory
        self.state_path = directory / state_name
        self.kek_path = directory / kek_name

    def _kek(self, create: bool) -> bytes | None:
        try:
            kek = self.kek_path.read_bytes()
        except FileNotFoundError:
            if not create:
                return None
            kek = AESGCM.generate_key(bit_length=256)
            atomic_write(self.kek_path, kek)
            return kek
        if len(kek) != 32:
            raise StoreError(f"{self.kek_path.name} is not a 256-bit key ({len(kek)} bytes)")
        return kek

    @staticmethod
    def _seal(kek: bytes, key: ec.EllipticCurvePrivateKey) -> dict:
        nonce = os.urandom(12)
        der = key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
        return {"alg": "AES-256-GCM", "kek": KEK_FILE, "curve": Curve.of(key).name,
                "nonce": base64.b64encode(nonce).decode(),
                "ciphertext": base64.b64encode(AESGCM(kek).encrypt(nonce, der, KEY_AAD)).decode()}

    @staticmethod
    def _unseal(kek: bytes, blob: dict) -> ec.EllipticCurvePrivateKey:
        der = AESGCM(kek).decrypt(base64.b64decode(blob["nonce"]), base64.b64decode(blob["ciphertext"]),
                                  KEY_AAD)
        key = load_der_private_key(der, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise StoreError("the stored key is not an EC key")
        return key

    def load(self) -> Persisted | None:
        try:
            doc = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.state_path.name} is unreadable: {exc}") from None
        try:
            if doc.get("format") != STATE_FORMAT or doc.get("version") not in (1, STATE_VERSION):
                raise StoreError(f"{self.state_path.name}: unknown format {doc.get('format')!r} "
                                 f"v{doc.get('version')!r}")
            kek = self._kek(create=False)
            if kek is None:
                raise StoreError(f"{self.kek_path.name} is missing: the stored key cannot be decrypted")
            key = self._unseal(kek, doc["key"]) if doc.get("key") else None
            pending = None
            if doc.get("pending"):
                raw = doc["pending"]
                when = raw.get("not_before")
                pending = Pending(Action[raw["action"]], self._unseal(kek, raw["key"]),
                                  x509.load_der_x509_csr(base64.b64decode(raw["csr"])),
                                  dt.datetime.fromisoformat(when) if when else None, raw.get("for_serial"))
                if not same_public_key_of(pending.key, pending.csr):
                    raise StoreError(f"{self.state_path.name}: the pending CSR does not hold the pending key")
            cert = doc.get("certificate")
            certificate = x509.load_pem_x509_certificate(cert.encode()) if cert else None
            chain = tuple(x509.load_pem_x509_certificate(p.encode()) for p in doc.get("chain", []))
            ca_certs = tuple(x509.load_pem_x509_certificate(p.encode()) for p in doc.get("ca_certs", []))
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - InvalidTag, base64, PEM, missing fields
            raise StoreError(f"{self.state_path.name} cannot be loaded: {type(exc).__name__}: {exc}") from None
        if certificate is not None and (key is None or _spki(certificate.public_key()) != _spki(key.public_key())):
            raise StoreError(f"{self.state_path.name}: the certificate does not hold the stored key")
        return Persisted(key, certificate, chain, ca_certs, pending)

    def save(self, state: Persisted) -> None:
        kek = self._kek(create=True)
        assert kek is not None
        pending = state.pending
        doc = {
            "format": STATE_FORMAT, "version": STATE_VERSION,
            "saved_at": utc_now().isoformat(timespec="seconds"),
            "key": self._seal(kek, state.key) if state.key is not None else None,
            "certificate": _pem(state.certificate) if state.certificate is not None else None,
            "chain": [_pem(c) for c in state.chain],
            "ca_certs": [_pem(c) for c in state.ca_certs],
            "pending": None if pending is None else {
                "action": pending.action.name, "key": self._seal(kek, pending.key),
                "csr": base64.b64encode(pending.csr.public_bytes(Encoding.DER)).decode(),
                "not_before": pending.not_before.isoformat() if pending.not_before else None,
                "for_serial": pending.for_serial},
        }
        atomic_write(self.state_path, json.dumps(doc, indent=1).encode())

    def set_aside(self) -> Path | None:
        """Move an unusable state file out of the way (kept for inspection, never deleted)."""
        if not self.state_path.exists():
            return None
        target = self.state_path.with_name(f"{self.state_path.name}.bad-{utc_now():%Y%m%dT%H%M%S}")
        os.replace(self.state_path, target)
        return target


# ---------------------------------------------------------------------------- the service
def _op(action: Action) -> str:
    return "simplereenroll" if action is Action.REENROLL else "simpleenroll"


def _describe(outcome) -> str:
    if isinstance(outcome, AuthRequired):
        return "HTTP 401: " + ("credentials refused" if outcome.credentials_sent else "credentials required")
    return str(outcome)


def _csr_sans(csr: x509.CertificateSigningRequest) -> list:
    try:
        return list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def _serial(cert: x509.Certificate | None) -> str:
    return f"{cert.serial_number:x}" if cert is not None else "-"


def _unix(when: dt.datetime | None) -> int:
    return int(when.timestamp()) if when is not None else 0


@dataclasses.dataclass
class Attempt:
    """One (re-)enrollment in progress: kept across the main loop while the server defers."""

    action: Action
    key: ec.EllipticCurvePrivateKey
    csr: x509.CertificateSigningRequest
    exchange: Exchange
    transport: HttpTransport
    not_before: dt.datetime
    client_auth: str  # "none" or "serial=..." of the certificate presented


class EstService:
    """est_service's state and decisions; ``transport_for`` and ``log`` are the only I/O."""

    def __init__(self, cfg: Config, trust: TrustAnchors, store: Store, *, log, transport_for,
                 clock=utc_now):
        self.cfg, self.trust, self.store, self.log = cfg, trust, store, log
        self.transport_for = transport_for  # (client_cert, client_key, chain) -> HttpTransport
        self.clock = clock
        self.renewal = RenewalState()
        self.key: ec.EllipticCurvePrivateKey | None = None
        self.ca_certs: tuple[x509.Certificate, ...] = ()
        self.attempt: Attempt | None = None
        self.activity = Activity.IDLE
        self.successes = self.errors = 0
        self.last_error: tuple[int, int, str] = (0, 0, "")
        self.reenroll_not_before: dt.datetime | None = None
        self.pending: Pending | None = None

    # -- startup -------------------------------------------------------------------------
    def load(self) -> None:
        try:
            state = self.store.load()
        except (StoreError, OSError) as exc:
            moved = None
            try:
                moved = self.store.set_aside()
            except OSError:
                pass
            self._note_error(LOCAL_ERROR, 0, f"LOCAL: stored state unusable ({exc}); "
                             f"set aside as {moved.name if moved else '-'}; enrolling anew")
            self.log(f"state: {self.last_error[2]}")
            return
        if state is None:
            self.log("state: no stored certificate (first start)")
            return
        self.key, self.ca_certs, self.pending = state.key, state.ca_certs, state.pending
        if state.pending is not None:
            wait = f", not before {state.pending.not_before.isoformat()} (Retry-After)" \
                if state.pending.not_before else ""
            self.log(f"state: a pending {_op(state.pending.action)} request (CSR for "
                     f"{state.pending.csr.subject.rfc4514_string()}) will be resent with the same key{wait}")
        if state.certificate is not None:
            self.renewal = RenewalState(certificate=state.certificate, chain=state.chain)
            self.log(f"state: loaded certificate serial={_serial(state.certificate)} "
                     f"subject={state.certificate.subject.rfc4514_string()} "
                     f"not_after={state.certificate.not_valid_after_utc.isoformat()}")
        elif state.key is not None:
            self.log("state: loaded a key that has no certificate yet")

    # -- scheduling ----------------------------------------------------------------------
    def next_wakeup(self, now: dt.datetime) -> dt.datetime:
        if self.attempt is not None:
            return self.attempt.not_before
        decision = decide(self.renewal, self.cfg.policy, now)
        at = decision.at
        if decision.action is Action.REENROLL and self.reenroll_not_before is not None:
            at = max(at, self.reenroll_not_before)
        hold = self._retry_after_hold(decision.action)
        if hold is not None:
            at = max(at, hold)
        return min(at, now + dt.timedelta(seconds=self.cfg.check_interval_s))

    def _retry_after_hold(self, action: Action) -> dt.datetime | None:
        """A persisted Retry-After that still holds back the pending request for ``action``."""
        pending = self.pending
        if pending is None or pending.action is not action or pending.not_before is None:
            return None
        return pending.not_before

    def work(self, now: dt.datetime) -> None:
        """Do whatever is due at ``now`` (the caller checked `next_wakeup`). Never raises: a bug
        or an unexpected library error becomes a LOCAL failure (backoff, certificate kept), so
        est_service keeps serving its clients."""
        try:
            self._work(now)
        except Exception as exc:  # noqa: BLE001
            self.attempt = None
            self._local_failure("enrollment", f"internal error: {type(exc).__name__}: {exc}")

    def _work(self, now: dt.datetime) -> None:
        if self.attempt is not None:
            if now >= self.attempt.not_before:
                self._resend(self.attempt)
            return
        decision = decide(self.renewal, self.cfg.policy, now)
        if decision.action is Action.WAIT:
            return
        if (decision.action is Action.REENROLL and self.reenroll_not_before is not None
                and now < self.reenroll_not_before):
            return
        hold = self._retry_after_hold(decision.action)
        if hold is not None and now < hold:
            return
        self._start(decision.action, decision.reason)

    # -- one attempt -----------------------------------------------------------------------
    def _start(self, action: Action, reason: str) -> None:
        op = _op(action)
        self.log(f"{op}: starting ({reason})")
        self.activity = Activity.EXCHANGING
        # The CA certificates: fetched before every (re-)enrollment -- the renewal schedule --
        # so a CA that moved to a new issuing CA is followed (RFC 7030 §4.1.3).
        failed = self._refresh_cacerts("before " + op)
        if failed is not None:
            if not self.ca_certs:
                self._failed(op, "cacerts", failed)
                return
            self.log(f"cacerts: refresh FAILED ({_describe(failed)}); continuing with the "
                     f"{len(self.ca_certs)} stored CA certificate(s)")
        current = self.renewal.certificate
        try:
            key, csr = self._request_for(action, current)
            if action is Action.REENROLL:
                assert current is not None and self.key is not None
                intermediates = tuple(c for c in self.renewal.chain[1:] if not self.trust.is_anchor(c))
                transport = self.transport_for(current, self.key, intermediates)
                exchange = protocol.simplereenroll(self.cfg.server, self.trust, csr, ca_certs=self.ca_certs,
                                                   limits=self.cfg.limits)
                client_auth = f"serial={_serial(current)}"
            else:
                transport = self.transport_for(None, None, ())
                exchange = protocol.simpleenroll(self.cfg.server, self.trust, csr, auth=self.cfg.auth,
                                                 ca_certs=self.ca_certs, limits=self.cfg.limits)
                client_auth = "none"
        except (OSError, ValueError, TypeError) as exc:
            self._local_failure(op, f"preparing the request failed: {type(exc).__name__}: {exc}")
            return
        attempt = Attempt(action, key, csr, exchange, transport, self.clock(), client_auth)
        self._send(attempt, exchange.request)

    def _request_for(self, action: Action, current: x509.Certificate | None):
        """The pending request if it still fits (same key, same CSR: "the same request"), else a
        new one -- stored before it is sent, so a restart resends exactly this request."""
        pending, op = self.pending, _op(action)
        if pending is not None and self._pending_fits(pending, action, current):
            self.log(f"{op}: resending the pending request (same key and CSR)")
            return pending.key, pending.csr
        if action is Action.REENROLL:
            assert current is not None and self.key is not None
            key = generate_key(self.cfg.curve) if self.cfg.rekey else self.key
            csr = build_reenroll_csr(key, current)
            for_serial = _serial(current)
        else:
            if self.key is not None and current is None and Curve.of(self.key) is self.cfg.curve:
                key = self.key  # a key stored without certificate by an older version
            elif current is None or self.cfg.rekey:
                key = generate_key(self.cfg.curve)
            else:
                key = self.key
            csr = build_csr(key, self.cfg.subject, self.cfg.sans)
            for_serial = None
        self.pending = Pending(action, key, csr, None, for_serial)
        self._save()
        return key, csr

    def _pending_fits(self, pending: Pending, action: Action, current: x509.Certificate | None) -> bool:
        if pending.action is not action:
            return False
        if action is Action.REENROLL:
            return (current is not None and pending.for_serial == _serial(current)
                    and same_identity(pending.csr, current))
        return (pending.csr.subject == self.cfg.subject and _csr_sans(pending.csr) == list(self.cfg.sans)
                and Curve.of(pending.key) is self.cfg.curve)

    def _save(self) -> None:
        self.store.save(Persisted(self.key, self.renewal.certificate, self.renewal.chain, self.ca_certs,
                                  self.pending))

    def _cacerts_trust(self, now: dt.datetime) -> TrustAnchors:
        """What a new /cacerts answer must chain to: the bootstrap TA, or a certificate of the
        current set that is still valid."""
        current = tuple(c for c in self.ca_certs if still_valid(c, now) and not self.trust.is_anchor(c))
        return TrustAnchors(self.trust.anchors + current)

    def _refresh_cacerts(self, why: str):
        """GET /cacerts; None on success (self.ca_certs updated and stored), else the outcome."""
        now = self.clock()
        anchors = self._cacerts_trust(now)
        outcome = self._drive(protocol.cacerts(self.cfg.server, anchors), self.transport_for(None, None, ()))
        if not isinstance(outcome, CaCerts):
            return outcome
        new = outcome.certificates

        def fingerprints(certs) -> list[bytes]:
            return sorted(c.fingerprint(hashes.SHA256()) for c in certs)

        if fingerprints(new) == fingerprints(self.ca_certs):
            self.log(f"cacerts ({why}): {len(new)} CA certificate(s), unchanged")
            return None
        names = "; ".join(c.subject.rfc4514_string() for c in new)
        via = ("the bootstrap trust anchor" if len(anchors.anchors) == len(self.trust.anchors)
               else "the bootstrap trust anchor or the current, still valid CA certificates")
        self.log(f"cacerts ({why}): {'now ' if self.ca_certs else ''}{len(new)} CA certificate(s) [{names}], "
                 f"verified against {via}")
        self.ca_certs = new
        try:
            self._save()
        except OSError as exc:
            self.log(f"cacerts: could not store the new CA certificates ({exc}); kept in memory")
        return None

    def _drive(self, exchange: Exchange, transport: HttpTransport, request=None):
        """Send until a final outcome or a 202: same-origin redirects are followed, a 401 is
        answered once with the configured credentials (the server is TLS-authenticated)."""
        op = exchange.operation.value
        request = request or exchange.request
        while True:
            response = transport.send(request)
            if isinstance(response, EstError):
                return exchange.fail(response)
            outcome = exchange.receive(response, self.clock())
            if isinstance(outcome, Redirected):
                self.log(f"{op}: {outcome.status} redirect to {outcome.target} (same origin): following")
                request = exchange.resend()
                continue
            if isinstance(outcome, AuthRequired) and not outcome.credentials_sent and self.cfg.auth is not None:
                self.log(f"{op}: the server asks for credentials ({outcome.challenge or 'no challenge'}); "
                         f"answering with the configured HTTP Basic credentials (user {self.cfg.auth.username})")
                request = exchange.authenticate(self.cfg.auth)
                continue
            return outcome

    def _resend(self, attempt: Attempt) -> None:
        self.activity = Activity.EXCHANGING
        self._send(attempt, attempt.exchange.resend())

    def _send(self, attempt: Attempt, request) -> None:
        op = attempt.exchange.operation.value
        outcome = self._drive(attempt.exchange, attempt.transport, request)
        if isinstance(outcome, Deferred):
            attempt.not_before = outcome.not_before
            self.attempt = attempt
            self.activity = Activity.DEFERRED
            if self.pending is not None:
                self.pending = dataclasses.replace(self.pending, not_before=outcome.not_before)
                try:
                    self._save()
                except OSError as exc:
                    self.log(f"{op}: could not store the Retry-After time ({exc})")
            self.log(f"{op}: deferred by the server (202, Retry-After {outcome.requested:g}s): "
                     f"resending the same request in {outcome.delay:g}s (deferral {outcome.deferrals})")
            return
        self.attempt = None
        if (isinstance(outcome, EstError) and outcome.kind is ErrorKind.UNTRUSTED_CHAIN
                and attempt.exchange.response is not None):
            outcome = self._recheck_with_fresh_cacerts(attempt, outcome)
        if isinstance(outcome, Enrolled):
            self._enrolled(attempt, outcome)
        else:
            if isinstance(outcome, EstError) and outcome.status is not None and 400 <= outcome.status < 500:
                self.pending = None  # the server has seen this request and refused it: build anew
            self._failed(op, op, outcome)

    def _recheck_with_fresh_cacerts(self, attempt: Attempt, error: EstError):
        """The issued certificate does not chain with the CA certificates we hold: the CA may have
        moved to a new issuing CA. Refresh /cacerts and check the *same* answer again (asking
        again would make the CA issue a second certificate)."""
        op = attempt.exchange.operation.value
        self.log(f"{op}: the answer does not chain with our {len(self.ca_certs)} CA certificate(s): "
                 "refreshing /cacerts")
        failed = self._refresh_cacerts("untrusted chain")
        if failed is not None:
            self.log(f"cacerts: refresh FAILED ({_describe(failed)})")
            return error
        make = protocol.simplereenroll if attempt.action is Action.REENROLL else protocol.simpleenroll
        again = make(self.cfg.server, self.trust, attempt.csr, ca_certs=self.ca_certs)
        return again.receive(attempt.exchange.response, self.clock())

    def _enrolled(self, attempt: Attempt, enrolled: Enrolled) -> None:
        op = attempt.exchange.operation.value
        old = self.renewal.certificate
        try:
            self.store.save(Persisted(attempt.key, enrolled.certificate, enrolled.chain, self.ca_certs, None))
        except OSError as exc:
            self._local_failure(op, f"the new certificate could not be stored ({exc}); keeping the old one")
            return
        self.key, self.pending = attempt.key, None
        self.renewal = record_success(self.renewal, enrolled)
        self.successes += 1
        self.activity = Activity.IDLE
        now = self.clock()
        self.reenroll_not_before = now + dt.timedelta(seconds=self.cfg.min_reenroll_interval_s)
        cert = enrolled.certificate
        verb = "re-enrolled" if attempt.action is Action.REENROLL else "enrolled"
        basic = (f"user {self.cfg.auth.username}" if attempt.exchange.request.header("Authorization")
                 and self.cfg.auth else "none")
        self.log(f"{verb}: serial={_serial(cert)} subject={cert.subject.rfc4514_string()} "
                 f"not_after={cert.not_valid_after_utc.isoformat()} chain={len(enrolled.chain)} "
                 f"issuer={cert.issuer.rfc4514_string()} via {op} (TLS client auth: {attempt.client_auth}; "
                 f"HTTP Basic: {basic}; previous serial={_serial(old)})")

    def _note_error(self, code: int, http: int, detail: str) -> None:
        self.last_error = (code, http, detail)

    def _failed(self, op: str, step: str, outcome) -> None:
        if isinstance(outcome, AuthRequired):
            if outcome.credentials_sent:
                user = f" (user {self.cfg.auth.username})" if self.cfg.auth else ""
                why = f"the server refused our credentials{user}"
            else:
                why = "the server wants credentials and none are configured (est config auth.username/password)"
            challenge = f"; challenge: {outcome.challenge}" if outcome.challenge else ""
            detail = f"AUTH_REFUSED (HTTP 401) at /{step}: {why}{challenge}"
            self._note_error(AUTH_REFUSED, 401, detail)
            failure = outcome
        elif isinstance(outcome, EstError):
            detail = str(outcome)
            self._note_error(int(outcome.kind), outcome.status or 0, detail)
            failure = outcome
        else:  # an outcome this step does not expect (cannot happen with the protocol core)
            detail = f"unexpected outcome {type(outcome).__name__}"
            self._note_error(LOCAL_ERROR, 0, f"LOCAL: {detail}")
            failure = None
        now = self.clock()
        self.renewal = record_failure(self.renewal, failure, self.cfg.policy, now)  # type: ignore[arg-type]
        self._after_failure(op, f"{step} FAILED: {detail}", now)

    def _local_failure(self, op: str, detail: str) -> None:
        self._note_error(LOCAL_ERROR, 0, f"LOCAL: {detail}")
        now = self.clock()
        failures = self.renewal.failures + 1
        self.renewal = dataclasses.replace(
            self.renewal, failures=failures,
            retry_at=now + dt.timedelta(seconds=self.cfg.policy.backoff(failures)))
        self._after_failure(op, f"{op} FAILED: LOCAL: {detail}", now)

    def _after_failure(self, op: str, text: str, now: dt.datetime) -> None:
        self.errors += 1
        self.attempt = None
        self.activity = Activity.BACKING_OFF
        cert = self.renewal.certificate
        kept = f"keeping certificate serial={_serial(cert)}" if cert is not None else "no certificate"
        wait = (self.renewal.retry_at - now).total_seconds() if self.renewal.retry_at else 0.0
        self.log(f"{text}; {kept}; retry in {wait:g}s (failure {self.renewal.failures})")

    # -- what clients see -------------------------------------------------------------------
    def status(self) -> ServiceStatus:
        now = self.clock()
        cert = self.renewal.certificate
        state = CertState.NONE if cert is None else (
            CertState.VALID if now < cert.not_valid_after_utc else CertState.EXPIRED)
        activity = self.activity
        if activity is Activity.BACKING_OFF and not (self.renewal.retry_at and now < self.renewal.retry_at):
            activity = Activity.IDLE
        code, http, detail = self.last_error
        return ServiceStatus(state, activity, code, http, self.renewal.failures, self.successes, self.errors,
                             _unix(cert.not_valid_after_utc if cert else None),
                             _unix(self.next_wakeup(now) if self.activity is not Activity.EXCHANGING else now),
                             detail)

    def handle(self, peer: ShmPeer, raw: bytes) -> bytes:
        """One service-protocol request -> response (never raises)."""
        req = decode_request(raw)
        if req is None:
            return encode_response(Status.BAD_REQUEST)
        if req.op is Op.STATUS:
            payload = self.status().encode()
        else:
            cert = self.renewal.certificate
            if cert is None:
                return encode_response(Status.NO_CERTIFICATE)
            if req.op is Op.GET_CERT:
                payload = encode_cert(cert, req.format)
            else:
                payload = encode_chain(self.renewal.chain or (cert,), req.format)
        if 1 + len(payload) > peer.half:
            return too_large(1 + len(payload))
        return encode_response(Status.OK, payload)


# ---------------------------------------------------------------------------- the task
def _dispatch(peers: dict[int, ShmPeer], service: EstService, msg) -> tuple[int, tuple[int, ...]]:
    return handle_shm_call(peers, msg, service.handle)


def _trust_anchors(env, name: str) -> TrustAnchors:
    region = env.map_dataspace(env.rom(name))
    pem = bytes(region.read(0, region.size)).rstrip(b"\0")
    return TrustAnchors(tuple(x509.load_pem_x509_certificates(pem)))


def main(env) -> int:
    try:
        cfg = Config.parse(env.config)
    except (ConfigError, ValueError) as exc:
        env.log(f"config error: {exc}")
        return 2
    try:
        trust = _trust_anchors(env, cfg.trust_anchor_rom)
    except Exception as exc:  # noqa: BLE001 - missing module / cap / bad PEM: say which
        env.log(f"config error: trust anchor rom/{cfg.trust_anchor_rom}: {type(exc).__name__}: {exc}")
        return 2
    # ssl loads client keys only from files (make_ssl_context writes one, encrypted under a
    # one-time password, and removes it at once): keep even that in our private work directory.
    tempfile.tempdir = os.getcwd()
    try:
        # The IPC timeout only guards against a stuck proxy; the proxy bounds its own connect
        # and send (10 s each) and est_service bounds every read by timeout_s.
        net = ShmClient(env, env.cap(cfg.net["gate"]), env.cap(cfg.net["shm"]),
                        timeout_us=int((cfg.timeout_s + 15) * 1_000_000))
        peers = bind_peers(env, cfg.clients)
    except Exception as exc:  # noqa: BLE001 - a capability the config names is missing or unusable
        env.log(f"config error: {type(exc).__name__}: {exc}")
        return 2
    service: EstService

    def poll_clients() -> None:
        """Between proxy reads: answer whoever is waiting, without blocking."""
        for _ in range(16):
            msg = env.wait(timeout_us=0)
            if not msg.ok:
                return
            env.reply(*_reply_args(_dispatch(peers, service, msg)))

    def transport_for(cert, key, chain) -> HttpTransport:
        context = make_ssl_context(trust.anchors, client_cert=cert, client_key=key, client_chain=chain)
        connect = proxy_connector(net.transact, cfg.endpoint, context, cfg.server.host,
                                  timeout=cfg.timeout_s, area=net.half, idle=poll_clients)
        return HttpTransport(connect, timeout=cfg.timeout_s)

    service = EstService(cfg, trust, Store(Path.cwd()), log=env.log, transport_for=transport_for)
    service.load()
    env.log(f"serving {', '.join(p.name for p in peers.values()) or 'nobody'}; EST server "
            f"{cfg.endpoint} (TLS name {cfg.server.host}) through the network proxy; "
            f"trust anchor: {', '.join(a.subject.rfc4514_string() for a in trust.anchors)}")

    pending: tuple[int, tuple[int, ...]] | None = None
    while True:
        now = service.clock()
        wake = service.next_wakeup(now)
        if wake <= now:
            if pending is not None:
                env.reply(*_reply_args(pending))
                pending = None
            service.work(now)
            continue
        timeout_us = min(MAX_WAIT_US, max(1, int((wake - now).total_seconds() * 1_000_000)))
        if pending is not None:
            msg = env.reply_and_wait(*_reply_args(pending), timeout_us=timeout_us)
        else:
            msg = env.wait(timeout_us=timeout_us)
        pending = _dispatch(peers, service, msg) if msg.ok else None


def _reply_args(answer: tuple[int, tuple[int, ...]]) -> tuple[int, ...]:
    status, words = answer
    return (status, *words)
