"""The CA cannot be used to impersonate it: who gets which certificate, and who is a client.

Device certificates are clientAuth-only with a subject/SAN fixed by policy; only the CA's own
server certificate carries serverAuth and the server's names. Client certificates never abort
the handshake: anything that is not a current device certificate of this CA is "no client
identity". tls-unique (RFC 7030 §3.5) is checked when the CSR carries it over TLS 1.2.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import socket
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hil.est_ca import EstCa, serve
from tasks.est_service import protocol
from tasks.est_service.csr import build_csr, build_reenroll_csr, generate_key
from tasks.est_service.http_transport import HttpTransport, make_ssl_context, run_exchange
from tasks.est_service.messages import BasicAuth, EstServer
from tasks.est_service.results import AuthRequired, CaCerts, Enrolled, EstError
from tasks.est_service.trust import TrustAnchors

SERVER_NAMES = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.DNSName("localhost")]


def eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def status_of(outcome: object) -> tuple[int | None, str]:
    assert isinstance(outcome, EstError), outcome
    return outcome.status, outcome.detail


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def test_device_certificates_are_client_only_and_the_server_certificate_server_only(kit, est_ca):
    key = generate_key()
    # Ask for everything: serverAuth, a CA flag. Only the SAN is ever taken from a CSR.
    csr = (x509.CertificateSigningRequestBuilder().subject_name(name("gateway-0001"))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("gateway-0001.local")]), False)
           .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
           .sign(key, hashes.SHA256()))
    issued = kit.run(protocol.simpleenroll(kit.server(), kit.trust, csr, auth=kit.auth,
                                           ca_certs=kit.ca_certs))
    assert isinstance(issued, Enrolled), issued
    device = issued.certificate
    assert eku(device) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert device.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    server_cert = x509.load_pem_x509_certificates((est_ca.state_dir / "server.crt").read_bytes())[0]
    assert eku(server_cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    sans = list(server_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    assert all(n in sans for n in SERVER_NAMES)


@pytest.mark.parametrize(("cn", "sans", "why"), [
    ("l4emu EST server", [x509.DNSName("gw.local")], "CN='l4emu EST server' is the EST server's name"),
    ("gateway-0001", SERVER_NAMES[:1], "127.0.0.1 is a loopback"),
    ("gateway-0001", [x509.DNSName("LOCALHOST")], "is the EST server's name"),
    ("gateway-0001", [x509.DNSName("*.local")], "wildcard"),
    ("127.0.0.1", [], "CN='127.0.0.1' is the EST server's name"),
    ("gateway-0001", [x509.IPAddress(ipaddress.ip_address("::"))], "unspecified"),
])
def test_first_enrollment_cannot_name_the_server(kit, cn, sans, why):
    csr = build_csr(generate_key(), name(cn), sans)
    outcome = kit.run(protocol.simpleenroll(kit.server(), kit.trust, csr, auth=kit.auth))
    status, detail = status_of(outcome)
    assert status == 400 and "cannot name the EST server" in detail and why in detail


def test_a_device_certificate_cannot_get_a_server_certificate(kit, running):
    """The attack from the issue: only a device certificate, asking for the server's identity."""
    key, first = kit.enroll()
    assert isinstance(first, Enrolled)
    server_csr = build_csr(generate_key(), name("l4emu EST server"), SERVER_NAMES)
    as_device = kit.transport(cert=first.certificate, key=key)
    # The certificate does not stand in for HTTP Basic at /simpleenroll ...
    enroll = kit.run(protocol.simpleenroll(kit.server(), kit.trust, server_csr), as_device)
    assert isinstance(enroll, AuthRequired) and not enroll.credentials_sent
    # ... and re-enrollment keeps the device's own subject and SAN.
    reenroll = kit.reenroll(first.certificate, key, server_csr)
    assert status_of(reenroll)[0] == 400 and "Subject and SubjectAltName" in reenroll.detail
    assert [r.status for r in running.records] == [200, 401, 400]


def test_only_current_device_certificates_authenticate_reenrollment(kit, running, est_ca):
    key, first = kit.enroll()
    old = first.certificate
    second = kit.reenroll(old, key, build_reenroll_csr(key, old))
    assert isinstance(second, Enrolled)
    # Until the renewed certificate is used, the old one still works (a lost answer can be
    # asked for again) ...
    third = kit.reenroll(old, key, build_reenroll_csr(key, old))
    assert isinstance(third, Enrolled)
    # ... once the device authenticates with the newest, the older ones are retired.
    fourth = kit.reenroll(third.certificate, key, build_reenroll_csr(key, third.certificate))
    assert isinstance(fourth, Enrolled)
    for stale in (old, second.certificate):
        outcome = kit.reenroll(stale, key, build_reenroll_csr(key, stale))
        assert status_of(outcome)[0] == 403 and "superseded" in outcome.detail
    # The CA's own server certificate is no device identity either.
    chain = x509.load_pem_x509_certificates((est_ca.state_dir / "server.crt").read_bytes())
    server_key = load_pem_private_key((est_ca.state_dir / "server.key").read_bytes(), None)
    outcome = kit.reenroll(chain[0], server_key, build_reenroll_csr(server_key, chain[0]))
    assert status_of(outcome)[0] == 403 and "EKU is not clientAuth only" in outcome.detail


def test_expired_device_certificate_is_no_identity_but_no_handshake_abort(tmp_path):
    start = dt.datetime.now(dt.UTC).replace(microsecond=0)
    clock = [start]
    ca = EstCa(tmp_path / "ca", validity=dt.timedelta(days=1), clock=lambda: clock[0])
    with serve(ca) as running:
        trust = (ca.certificate,)
        server = EstServer("127.0.0.1", running.port)
        anchors = TrustAnchors(trust)
        key = generate_key()
        csr = build_csr(key, name("gateway-0001"))

        def transport(**kw):
            return HttpTransport.tls("127.0.0.1", running.port, make_ssl_context(trust, **kw))

        first = run_exchange(protocol.simpleenroll(server, anchors, csr, auth=BasicAuth(
            "estuser", "estpwd"), ca_certs=ca.ca_certificates), transport())
        assert isinstance(first, Enrolled)
        clock[0] = start + dt.timedelta(days=2)  # the CA's clock: the device certificate expired
        as_device = transport(client_cert=first.certificate, client_key=key)
        assert isinstance(run_exchange(protocol.cacerts(server, anchors), as_device), CaCerts)
        outcome = run_exchange(protocol.simplereenroll(
            server, anchors, build_reenroll_csr(key, first.certificate)),
            transport(client_cert=first.certificate, client_key=key))
        assert status_of(outcome)[0] == 403 and "outside its validity period" in outcome.detail
        assert [r.status for r in running.records] == [200, 200, 403]


def _tls12_enroll(kit, challenge: bytes | None, *, tls12: bool = True):
    context = make_ssl_context(kit.trust.anchors)
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", kit.running.port)),
                               server_hostname="127.0.0.1")
    unique = sock.get_channel_binding("tls-unique")
    assert unique is not None  # TLS 1.2
    value = base64.b64encode(challenge if challenge is not None else unique).decode()
    csr = build_csr(generate_key(), name("gateway-0001"), challenge_password=value)
    return run_exchange(protocol.simpleenroll(kit.server(), kit.trust, csr, auth=kit.auth,
                                              ca_certs=kit.ca_certs),
                        HttpTransport(lambda: sock, timeout=10))


def test_tls_unique_proof_of_possession_over_tls12(kit, running):
    assert isinstance(_tls12_enroll(kit, None), Enrolled)
    assert running.records[-1].outcome.endswith("(tls-unique verified)")
    wrong = _tls12_enroll(kit, b"\x00" * 12)
    assert status_of(wrong)[0] == 400 and "tls-unique" in wrong.detail
    assert running.records[-1].outcome == "tls-unique mismatch"
    # TLS 1.3 has no tls-unique (RFC 9266): the value cannot be checked, and the log says so.
    assert isinstance(_tls12_enroll(kit, b"\x00" * 12, tls12=False), Enrolled)
    assert "challengePassword not checked: tls-unique is undefined for TLSv1.3" in \
        running.records[-1].outcome
