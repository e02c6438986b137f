"""TLS over the network proxy's byte-stream protocol, without booting: the proxy's request
handler (tasks/netproxy/task.py) runs in-process as the ``transact`` function, against the real
development EST CA. The same code runs inside est_service over kernel IPC (test_est_task_e2e).
"""
from __future__ import annotations

import datetime as dt
import time

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from hil.est_ca import EstCa, Fault, ServerOptions, serve
from protocols.netproxy import Op, Request
from tasks.est_service import protocol
from tasks.est_service.csr import build_csr, build_reenroll_csr, generate_key
from tasks.est_service.http_transport import HttpTransport, make_ssl_context
from tasks.est_service.messages import BasicAuth, EstServer
from tasks.est_service.results import CaCerts, Enrolled, ErrorKind, EstError
from tasks.est_service.tls_stream import ProxyStream, proxy_connector
from tasks.est_service.trust import TrustAnchors
from tasks.netproxy.task import Proxy
from tasks.runtime.shm import ShmPeer

UTC = dt.UTC


class _Env:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, text: str) -> None:
        self.lines.append(text)


class InProcessProxy:
    """The proxy's handler as a ``transact`` callable; records the requests it saw."""

    def __init__(self, allowed: list[str]) -> None:
        self.env = _Env()
        self.proxy = Proxy(self.env, allowed)
        self.peer = ShmPeer("est", 16, None)  # type: ignore[arg-type]  # the handler never touches it
        self.ops: list[int] = []
        self.sent = bytearray()

    def transact(self, raw: bytes) -> bytes:
        self.ops.append(raw[0])
        if raw[0] == Op.SEND:
            self.sent += raw[1:]
        return self.proxy.handle(self.peer, raw)

    def close(self) -> None:
        self.proxy._close(self.peer)


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> EstCa:
    return EstCa(tmp_path_factory.mktemp("ca"), validity=dt.timedelta(days=1))


@pytest.fixture(scope="module")
def running(ca):
    with serve(ca, "127.0.0.1", 0, ServerOptions(hang_limit=10)) as server:
        yield server


@pytest.fixture
def server(running):
    yield running
    running.update(fault=Fault.NONE, defer=0)


@pytest.fixture
def proxy(running):
    p = InProcessProxy([f"127.0.0.1:{running.port}"])
    yield p
    p.close()


def transport(ca, running, proxy, *, timeout=3.0, idle=None, trust=None, endpoint=None,
              client=None) -> HttpTransport:
    anchors = (trust or ca.certificate,)
    cert, key = client or (None, None)
    context = make_ssl_context(anchors, client_cert=cert, client_key=key)
    connect = proxy_connector(proxy.transact, endpoint or f"127.0.0.1:{running.port}", context, "127.0.0.1",
                              timeout=timeout, idle=idle)
    return HttpTransport(connect, timeout=timeout)  # type: ignore[arg-type]  # TlsOverProxy: a duck-typed socket


def est_server(running) -> EstServer:
    return EstServer("127.0.0.1", running.port)


def run(exchange, t):
    response = t.send(exchange.request)
    if isinstance(response, EstError):
        return exchange.fail(response)
    return exchange.receive(response, dt.datetime.now(UTC))


def csr():
    key = generate_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway-0001")])
    return key, build_csr(key, name, [x509.DNSName("gateway-0001.local")])


def test_enroll_and_reenroll_over_the_proxy_stream(ca, server, proxy):
    trust = TrustAnchors((ca.certificate,))
    outcome = run(protocol.cacerts(est_server(server), trust), transport(ca, server, proxy))
    assert isinstance(outcome, CaCerts)
    key, request = csr()
    enrolled = run(protocol.simpleenroll(est_server(server), trust, request, auth=BasicAuth("estuser", "estpwd"),
                                         ca_certs=outcome.certificates),
                   transport(ca, server, proxy))
    assert isinstance(enrolled, Enrolled)
    # Re-enroll with TLS client auth: the certificate and key go into our TLS, not to the proxy.
    renewed = run(protocol.simplereenroll(est_server(server), trust, build_reenroll_csr(key, enrolled.certificate),
                                          ca_certs=outcome.certificates),
                  transport(ca, server, proxy, client=(enrolled.certificate, key)))
    assert isinstance(renewed, Enrolled), renewed
    assert server.records[-1].client.startswith("cert:CN=gateway-0001 serial=")
    # The proxy only ever moved TLS records: no HTTP text, no Authorization header in the clear.
    assert b"simpleenroll" not in proxy.sent and b"Authorization" not in proxy.sent
    assert proxy.sent[:1] == b"\x16"  # a TLS handshake record


@pytest.mark.parametrize(("fault", "kind"), [
    (Fault.HANG, ErrorKind.TIMEOUT),
    (Fault.CLOSE_MID_RESPONSE, ErrorKind.CONNECTION_CLOSED),
    (Fault.MALFORMED_PKCS7, ErrorKind.MALFORMED_PKCS7),
])
def test_faults_are_typed_errors_within_the_timeout(ca, server, proxy, fault, kind):
    server.update(fault=fault)
    idles = []
    outcome = run(protocol.cacerts(est_server(server), TrustAnchors((ca.certificate,))),
                  transport(ca, server, proxy, timeout=0.6, idle=lambda: idles.append(1)))
    assert isinstance(outcome, EstError) and outcome.kind is kind, outcome
    if fault is Fault.HANG:
        assert len(idles) >= 3, "idle() runs between proxy reads while the server is silent"
    assert proxy.peer.label not in proxy.proxy.streams, "the stream is closed after every exchange"


def test_wrong_trust_anchor_fails_the_handshake(ca, server, proxy, tmp_path):
    stranger = EstCa(tmp_path / "stranger").certificate
    outcome = run(protocol.cacerts(est_server(server), TrustAnchors((stranger,))),
                  transport(ca, server, proxy, trust=stranger))
    assert isinstance(outcome, EstError) and outcome.kind is ErrorKind.TLS_FAILED
    assert "certificate verify failed" in outcome.detail


def test_denied_endpoint_and_dead_proxy_are_connect_failures(ca, server, proxy):
    t = transport(ca, server, proxy, endpoint=f"127.0.0.1:{server.port + 1}")
    outcome = run(protocol.cacerts(est_server(server), TrustAnchors((ca.certificate,))), t)
    assert outcome.kind is ErrorKind.CONNECT_FAILED and "DENIED" in outcome.detail

    def dead(raw: bytes) -> bytes:
        raise OSError("IPC: ENOT_EXISTENT")

    context = make_ssl_context((ca.certificate,))
    t = HttpTransport(proxy_connector(dead, "127.0.0.1:1", context, "127.0.0.1", timeout=1), timeout=1)
    outcome = run(protocol.cacerts(est_server(server), TrustAnchors((ca.certificate,))), t)
    assert outcome.kind is ErrorKind.CONNECT_FAILED and "network proxy unreachable" in outcome.detail


def test_proxy_stream_chunks_sends_to_the_shared_area():
    sent = []

    def transact(raw: bytes) -> bytes:
        sent.append(raw)
        return b"\x00"

    stream = ProxyStream(transact, area=101)
    stream.connect("h:1")
    stream.send(bytes(250))
    assert [len(r) - 1 for r in sent[1:]] == [100, 100, 50]
    assert Request(Op.CONNECT, endpoint="h:1").encode() == sent[0]


def test_recv_deadline_raises_timeout_without_a_server():
    def transact(raw: bytes) -> bytes:
        return b"\x04" if raw[0] == Op.RECV else b"\x00"  # TIMEOUT for every RECV

    stream = ProxyStream(transact, slice_ms=1)
    stream.connect("h:1")
    with pytest.raises(TimeoutError):
        stream.recv(time.monotonic() + 0.05)
