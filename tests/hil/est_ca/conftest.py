"""Fixtures for the development EST CA tests: a CA in a temporary state directory, served
in-process on a free loopback port, and a small client kit built on our protocol core.

Servers start with port 0 and are ready when `serve()` returns (the socket is listening),
so no test sleeps or polls.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hil.est_ca import EstCa, RunningServer, ServerOptions, serve
from tasks.est_service import protocol
from tasks.est_service.csr import build_csr, generate_key
from tasks.est_service.http_transport import HttpTransport, make_ssl_context, run_exchange
from tasks.est_service.messages import BasicAuth, EstServer
from tasks.est_service.results import Outcome
from tasks.est_service.trust import TrustAnchors

AUTH = BasicAuth("estuser", "estpwd")


@dataclass
class Kit:
    """Our EST client (protocol core + blocking TLS shell) pointed at a running CA."""

    running: RunningServer
    ca: EstCa
    auth: BasicAuth = AUTH

    @property
    def trust(self) -> TrustAnchors:
        # The bootstrap trust anchor is read from the file the CA hands out.
        return TrustAnchors((x509.load_pem_x509_certificate(self.ca.ca_cert_path.read_bytes()),))

    def server(self, label: str | None = None) -> EstServer:
        return EstServer("127.0.0.1", self.running.port, label)

    def transport(self, *, cert: x509.Certificate | None = None,
                  key: ec.EllipticCurvePrivateKey | None = None,
                  trust: TrustAnchors | None = None, timeout: float = 5.0) -> HttpTransport:
        anchors = (trust or self.trust).anchors
        context = make_ssl_context(anchors, client_cert=cert, client_key=key)
        return HttpTransport.tls("127.0.0.1", self.running.port, context, timeout=timeout)

    def run(self, exchange: protocol.Exchange, transport: HttpTransport | None = None,
            **kwargs) -> Outcome:
        return run_exchange(exchange, transport or self.transport(), **kwargs)

    def csr(self, cn: str = "gateway-0001", sans: tuple[x509.GeneralName, ...] = (
            x509.DNSName("gateway-0001.local"),), key: ec.EllipticCurvePrivateKey | None = None
            ) -> tuple[ec.EllipticCurvePrivateKey, x509.CertificateSigningRequest]:
        key = key or generate_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        return key, build_csr(key, subject, sans)

    @property
    def ca_certs(self) -> tuple[x509.Certificate, ...]:
        """What /cacerts answers (issuing CA, root): the intermediates a client has."""
        return tuple(self.ca.ca_certificates)

    def enroll(self, **csr_kwargs) -> tuple[ec.EllipticCurvePrivateKey, Outcome]:
        key, csr = self.csr(**csr_kwargs)
        return key, self.run(protocol.simpleenroll(self.server(), self.trust, csr,
                                                   auth=self.auth, ca_certs=self.ca_certs))

    def reenroll(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey,
                 csr: x509.CertificateSigningRequest, **kwargs) -> Outcome:
        """/simplereenroll with ``cert``/``key`` as the TLS client certificate."""
        kwargs.setdefault("ca_certs", self.ca_certs)
        return self.run(protocol.simplereenroll(self.server(), self.trust, csr, **kwargs),
                        self.transport(cert=cert, key=key))


@pytest.fixture
def est_ca(tmp_path) -> EstCa:
    # The CA's clock is injected and stands still: everything it issues in a test has the same
    # "now", so validity periods are exact however slow the machine (a real clock can cross a
    # second between creating the CA and issuing from it). It is the real time of the fixture's
    # creation, so TLS peers checking against the wall clock accept the certificates.
    frozen = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return EstCa(tmp_path / "est-ca", validity=dt.timedelta(days=7), clock=lambda: frozen)


@pytest.fixture
def options() -> ServerOptions:
    """Override in a test module (or parametrize) to serve with other options."""
    return ServerOptions()


@pytest.fixture
def running(est_ca: EstCa, options: ServerOptions) -> Iterator[RunningServer]:
    with serve(est_ca, "127.0.0.1", 0, options) as server:
        yield server


@pytest.fixture
def kit(running: RunningServer, est_ca: EstCa) -> Kit:
    return Kit(running, est_ca)


@pytest.fixture
def tools() -> None:
    """The interop tests need Debian's curl and openssl (./bootstrap.sh installs both)."""
    missing = [tool for tool in ("curl", "openssl") if shutil.which(tool) is None]
    assert not missing, f"{', '.join(missing)} not installed: run ./bootstrap.sh"
