"""est_service's configuration (``env.config``), parsed strictly into a frozen ``Config``.

Keys (docs/est.md lists every key with its default)::

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
    store: {required: false}          # true: refuse to start when the stored state is missing
    net: {gate: net, shm: net_shm}    # capability names of the proxy connection
    clients: {gateway: {gate: est_gw, shm: est_gw_shm}}
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress

from cryptography import x509
from cryptography.x509.oid import NameOID

from tasks.est_service.csr import Curve
from tasks.est_service.exchange import DeferralLimits
from tasks.est_service.messages import BasicAuth, EstServer
from tasks.est_service.renewal import RenewalPolicy

UTC = dt.UTC


class ConfigError(ValueError):
    pass


def utc_now() -> dt.datetime:
    return dt.datetime.now(UTC)


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
    store_required: bool = False  #: ``store: {required: true}``: refuse to start without a stored state

    @classmethod
    def parse(cls, raw: dict) -> Config:
        try:
            return cls._parse(raw or {})
        except ConfigError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(f"{type(exc).__name__}: {exc}") from None

    @classmethod
    def _parse(cls, raw: dict) -> Config:
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
        store = raw.get("store")
        store = {} if store is None else store
        if not isinstance(store, dict) or set(store) - {"required"}:
            raise ConfigError("store: expected {required: true|false}")
        if not isinstance(store.get("required", False), bool):
            raise ConfigError("store.required must be true or false")
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
            store_required=bool(store.get("required", False)),
        )
