"""est_service's task logic without booting: service protocol codec, config, the encrypted
state store, and the scheduling of (re-)enrollment under an injected clock. The EST server is
the real development CA, reached through the network proxy's handler running in-process."""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from hil.est_ca import EstCa, Fault, ServerOptions, serve
from protocols.est_service import (
    AUTH_REFUSED,
    Activity,
    CertState,
    Format,
    Op,
    Request,
    ServiceStatus,
    Status,
    decode_chain_der,
    decode_request,
    decode_response,
    encode_chain,
)
from tasks.est_service.config import Config, ConfigError
from tasks.est_service.csr import generate_key
from tasks.est_service.http_transport import HttpTransport, make_ssl_context
from tasks.est_service.results import ErrorKind
from tasks.est_service.service import EstService
from tasks.est_service.store import Persisted, Store, StoreError
from tasks.est_service.tls_stream import proxy_connector
from tasks.est_service.trust import TrustAnchors
from tasks.netproxy.task import Proxy
from tasks.runtime.shm import ShmPeer

UTC = dt.UTC


# ------------------------------------------------------------------------------ service protocol
@pytest.mark.parametrize("raw", [b"", b"\x00", b"\x04", b"\xff", b"\x01", b"\x01\x02", b"\x02\x00\x00",
                                 b"\x03\x00", b"\x03\x03"])
def test_malformed_requests_decode_to_none(raw):
    assert decode_request(raw) is None


def test_request_and_status_round_trip():
    for req in (Request(Op.GET_CERT, Format.PEM), Request(Op.GET_CHAIN, Format.DER), Request(Op.STATUS)):
        assert decode_request(req.encode()) == req
    assert Request(Op.GET_CERT, Format.PEM).encode() == b"\x01\x01"
    status = ServiceStatus(CertState.VALID, Activity.DEFERRED, 7, 200, 3, 2, 5, 1_800_000_000, 1_700_000_000,
                           "UNTRUSTED_CHAIN: ü")
    raw = status.encode()
    assert raw[:2] == b"\x01\x02" and raw[32:34] == len("UNTRUSTED_CHAIN: ü".encode()).to_bytes(2, "little")
    assert ServiceStatus.decode(raw) == status
    assert ServiceStatus.decode(raw[:-1]) is None and ServiceStatus.decode(raw[:10]) is None
    long = ServiceStatus(detail="é" * 600).encode()
    assert len(long) <= 34 + 512 and ServiceStatus.decode(long) is not None
    assert decode_response(b"") == (Status.BAD_REQUEST, b"") and decode_response(b"\x09x")[0] is Status.BAD_REQUEST


def test_chain_framing(ca):
    raw = encode_chain((ca.certificate, ca.certificate), Format.DER)
    assert decode_chain_der(raw) == [ca.certificate.public_bytes(Encoding.DER)] * 2
    assert decode_chain_der(raw[:-1]) is None and decode_chain_der(b"\x00\x00\x00\x00") is None


# ------------------------------------------------------------------------------ config
def config(port: int = 8443, **overrides) -> dict:
    raw = {"server": {"endpoint": f"127.0.0.1:{port}"}, "auth": {"username": "estuser", "password": "estpwd"},
           "subject": {"CN": "gateway-0001"}, "sans": ["dns:gateway-0001.local"],
           "backoff": {"initial_s": 5, "factor": 2, "max_s": 60}, "timeout_s": 5}
    raw.update(overrides)
    return raw


def test_config_defaults_and_errors():
    cfg = Config.parse(config())
    assert cfg.server.host == "127.0.0.1" and cfg.server.port == 8443 and cfg.policy.renew_at_fraction == 0.66
    assert repr(cfg.auth) == "BasicAuth(username='estuser', password=<hidden>)"
    assert Config.parse(config(subject="CN=x,O=y")).subject.rfc4514_string() == "CN=x,O=y"
    for bad, message in [({"server": {"endpoint": "nohost"}}, "server.endpoint"),
                         ({"curve": "P-521"}, "curve"), ({"subject": {"XX": "1"}}, "unknown attribute"),
                         ({"sans": ["ip:not-an-ip"]}, "sans"), ({"renew_at_fraction": 1.5}, "renew_at_fraction"),
                         ({"subject": {}}, "must not be empty"), ({"timeout_s": 0}, "timeout_s"),
                         ({"deferral": {"max_delay_s": 60}}, "never shortened")]:
        with pytest.raises(ConfigError, match=message):
            Config.parse(config(**bad))


# ------------------------------------------------------------------------------ store
def test_store_is_atomic_encrypted_and_detects_tampering(tmp_path, ca):
    store = Store(tmp_path)
    assert store.load() is None
    key = generate_key()
    store.save(Persisted(key, None, (), (ca.certificate,)))
    loaded = store.load()
    assert loaded.key.private_numbers() == key.private_numbers() and loaded.ca_certs == (ca.certificate,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["est-kek.bin", "est-state.sealed"]
    assert (tmp_path / "est-kek.bin").stat().st_mode & 0o077 == 0
    raw = (tmp_path / "est-state.sealed").read_bytes()
    assert raw[:4] == b"L4ES" and b"CERTIFICATE" not in raw  # sealed whole, not only the key
    for offset in (10, 40, len(raw) - 1):  # header (generation), body, tag
        damaged = bytearray(raw)
        damaged[offset] ^= 1
        (tmp_path / "est-state.sealed").write_bytes(bytes(damaged))
        with pytest.raises(StoreError, match="wrong key-encryption key or the file was modified"):
            Store(tmp_path).load()
    (tmp_path / "est-state.sealed").write_bytes(raw)
    # A certificate that does not hold the stored key is refused too.
    store.save(Persisted(key, ca.certificate, (ca.certificate,), ()))
    with pytest.raises(StoreError, match="does not hold the stored key"):
        store.load()


def test_legacy_json_state_is_read_and_replaced_by_the_sealed_file(tmp_path, ca):
    import os as _os

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    key = generate_key()
    kek = AESGCM.generate_key(bit_length=256)
    (tmp_path / "est-kek.bin").write_bytes(kek)
    nonce = _os.urandom(12)
    der = key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
    sealed = AESGCM(kek).encrypt(nonce, der, b"l4emu est_service device key v1")
    doc = {"format": "l4emu-est-state", "version": 2,
           "key": {"alg": "AES-256-GCM", "nonce": base64.b64encode(nonce).decode(),
                   "ciphertext": base64.b64encode(sealed).decode()},
           "certificate": None, "chain": [], "ca_certs": [], "pending": None}
    (tmp_path / "est-state.json").write_text(json.dumps(doc))
    store = Store(tmp_path)
    assert store.exists()
    state = store.load()
    assert state.key.private_numbers() == key.private_numbers()
    store.save(state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["est-kek.bin", "est-state.sealed"]
    assert Store(tmp_path).load().key.private_numbers() == key.private_numbers()


def test_unusable_state_is_set_aside_and_reported(tmp_path, ca):
    (tmp_path / "est-state.json").write_text("{not json")
    lines = []
    svc = EstService(Config.parse(config()), TrustAnchors((ca.certificate,)), Store(tmp_path), log=lines.append,
                     transport_for=None)
    svc.load()
    assert not (tmp_path / "est-state.json").exists()
    assert len(list(tmp_path.glob("est-state.json.bad-*"))) == 1
    status = svc.status()
    assert status.error_code == 201 and "stored state unusable" in status.detail and status.cert_state is CertState.NONE


# ------------------------------------------------------------------------------ scheduling
@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> EstCa:
    return EstCa(tmp_path_factory.mktemp("ca"), validity=dt.timedelta(days=1))


@pytest.fixture(scope="module")
def running(ca):
    with serve(ca, "127.0.0.1", 0, ServerOptions(hang_limit=10)) as server:
        yield server


class Clock:
    """Stands still unless advanced. It starts a little ahead of the CA's clock: the CA issues
    with not_before = its own "now" (no backdating), which must not lie after ours."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(UTC) + dt.timedelta(seconds=30)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> dt.datetime:
        self.now += dt.timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def service(tmp_path, ca, running):
    proxy = Proxy(type("E", (), {"log": staticmethod(lambda text: None)})(), [f"127.0.0.1:{running.port}"])
    peer = ShmPeer("est", 16, None)
    cfg = Config.parse(config(running.port, renew_at_fraction=1e-6, min_reenroll_interval_s=60))
    trust = TrustAnchors((ca.certificate,))

    def transport_for(cert, key, chain):
        context = make_ssl_context(trust.anchors, client_cert=cert, client_key=key, client_chain=chain)
        return HttpTransport(proxy_connector(lambda raw: proxy.handle(peer, raw), cfg.endpoint, context,
                                             "127.0.0.1", timeout=cfg.timeout_s), timeout=cfg.timeout_s)

    clock = Clock()
    lines: list[str] = []
    svc = EstService(cfg, trust, Store(tmp_path), log=lines.append, transport_for=transport_for, clock=clock)
    svc.lines, svc.fake_clock = lines, clock
    yield svc
    running.release_hung()
    defaults = ServerOptions(hang_limit=10)
    running.update(**{f.name: getattr(defaults, f.name) for f in dataclasses.fields(ServerOptions)})


def test_enroll_then_reenroll_is_rate_limited(service):
    clock = service.fake_clock
    service.load()
    assert service.next_wakeup(clock()) <= clock()
    service.work(clock())
    first = service.renewal.certificate
    assert first is not None and service.successes == 1
    small = ShmPeer("gw", 16, type("R", (), {"size": 128})())
    status, payload = decode_response(service.handle(small, Request(Op.GET_CHAIN, Format.PEM).encode()))
    assert status is Status.TOO_LARGE and int.from_bytes(payload, "little") > 64
    # Renewal is due at once (fraction ~0), but not before min_reenroll_interval_s.
    assert service.next_wakeup(clock()) == clock() + dt.timedelta(seconds=60)
    service.work(clock())
    assert service.renewal.certificate is first
    service.work(clock.advance(61))
    second = service.renewal.certificate
    assert second.serial_number != first.serial_number and service.successes == 2
    assert second.subject == first.subject
    # A restart finds the renewed certificate and its (new) key.
    reloaded = service.store.load()
    assert reloaded.certificate == second and reloaded.key.private_numbers() == service.key.private_numbers()


def test_failures_back_off_and_keep_the_certificate(service, running):
    clock = service.fake_clock
    service.load()
    service.work(clock())
    cert = service.renewal.certificate
    running.update(fault=Fault.ROGUE_ISSUER)
    service.work(clock.advance(61))
    assert service.renewal.certificate is cert and service.renewal.failures == 1
    assert service.next_wakeup(clock()) == clock() + dt.timedelta(seconds=5)  # backoff.initial_s
    status = service.status()
    assert (status.error_code, status.activity, status.cert_state) == (ErrorKind.UNTRUSTED_CHAIN,
                                                                       Activity.BACKING_OFF, CertState.VALID)
    service.work(clock.advance(5))
    assert service.renewal.failures == 2
    assert service.next_wakeup(clock()) == clock() + dt.timedelta(seconds=10)
    assert service.store.load().certificate == cert
    running.update(fault=Fault.NONE)
    service.work(clock.advance(10))
    assert service.renewal.failures == 0 and service.renewal.certificate is not cert
    assert service.status().error_code == ErrorKind.UNTRUSTED_CHAIN, "the last error stays as history"


def test_refused_credentials_leave_no_certificate(service, running):
    running.update(basic_auth=("estuser", "other"))
    service.load()
    service.work(service.fake_clock())
    status = service.status()
    assert status.error_code == AUTH_REFUSED and status.http_status == 401
    assert "refused our credentials" in status.detail
    assert service.store.load().certificate is None, "only the pending key is stored"
    peer = ShmPeer("gw", 16, type("R", (), {"size": 64})())
    assert decode_response(service.handle(peer, Request(Op.GET_CERT).encode()))[0] is Status.NO_CERTIFICATE


# ------------------------------------------------------------------------------ real CAs
def restarted(service):
    """A new EstService on the same work directory (what a restart of the task does)."""
    again = EstService(service.cfg, service.trust, service.store, log=service.lines.append,
                       transport_for=service.transport_for, clock=service.fake_clock)
    again.lines, again.fake_clock = service.lines, service.fake_clock
    again.load()
    return again


def ops(running, first: int = 0) -> list[tuple[str, int]]:
    return [(r.path.rsplit("/", 1)[1], r.status) for r in running.records[first:]]


def test_rotated_issuing_ca_is_followed_at_renewal(service, running, ca):
    clock = service.fake_clock
    service.load()
    service.work(clock())
    old = service.renewal.certificate
    assert service.renewal.chain[1] == ca.issuing
    first = len(running.records)
    new_issuing = ca.rotate_issuing()
    service.work(clock.advance(61))
    new = service.renewal.certificate
    assert new is not old and new.issuer == new_issuing.subject, service.lines
    assert service.renewal.chain == (new, new_issuing, ca.certificate)
    assert ops(running, first) == [("cacerts", 200), ("simplereenroll", 200)]
    assert any(line.startswith("cacerts (before simplereenroll): now 2 CA certificate(s)") for line in service.lines)
    assert set(service.store.load().ca_certs) == {new_issuing, ca.certificate}


def test_untrusted_chain_refreshes_cacerts_and_rechecks_the_same_answer(service, running, ca):
    clock = service.fake_clock
    service.load()
    service.work(clock())
    running.update(defer=1, retry_after=30)
    service.work(clock.advance(61))             # /cacerts (old issuing CA), then 202
    assert service.attempt is not None
    new_issuing = ca.rotate_issuing()           # the CA moves on while the device waits
    first = len(running.records)
    service.work(clock.advance(30))             # the answer is from the new issuing CA
    assert service.renewal.certificate.issuer == new_issuing.subject, service.lines
    # One issuance: the refreshed /cacerts made the same answer check out; nothing was re-requested.
    assert ops(running, first) == [("simplereenroll", 200), ("cacerts", 200)]
    assert "simplereenroll: the answer does not chain with our 2 CA certificate(s): refreshing /cacerts" \
        in service.lines


def test_retry_after_is_honoured_in_full_and_survives_a_restart(service, running):
    clock = service.fake_clock
    running.update(defer=1, retry_after=7200)   # two hours: more than any old client-side cap
    service.load()
    start = clock()
    service.work(start)
    pending = service.store.load().pending
    assert pending is not None and pending.not_before == start + dt.timedelta(seconds=7200)
    assert service.next_wakeup(clock()) == start + dt.timedelta(seconds=7200)
    # The task restarts (kill -9, reboot): the same request, and not before Retry-After.
    again = restarted(service)
    assert again.pending.csr == pending.csr
    first = len(running.records)
    for _ in range(3):  # it wakes up (check_interval_s) but sends nothing before Retry-After
        wake = again.next_wakeup(clock())
        assert clock() < wake <= start + dt.timedelta(seconds=7200)
        again.work(clock.advance((wake - clock()).total_seconds() - 1))
    assert len(running.records) == first, "resent before the server's Retry-After"
    again.work(clock.advance((start + dt.timedelta(seconds=7200) - clock()).total_seconds()))
    cert = again.renewal.certificate
    assert cert is not None and cert.public_key() == pending.key.public_key(), again.lines
    assert "simpleenroll: resending the pending request (same key and CSR)" in again.lines
    assert again.store.load().pending is None


def test_deferred_reenrollment_keeps_its_new_key_across_a_restart(service, running):
    clock = service.fake_clock
    service.load()
    service.work(clock())
    old = service.renewal.certificate
    running.update(defer=1, retry_after=10)
    service.work(clock.advance(61))
    pending = service.store.load().pending
    assert pending.action.name == "REENROLL" and pending.for_serial == f"{old.serial_number:x}"
    assert pending.key.public_key() != service.key.public_key(), "rekey: a new key was made once"
    again = restarted(service)
    again.work(clock.advance(10))
    assert again.renewal.certificate.public_key() == pending.key.public_key(), again.lines


def test_401_on_any_path_is_answered_with_the_configured_credentials(service, running):
    running.update(basic_paths=frozenset({"cacerts", "simpleenroll", "simplereenroll"}))
    first = len(running.records)
    clock = service.fake_clock
    service.load()
    service.work(clock())
    service.work(clock.advance(61))
    assert service.successes == 2, service.lines
    assert ops(running, first) == [("cacerts", 401), ("cacerts", 200), ("simpleenroll", 200),
                            ("cacerts", 401), ("cacerts", 200), ("simplereenroll", 401),
                            ("simplereenroll", 200)]
    assert any("cacerts: the server asks for credentials (Basic realm=\"l4emu EST\"); answering with the "
               "configured HTTP Basic credentials (user estuser)" in line for line in service.lines)
    assert not any("none are configured" in line for line in service.lines)


def test_401_without_configured_credentials_says_so(tmp_path, ca, running):
    cfg = Config.parse({k: v for k, v in config(running.port).items() if k != "auth"})
    proxy = Proxy(type("E", (), {"log": staticmethod(lambda text: None)})(), [f"127.0.0.1:{running.port}"])
    peer = ShmPeer("est", 16, None)
    trust = TrustAnchors((ca.certificate,))

    def transport_for(cert, key, chain):
        context = make_ssl_context(trust.anchors, client_cert=cert, client_key=key, client_chain=chain)
        return HttpTransport(proxy_connector(lambda raw: proxy.handle(peer, raw), cfg.endpoint, context,
                                             "127.0.0.1", timeout=cfg.timeout_s), timeout=cfg.timeout_s)

    lines: list[str] = []
    svc = EstService(cfg, trust, Store(tmp_path), log=lines.append, transport_for=transport_for, clock=Clock())
    svc.load()
    svc.work(svc.clock())
    assert "none are configured" in svc.status().detail and "/simpleenroll" in svc.status().detail


def test_same_origin_307_is_followed(service, running):
    running.update(redirect_label="moved")
    first = len(running.records)
    service.load()
    service.work(service.fake_clock())
    assert service.successes == 1, service.lines
    assert ops(running, first) == [("cacerts", 307), ("cacerts", 200), ("simpleenroll", 307), ("simpleenroll", 200)]
    assert running.records[-1].path == "/.well-known/est/moved/simpleenroll"
    assert "simpleenroll: 307 redirect to /.well-known/est/moved/simpleenroll (same origin): following" \
        in service.lines


def test_new_cacerts_are_trusted_only_through_the_bootstrap_ta_or_the_current_valid_set(
        tmp_path, make_pki, now):
    bootstrap = make_pki("Bootstrap root")
    current = make_pki("Current issuing")      # held from an earlier /cacerts answer
    svc = EstService(Config.parse(config()), TrustAnchors((bootstrap.cert,)), Store(tmp_path),
                     log=lambda line: None, transport_for=None)
    svc.ca_certs = (current.cert,)
    successor = current.issue(generate_key().public_key(), ca=True)  # certified by the current set
    stranger = make_pki("Stranger").cert
    from tasks.est_service.trust import verify_ca_certs
    assert verify_ca_certs((successor,), svc._cacerts_trust(now), now) == (successor,)
    assert verify_ca_certs((stranger,), svc._cacerts_trust(now), now).kind is ErrorKind.UNTRUSTED_CHAIN
    # Once the current set has expired it vouches for nothing.
    later = current.cert.not_valid_after_utc + dt.timedelta(days=1)
    assert svc._cacerts_trust(later).anchors == (bootstrap.cert,)


def test_full_disk_is_a_local_error_for_clients_then_recovers_without_restart(service, tmp_path):
    from durable.faults import FaultyOps
    from protocols.est_service import LOCAL_ERROR

    ops = FaultyOps(full=True)
    service.store = Store(tmp_path, ops=ops)
    clock = service.fake_clock
    service.load()
    service.work(clock())
    assert service.renewal.certificate is None
    status = service.status()
    assert status.error_code == LOCAL_ERROR and "No space left on device" in status.detail
    assert any("FAILED" in line and "No space left on device" in line for line in service.lines)
    ops.full = False  # space is back: the next attempt (after the backoff) stores and enrolls
    clock.now = service.next_wakeup(clock())
    service.work(clock())
    assert service.renewal.certificate is not None
    assert Store(tmp_path).load().certificate == service.renewal.certificate
