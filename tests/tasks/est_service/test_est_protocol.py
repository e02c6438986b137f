"""Golden HTTP exchanges for the sans-I/O EST client core (RFC 7030).

Canned responses come from golden/ (bodies written by the openssl CLI) or are built here
from a throwaway PKI; ``now`` is injected, so nothing depends on the wall clock.
"""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from protocols.csrattrs import OID_CHALLENGE_PASSWORD, OID_SECP384R1
from tasks.est_service.codec import encode_base64_body, encode_certs_only
from tasks.est_service.csr import build_csr, generate_key
from tasks.est_service.messages import BasicAuth, EstServer, HttpResponse
from tasks.est_service.protocol import (
    TRANSITIONS,
    DeferralLimits,
    Event,
    Exchange,
    ProtocolMisuse,
    State,
    cacerts,
    csrattrs,
    parse_retry_after,
    simpleenroll,
    simplereenroll,
)
from tasks.est_service.results import (
    AuthRequired,
    CaCerts,
    CsrAttributes,
    Deferred,
    Enrolled,
    ErrorKind,
    EstError,
    Redirected,
)
from tasks.est_service.trust import TrustAnchors

SERVER = EstServer("est.example", 8443)
PKCS7_CERTS_ONLY = "application/pkcs7-mime; smime-type=certs-only"
AUTH = BasicAuth("estuser", "estpwd")


def ok(body: bytes, content_type: str | None = PKCS7_CERTS_ONLY) -> HttpResponse:
    headers = (("Content-Type", content_type),) if content_type else ()
    return HttpResponse(200, headers + (("Content-Transfer-Encoding", "base64"),), body)


def certs_body(*certs: x509.Certificate) -> bytes:
    return encode_base64_body(encode_certs_only(certs))


def enroll(golden, **kwargs) -> Exchange:
    return simpleenroll(SERVER, golden.trust, golden.csr, **kwargs)


def error_kind(outcome: object) -> ErrorKind:
    assert isinstance(outcome, EstError), outcome
    return outcome.kind


# -- requests ---------------------------------------------------------------------------------

def test_cacerts_request_is_golden(golden) -> None:
    exchange = cacerts(SERVER, golden.trust)
    assert exchange.request.to_wire() == (
        b"GET /.well-known/est/cacerts HTTP/1.1\r\n"
        b"Host: est.example:8443\r\n"
        b"User-Agent: l4emu-est/0.1\r\n"
        b"Accept: application/pkcs7-mime\r\n"
        b"Connection: close\r\n"
        b"\r\n"
    )


def test_simpleenroll_request_is_golden(golden) -> None:
    request = enroll(golden, auth=AUTH).request
    body = golden.bytes("device.csr.b64")  # `openssl base64` of the DER CSR: 64 columns
    assert (request.method, request.target) == ("POST", "/.well-known/est/simpleenroll")
    assert request.headers == (
        ("Host", "est.example:8443"),
        ("User-Agent", "l4emu-est/0.1"),
        ("Accept", "application/pkcs7-mime"),
        ("Authorization", "Basic ZXN0dXNlcjplc3Rwd2Q="),
        ("Content-Type", "application/pkcs10"),
        ("Content-Transfer-Encoding", "base64"),
        ("Connection", "close"),
    )
    assert request.body == body
    assert b"-----" not in request.body
    assert request.to_wire().endswith(b"Content-Length: %d\r\n\r\n" % len(body) + body)


def test_label_and_reenroll_request(golden) -> None:
    server = EstServer("est.example", 443, "gw")
    request = simplereenroll(server, golden.trust, golden.csr).request
    assert request.target == "/.well-known/est/gw/simplereenroll"
    assert request.header("Host") == "est.example"
    assert request.header("Authorization") is None  # re-enroll authenticates with TLS


# -- /cacerts ---------------------------------------------------------------------------------

@pytest.mark.parametrize("body_file", ["cacerts.b64", "cacerts.nolf.b64"])
@pytest.mark.parametrize("content_type", [PKCS7_CERTS_ONLY, "application/pkcs7-mime"])
def test_cacerts_accepts_wrapped_and_unwrapped_base64(golden, body_file: str,
                                                      content_type: str, now) -> None:
    exchange = cacerts(SERVER, golden.trust)
    body = golden.bytes(body_file).rstrip(b"\n")
    assert (b"\n" in body) == (body_file == "cacerts.b64")
    outcome = exchange.receive(ok(body, content_type), now)
    assert outcome == CaCerts((golden.ta,))
    assert exchange.state is State.DONE


def test_cacerts_from_a_foreign_ca_is_untrusted(golden, pki, now) -> None:
    outcome = cacerts(SERVER, golden.trust).receive(ok(certs_body(pki.cert)), now)
    assert error_kind(outcome) is ErrorKind.UNTRUSTED_CHAIN


def test_cacerts_with_intermediate_and_one_foreign_cert_spoils_it(pki, now, subject,
                                                                  make_pki) -> None:
    sub_key = ec.generate_private_key(ec.SECP256R1())
    sub = pki.issue(sub_key.public_key(), subject("Sub CA"), ca=True)
    trust = TrustAnchors((pki.cert,))
    good = cacerts(SERVER, trust).receive(ok(certs_body(sub, pki.cert)), now)
    assert isinstance(good, CaCerts) and set(good.certificates) == {sub, pki.cert}
    stranger = make_pki("Stranger").cert
    bad = cacerts(SERVER, trust).receive(ok(certs_body(sub, stranger)), now)
    assert error_kind(bad) is ErrorKind.UNTRUSTED_CHAIN


def test_cacerts_202_is_not_a_deferral(golden, now) -> None:
    outcome = cacerts(SERVER, golden.trust).receive(
        HttpResponse(202, (("Retry-After", "5"),), reason="Accepted"), now)
    assert error_kind(outcome) is ErrorKind.HTTP_STATUS


def test_trust_anchors_cannot_be_empty() -> None:
    with pytest.raises(ValueError, match="no 'trust all'"):
        TrustAnchors(())


# -- /simpleenroll: success -------------------------------------------------------------------

@pytest.mark.parametrize("body_file", ["enroll.b64", "enroll.nolf.b64"])
def test_enroll_success(golden, body_file: str, now) -> None:
    exchange = enroll(golden, auth=AUTH)
    outcome = exchange.receive(ok(golden.bytes(body_file)), now)
    device = golden.cert("device.crt.pem")
    assert outcome == Enrolled(device, (device, golden.ta))
    assert exchange.state is State.DONE and exchange.outcome == outcome


def test_enroll_uses_intermediates_from_cacerts(pki, now, subject) -> None:
    sub_key = ec.generate_private_key(ec.SECP256R1())
    sub = pki.issue(sub_key.public_key(), subject("Sub CA"), ca=True)
    device_key = generate_key()
    csr = build_csr(device_key, subject("gw"))
    leaf = type(pki)(sub_key, sub).issue(device_key.public_key(), subject("gw"))
    trust = TrustAnchors((pki.cert,))
    without = simpleenroll(SERVER, trust, csr).receive(ok(certs_body(leaf)), now)
    assert error_kind(without) is ErrorKind.UNTRUSTED_CHAIN
    with_cacerts = simpleenroll(SERVER, trust, csr, ca_certs=[sub]).receive(
        ok(certs_body(leaf)), now)
    assert with_cacerts == Enrolled(leaf, (leaf, sub, pki.cert))
    in_response = simpleenroll(SERVER, trust, csr).receive(ok(certs_body(leaf, sub)), now)
    assert in_response == Enrolled(leaf, (leaf, sub, pki.cert))


# -- /simpleenroll: 202 + Retry-After ---------------------------------------------------------

def accepted(retry_after: str | None) -> HttpResponse:
    headers = (("Retry-After", retry_after),) if retry_after is not None else ()
    return HttpResponse(202, headers + (("Content-Type", "text/plain"),), b"pending\n")


@pytest.mark.parametrize(
    ("retry_after", "delay", "requested"),
    [
        ("120", 120.0, 120.0),
        ("Mon, 01 Dec 2025 12:05:00 GMT", 300.0, 300.0),     # HTTP-date, 5 minutes after NOW
        ("Mon, 01 Dec 2025 11:00:00 GMT", 1.0, 0.0),         # in the past: min_delay
        ("0", 1.0, 0.0),                                     # no busy loop
        ("999999", 999999.0, 999999.0),                      # never less than asked (§4.2.3)
    ],
)
def test_enroll_202_is_deferred_with_bounds(golden, retry_after: str, delay: float,
                                            requested: float, now) -> None:
    exchange = enroll(golden)
    outcome = exchange.receive(accepted(retry_after), now)
    assert outcome == Deferred(delay=delay, requested=requested,
                               not_before=now + dt.timedelta(seconds=delay), deferrals=1)
    assert exchange.state is State.DEFERRED


def test_deferred_then_issued_resends_the_same_request(golden, now) -> None:
    exchange = enroll(golden, auth=AUTH)
    first = exchange.request
    assert isinstance(exchange.receive(accepted("30"), now), Deferred)
    assert exchange.resend() == first
    later = now + dt.timedelta(seconds=30)
    assert isinstance(exchange.receive(ok(golden.bytes("enroll.b64")), later), Enrolled)
    assert exchange.deferrals == 1


@pytest.mark.parametrize("retry_after", [None, "soon", "-5", "Mon, 99 Foo 2025"])
def test_202_without_usable_retry_after(golden, retry_after: str | None, now) -> None:
    exchange = enroll(golden)
    outcome = exchange.receive(accepted(retry_after), now)
    assert error_kind(outcome) is ErrorKind.BAD_RETRY_AFTER
    assert outcome.status == 202
    assert exchange.state is State.FAILED


def test_too_many_deferrals(golden, now) -> None:
    exchange = enroll(golden, limits=DeferralLimits(max_deferrals=2))
    for _ in range(2):
        assert isinstance(exchange.receive(accepted("1"), now), Deferred)
        exchange.resend()
    assert error_kind(exchange.receive(accepted("1"), now)) is ErrorKind.TOO_MANY_DEFERRALS
    assert exchange.state is State.FAILED


def test_parse_retry_after_http_date_without_zone_is_gmt(now) -> None:
    assert parse_retry_after("Mon, 01 Dec 2025 12:00:10 -0000", now) == 10.0
    assert parse_retry_after(None, now) is None


# -- /simpleenroll: 401 -----------------------------------------------------------------------

@pytest.mark.parametrize("auth", [None, AUTH])
def test_401_is_auth_required(golden, auth: BasicAuth | None, now) -> None:
    exchange = enroll(golden, auth=auth)
    response = HttpResponse(401, (("WWW-Authenticate", 'Basic realm="estrealm"'),))
    outcome = exchange.receive(response, now)
    assert outcome == AuthRequired('Basic realm="estrealm"', credentials_sent=auth is not None)
    assert exchange.state is State.AUTH_REQUIRED


UNAUTHORIZED = HttpResponse(401, (("WWW-Authenticate", 'Basic realm="estrealm"'),))


@pytest.mark.parametrize("operation", ["cacerts", "csrattrs", "simplereenroll"])
def test_401_on_any_path_is_answered_once_with_the_credentials(golden, now, operation) -> None:
    exchange = {"cacerts": lambda: cacerts(SERVER, golden.trust),
                "csrattrs": lambda: csrattrs(SERVER),
                "simplereenroll": lambda: simplereenroll(SERVER, golden.trust, golden.csr)}[operation]()
    first = exchange.request
    assert first.header("Authorization") is None
    assert exchange.receive(UNAUTHORIZED, now) == AuthRequired('Basic realm="estrealm"', False)
    again = exchange.authenticate(AUTH)
    assert exchange.state is State.AWAITING_RESPONSE
    assert again.header("Authorization") == AUTH.header_value()
    assert (again.method, again.target, again.body) == (first.method, first.target, first.body)
    assert again.headers[-1] == ("Connection", "close")
    # Refused again: final, and the same credentials are not sent a second time.
    assert exchange.receive(UNAUTHORIZED, now) == AuthRequired('Basic realm="estrealm"', True)
    with pytest.raises(ProtocolMisuse):
        exchange.authenticate(AUTH)


@pytest.mark.parametrize("location", [
    "/.well-known/est/other/simpleenroll",
    "https://est.example:8443/.well-known/est/other/simpleenroll",
    "other/simpleenroll",
])
def test_same_origin_307_is_followed_with_the_same_request(golden, now, location) -> None:
    exchange = enroll(golden, auth=AUTH)
    first = exchange.request
    outcome = exchange.receive(HttpResponse(307, (("Location", location),)), now)
    assert outcome == Redirected("/.well-known/est/other/simpleenroll", 307, 1)
    assert exchange.state is State.REDIRECTED
    again = exchange.resend()
    assert again.target == "/.well-known/est/other/simpleenroll"
    assert (again.method, again.headers, again.body) == (first.method, first.headers, first.body)
    assert isinstance(exchange.receive(ok(golden.bytes("enroll.b64")), now), Enrolled)


@pytest.mark.parametrize(("status", "location", "why"), [
    (307, "https://evil.example/.well-known/est/simpleenroll", "another origin"),
    (307, "http://est.example:8443/.well-known/est/simpleenroll", "another origin"),
    (308, "https://est.example:9443/.well-known/est/simpleenroll", "another origin"),
    (307, None, "without a Location"),
    (302, "/.well-known/est/simpleenroll", "302"),
])
def test_other_redirects_are_errors(golden, now, status, location, why) -> None:
    headers = (("Location", location),) if location else ()
    outcome = enroll(golden, auth=AUTH).receive(HttpResponse(status, headers), now)
    assert isinstance(outcome, EstError) and outcome.status == status
    assert why in str(outcome)


def test_redirect_loops_end(golden, now) -> None:
    exchange = enroll(golden)
    loop = HttpResponse(307, (("Location", "/.well-known/est/simpleenroll"),))
    for _ in range(5):
        assert isinstance(exchange.receive(loop, now), Redirected)
        exchange.resend()
    outcome = exchange.receive(loop, now)
    assert isinstance(outcome, EstError) and "more than 5 redirects" in outcome.detail


# -- /simpleenroll: bad answers ---------------------------------------------------------------

@pytest.mark.parametrize(
    ("response", "kind"),
    [
        (ok(b"MIIB", "text/html"), ErrorKind.WRONG_CONTENT_TYPE),
        (ok(b"MIIB", None), ErrorKind.WRONG_CONTENT_TYPE),
        (ok(b"MIIB", "application/pkcs7-mime; smime-type=server-generated-key"),
         ErrorKind.WRONG_CONTENT_TYPE),
        (ok(base64.b64encode(b"\x30\x03\x02\x01\x07")), ErrorKind.MALFORMED_PKCS7),
        (ok(b"%%% not base64 %%%"), ErrorKind.BAD_BASE64),
        (ok(b""), ErrorKind.BAD_BASE64),
        (HttpResponse(500, (("Content-Type", "text/plain"),), b"CA backend\tdown\n"),
         ErrorKind.HTTP_STATUS),
        (HttpResponse(404, reason="Not Found"), ErrorKind.HTTP_STATUS),
    ],
    ids=["text-html", "no-content-type", "other-smime-type", "malformed-pkcs7", "bad-base64",
         "empty-body", "500-text", "404"],
)
def test_enroll_bad_answers(golden, response: HttpResponse, kind: ErrorKind, now) -> None:
    exchange = enroll(golden)
    assert error_kind(exchange.receive(response, now)) is kind
    assert exchange.state is State.FAILED


def test_enroll_pem_armoured_answer_is_rejected(golden, now) -> None:
    body = b"-----BEGIN PKCS7-----\n" + golden.bytes("enroll.b64") + b"-----END PKCS7-----\n"
    assert error_kind(enroll(golden).receive(ok(body), now)) is ErrorKind.PEM_ARMOUR


def test_http_status_error_carries_status_and_server_text(golden, now) -> None:
    response = HttpResponse(500, (("Content-Type", "text/plain; charset=utf-8"),),
                            b"CA backend\tdown\r\n\x00")
    outcome = enroll(golden).receive(response, now)
    assert outcome == EstError(ErrorKind.HTTP_STATUS, "CA backend down", status=500)


def test_enrolled_cert_not_chaining_to_the_trust_anchor(golden, now) -> None:
    # Same subject, same key, same issuer *name* -- but signed by another key.
    outcome = enroll(golden).receive(ok(golden.bytes("rogue_enroll.b64")), now)
    assert error_kind(outcome) is ErrorKind.UNTRUSTED_CHAIN


def test_enrolled_cert_checked_at_the_injected_time(golden) -> None:
    after_expiry = dt.datetime(2026, 7, 1, tzinfo=dt.UTC)
    outcome = enroll(golden).receive(ok(golden.bytes("enroll.b64")), after_expiry)
    assert error_kind(outcome) is ErrorKind.UNTRUSTED_CHAIN


def test_answer_without_our_key(golden, now) -> None:
    outcome = enroll(golden).receive(ok(golden.bytes("cacerts.b64")), now)
    assert error_kind(outcome) is ErrorKind.KEY_MISMATCH


# -- /csrattrs --------------------------------------------------------------------------------

def test_csrattrs_rfc7030_example(golden, now) -> None:
    response = HttpResponse(200, (("Content-Type", "application/csrattrs"),),
                            golden.bytes("csrattrs.b64"))
    outcome = csrattrs(SERVER).receive(response, now)
    assert isinstance(outcome, CsrAttributes)
    assert outcome.attrs.oids == (OID_CHALLENGE_PASSWORD, "1.2.840.10045.2.1",
                                  "1.2.840.113549.1.9.14", "1.2.840.10045.4.3.3")
    assert outcome.attrs.requested_curve == OID_SECP384R1
    assert outcome.attrs.wants_challenge_password


@pytest.mark.parametrize("status", [204, 404])
def test_csrattrs_none(status: int, now) -> None:
    outcome = csrattrs(SERVER).receive(HttpResponse(status), now)
    assert outcome == CsrAttributes(outcome.attrs) and outcome.attrs.items == ()


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        (HttpResponse(200, (("Content-Type", "application/pkcs7-mime"),), b"MAA="),
         ErrorKind.WRONG_CONTENT_TYPE),
        (HttpResponse(200, (("Content-Type", "application/csrattrs"),),
                      base64.b64encode(b"\x31\x00")), ErrorKind.MALFORMED_CSRATTRS),
        (HttpResponse(500), ErrorKind.HTTP_STATUS),
    ],
)
def test_csrattrs_errors(response: HttpResponse, kind: ErrorKind, now) -> None:
    assert error_kind(csrattrs(SERVER).receive(response, now)) is kind


# -- the state machine ------------------------------------------------------------------------

def test_final_states_have_no_way_out() -> None:
    finals = {State.DONE, State.FAILED}
    assert not [key for key in TRANSITIONS if key[0] in finals]
    # AUTH_REQUIRED is left only by answering the challenge, once.
    assert [key for key in TRANSITIONS if key[0] is State.AUTH_REQUIRED] == [
        (State.AUTH_REQUIRED, Event.AUTHENTICATE)]


def test_misuse_raises(golden, now) -> None:
    exchange = enroll(golden)
    with pytest.raises(ProtocolMisuse, match="RESEND is not allowed in state AWAITING_RESPONSE"):
        exchange.resend()
    with pytest.raises(ValueError, match="timezone-aware"):
        exchange.receive(accepted("1"), now.replace(tzinfo=None))
    exchange.receive(ok(golden.bytes("enroll.b64")), now)
    with pytest.raises(ProtocolMisuse):
        exchange.receive(ok(golden.bytes("enroll.b64")), now)
    with pytest.raises(ProtocolMisuse):
        exchange.fail(EstError(ErrorKind.TIMEOUT, "late"))


def test_transport_failure_is_recorded(golden) -> None:
    exchange = enroll(golden)
    error = EstError(ErrorKind.CONNECTION_CLOSED, "peer went away")
    assert exchange.fail(error) is error
    assert exchange.state is State.FAILED and exchange.outcome is error
    assert error.kind.is_transport and not ErrorKind.UNTRUSTED_CHAIN.is_transport
