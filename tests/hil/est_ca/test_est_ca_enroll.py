"""Our EST client (protocol core + http_transport) against the development CA over TLS."""

from __future__ import annotations

import datetime as dt
import logging
import threading

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from hil.est_ca import EstCa, Fault, ServerOptions
from protocols.csrattrs import OID_SECP256R1
from tasks.est_service import protocol
from tasks.est_service.csr import build_csr, build_reenroll_csr, generate_key, same_identity
from tasks.est_service.messages import BasicAuth, HttpRequest
from tasks.est_service.results import (
    AuthRequired,
    CaCerts,
    CsrAttributes,
    Enrolled,
    ErrorKind,
    EstError,
)
from tasks.est_service.trust import TrustAnchors


def kind_of(outcome: object) -> ErrorKind:
    assert isinstance(outcome, EstError), outcome
    return outcome.kind


def test_cacerts_and_csrattrs(kit) -> None:
    answer = kit.run(protocol.cacerts(kit.server(), kit.trust))
    # A CMS SET OF is DER-sorted: the order on the wire is not ours to choose.
    assert isinstance(answer, CaCerts)
    assert set(answer.certificates) == {kit.ca.issuing, kit.ca.certificate}
    attrs = kit.run(protocol.csrattrs(kit.server()))
    assert isinstance(attrs, CsrAttributes) and attrs.attrs.requested_curve == OID_SECP256R1


def test_enroll_then_reenroll_with_the_tls_client_certificate(kit, running) -> None:
    key, first = kit.enroll()
    assert isinstance(first, Enrolled)
    assert first.chain == (first.certificate, kit.ca.issuing, kit.ca.certificate)
    assert first.certificate.subject.rfc4514_string() == "CN=gateway-0001"
    validity = first.certificate.not_valid_after_utc - first.certificate.not_valid_before_utc
    assert validity == dt.timedelta(days=7)

    new_key = generate_key()
    csr = build_reenroll_csr(new_key, first.certificate)
    second = kit.reenroll(first.certificate, key, csr)
    assert isinstance(second, Enrolled)
    assert second.certificate.serial_number != first.certificate.serial_number
    assert second.certificate.public_key() == new_key.public_key()
    assert second.certificate.subject.public_bytes() == first.certificate.subject.public_bytes()
    assert same_identity(csr, second.certificate)
    assert [r.client.split(" ")[0] for r in running.records] == [
        "basic:estuser", f"cert:{first.certificate.subject.rfc4514_string()}"]


def test_401_without_or_with_wrong_credentials(kit) -> None:
    _, csr = kit.csr()
    none = kit.run(protocol.simpleenroll(kit.server(), kit.trust, csr))
    assert none == AuthRequired('Basic realm="l4emu EST"', credentials_sent=False)
    wrong = kit.run(protocol.simpleenroll(kit.server(), kit.trust, csr,
                                          auth=BasicAuth("estuser", "guess")))
    assert wrong == AuthRequired('Basic realm="l4emu EST"', credentials_sent=True)


def test_reenroll_rules(kit) -> None:
    key, first = kit.enroll()
    # No client certificate: refused even with Basic credentials.
    csr = build_reenroll_csr(generate_key(), first.certificate)
    anonymous = kit.run(protocol.simplereenroll(kit.server(), kit.trust, csr, auth=kit.auth))
    assert kind_of(anonymous) is ErrorKind.HTTP_STATUS and anonymous.status == 403
    # Changed subject, or dropped SAN: 400 (RFC 7030 §4.2.2).
    other = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway-0002")])
    for changed in (build_csr(key, other, [x509.DNSName("gateway-0001.local")]),
                    build_csr(key, first.certificate.subject)):
        outcome = kit.reenroll(first.certificate, key, changed)
        assert kind_of(outcome) is ErrorKind.HTTP_STATUS and outcome.status == 400
        assert "Subject and SubjectAltName" in outcome.detail


def test_client_certificate_from_another_ca_is_no_client_identity(kit, running, tmp_path) -> None:
    """A manufacturer IDevID (or any foreign certificate) does not abort the handshake: /cacerts
    and Basic enrollment work with it, and it authenticates nothing."""
    stranger = EstCa(tmp_path / "stranger")
    key, csr = kit.csr()
    foreign = stranger.issue(csr)
    assert isinstance(foreign, x509.Certificate), foreign
    as_stranger = kit.transport(cert=foreign, key=key)
    assert isinstance(kit.run(protocol.cacerts(kit.server(), kit.trust), as_stranger), CaCerts)
    enrolled = kit.run(protocol.simpleenroll(kit.server(), kit.trust, csr, auth=kit.auth,
                                             ca_certs=kit.ca_certs), kit.transport(cert=foreign, key=key))
    assert isinstance(enrolled, Enrolled)
    outcome = kit.reenroll(foreign, key, build_reenroll_csr(key, foreign))
    assert kind_of(outcome) is ErrorKind.HTTP_STATUS and outcome.status == 403
    assert "not issued by this CA" in outcome.detail
    assert [r.status for r in running.records] == [200, 200, 403]
    assert all("client cert ignored: CN=gateway-0001: not issued by this CA" in r.client
               for r in running.records)


def test_server_not_matching_the_trust_anchor_fails_tls(kit, tmp_path) -> None:
    wrong = TrustAnchors((EstCa(tmp_path / "other").certificate,))
    outcome = kit.run(protocol.cacerts(kit.server(), wrong), kit.transport(trust=wrong))
    assert kind_of(outcome) is ErrorKind.TLS_FAILED
    assert "certificate verify failed" in outcome.detail


@pytest.mark.parametrize("http_date", [False, True], ids=["seconds", "http-date"])
def test_deferred_enrollment(kit, running, http_date: bool) -> None:
    running.update(defer=2, retry_after=5, retry_after_http_date=http_date)
    slept: list[float] = []
    clock = [dt.datetime.now(dt.UTC)]

    def sleep(seconds: float) -> None:  # nobody sleeps: the injected clock jumps instead
        slept.append(seconds)
        if not http_date:
            clock[0] += dt.timedelta(seconds=seconds)

    # With an HTTP-date the server's wall clock matters, so keep the real clock there.
    now = (lambda: clock[0]) if not http_date else (lambda: dt.datetime.now(dt.UTC))
    _, csr = kit.csr()
    outcome = kit.run(protocol.simpleenroll(kit.server(), kit.trust, csr, auth=kit.auth,
                                            ca_certs=kit.ca_certs), clock=now, sleep=sleep)
    assert isinstance(outcome, Enrolled)
    if http_date:  # whole seconds on the wire: 5 s from "now" is between 4 and 5 s away
        assert len(slept) == 2 and all(3.0 <= s <= 5.0 for s in slept), slept
    else:
        assert slept == [5.0, 5.0]
    assert [r.status for r in running.records] == [202, 202, 200]
    assert [r.outcome for r in running.records[:2]] == ["deferred 1/2", "deferred 2/2"]


def test_deferral_limit_reached(kit, running) -> None:
    running.update(defer=5)
    _, csr = kit.csr()
    exchange = protocol.simpleenroll(kit.server(), kit.trust, csr, auth=kit.auth,
                                     limits=protocol.DeferralLimits(max_deferrals=1))
    outcome = kit.run(exchange, sleep=lambda s: None)
    assert kind_of(outcome) is ErrorKind.TOO_MANY_DEFERRALS


@pytest.mark.parametrize("options", [ServerOptions(labels=frozenset({"gw"}))])
def test_ca_labels(kit) -> None:
    _, csr = kit.csr()
    labelled = protocol.simpleenroll(kit.server("gw"), kit.trust, csr, auth=kit.auth,
                                     ca_certs=kit.ca_certs)
    assert isinstance(kit.run(labelled), Enrolled)
    unknown = kit.run(protocol.cacerts(kit.server("other"), kit.trust))
    assert kind_of(unknown) is ErrorKind.HTTP_STATUS and unknown.status == 404
    assert "unknown CA label" in unknown.detail


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (Fault.HANG, ErrorKind.TIMEOUT),
        (Fault.CLOSE_MID_RESPONSE, ErrorKind.CONNECTION_CLOSED),
        (Fault.MALFORMED_PKCS7, ErrorKind.MALFORMED_PKCS7),
        (Fault.WRONG_CONTENT_TYPE, ErrorKind.WRONG_CONTENT_TYPE),
        (Fault.PEM_ARMOUR, ErrorKind.PEM_ARMOUR),
        (Fault.ROGUE_ISSUER, ErrorKind.UNTRUSTED_CHAIN),
    ],
)
def test_faults_become_typed_errors(kit, running, fault: Fault, kind: ErrorKind) -> None:
    running.update(fault=fault)
    _, csr = kit.csr()
    exchange = protocol.simpleenroll(kit.server(), kit.trust, csr, auth=kit.auth)
    outcome = kit.run(exchange, kit.transport(timeout=0.5))
    assert kind_of(outcome) is kind
    assert exchange.state is protocol.State.FAILED


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "text"),
    [
        ("POST", "/.well-known/est/simpleenroll", (("Content-Type", "application/pkcs10"),),
         b"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n",
         400, "PEM armour is not allowed"),
        ("POST", "/.well-known/est/simpleenroll", (("Content-Type", "text/plain"),), b"MIIB",
         415, "expected Content-Type application/pkcs10"),
        ("POST", "/.well-known/est/simpleenroll", (("Content-Type", "application/pkcs10"),),
         b"not base64 at all", 400, "not a base64 DER PKCS#10"),
        ("GET", "/.well-known/est/simpleenroll", (), b"", 405, "simpleenroll takes POST"),
        ("GET", "/.well-known/est/serverkeygen", (), b"", 404, "unknown EST operation"),
        ("GET", "/index.html", (), b"", 404, "not an EST path"),
        ("GET", "/.well-known/est/a/b/cacerts", (), b"", 404, "unknown EST path"),
    ],
)
def test_server_rejects_bad_requests(kit, method, path, headers, body, status, text) -> None:
    auth = (("Authorization", kit.auth.header_value()),)
    request = HttpRequest(method, path, (("Host", "127.0.0.1"),) + auth + headers, body)
    response = kit.transport().send(request)
    assert response.status == status
    assert text in response.body.decode()
    assert response.header("Content-Type").startswith("text/plain")


def test_one_log_line_per_request_without_secrets(kit, caplog) -> None:
    caplog.set_level(logging.INFO, logger="l4emu.est_ca")
    kit.run(protocol.cacerts(kit.server(), kit.trust))
    kit.enroll()
    lines = [r.getMessage() for r in caplog.records if r.name == "l4emu.est_ca"]
    assert len(lines) == 2
    assert lines[0].startswith("GET /.well-known/est/cacerts peer=127.0.0.1:")
    assert "client=anonymous -> 200 sent 2 CA certificates" in lines[0]
    assert "POST /.well-known/est/simpleenroll" in lines[1]
    assert "client=basic:estuser -> 200 issued serial=" in lines[1]
    assert "estpwd" not in caplog.text


def test_parallel_enrollments(kit) -> None:
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(kit.enroll()[1]))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 6 and all(isinstance(r, Enrolled) for r in results)
    assert len({r.certificate.serial_number for r in results if isinstance(r, Enrolled)}) == 6


def test_log_lines_cannot_be_forged(kit, running, caplog) -> None:
    caplog.set_level(logging.INFO, logger="l4emu.est_ca")
    _, csr = kit.csr()
    evil = BasicAuth("mallory\nPOST /.well-known/est/simpleenroll client=admin -> 200", "x")
    kit.run(protocol.simpleenroll(kit.server(), kit.trust, csr, auth=evil))
    [record] = [r for r in caplog.records if r.name == "l4emu.est_ca"]
    assert "\n" not in record.getMessage()
    assert "client=basic:mallory\\x0aPOST" in record.getMessage()
    assert running.records[-1].status == 401


def test_internal_error_is_a_500_and_a_log_line(kit, running, est_ca, monkeypatch) -> None:
    def broken(csr, validity=None):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(est_ca, "issue", broken)
    _, outcome = kit.enroll()
    assert kind_of(outcome) is ErrorKind.HTTP_STATUS and outcome.status == 500
    assert outcome.detail == "internal error: RuntimeError"
    assert (running.records[-1].status, running.records[-1].outcome) == (
        500, "internal error: RuntimeError")


def test_release_hung_ends_hanging_requests_and_records_them(kit, running) -> None:
    running.update(fault=Fault.HANG, hang_limit=600)
    outcome = kit.run(protocol.cacerts(kit.server(), kit.trust), kit.transport(timeout=0.5))
    assert kind_of(outcome) is ErrorKind.TIMEOUT
    running.update(fault=Fault.NONE)
    running.release_hung()  # returns once the hung request has been recorded, long before 600 s
    assert [(r.status, r.outcome) for r in running.records] == [
        (0, "hung up without answering (fault HANG)")]
