"""The EST client protocol core (RFC 7030), sans-I/O: the four operations.

This module contains no networking code at all. Each function below returns an `Exchange`
(see `exchange.py`) that hands out the `HttpRequest` to send and turns each `HttpResponse`
it is given into an `Outcome` (a result value or an `EstError`); whoever owns the connection
moves the bytes and decides when to wait. Time enters only as the ``now`` argument.

Theory of operation::

    exchange = simpleenroll(server, trust, csr, auth=BasicAuth(...))
    request = exchange.request
    while True:
        response = <send request, read response>   # or exchange.fail(transport_error)
        outcome = exchange.receive(response, now)
        if not isinstance(outcome, Deferred):
            break                                  # Enrolled | AuthRequired | EstError
        <wait until outcome.not_before>
        request = exchange.resend()

Server authentication happens in two places: TLS (the shell verifies the server certificate
against the same explicit trust anchor, RFC 7030 §3.3.1) and here (every certificate we accept
must chain to the anchor, `trust.py`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509

from protocols.csrattrs import CsrAttrs, decode_csrattrs

from .codec import (
    MEDIA_CSRATTRS,
    MEDIA_PKCS7,
    MEDIA_PKCS10,
    check_media_type,
    decode_base64_body,
    decode_certs_only,
    parse_media_type,
)
from .csr import encode_pkcs10, same_public_key
from .exchange import (
    TRANSITIONS,
    DeferralLimits,
    Event,
    Exchange,
    ProtocolMisuse,
    State,
    parse_retry_after,
)
from .messages import BasicAuth, EstServer, HttpRequest, HttpResponse, Operation
from .results import CaCerts, CsrAttributes, Enrolled, ErrorKind, EstError, Outcome
from .trust import TrustAnchors, verify_ca_certs, verify_issued

__all__ = [  # re-exported from exchange.py, so callers need one import
    "TRANSITIONS",
    "DeferralLimits",
    "Event",
    "Exchange",
    "ProtocolMisuse",
    "State",
    "parse_retry_after",
]
__all__ += [  # the operations
    "USER_AGENT",
    "cacerts",
    "csrattrs",
    "simpleenroll",
    "simplereenroll",
]

USER_AGENT = "l4emu-est/0.1"
_DETAIL_MAX = 200


def _status_error(response: HttpResponse) -> EstError:
    """An unexpected status, with the server's text/plain explanation if it sent one."""
    detail = response.reason or "unexpected status"
    media, _ = parse_media_type(response.header("Content-Type"))
    if media == "text/plain" and response.body:
        text = response.body[:_DETAIL_MAX].decode("utf-8", "replace")
        detail = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return EstError(ErrorKind.HTTP_STATUS, detail, status=response.status)


def _certs_body(response: HttpResponse) -> tuple[x509.Certificate, ...] | EstError:
    if response.status != 200:
        return _status_error(response)
    bad_type = check_media_type(
        response.header("Content-Type"), MEDIA_PKCS7, smime_type="certs-only"
    )
    if bad_type is not None:
        return bad_type
    der = decode_base64_body(response.body)
    if isinstance(der, EstError):
        return der
    return decode_certs_only(der)


def _headers(server: EstServer, accept: str, auth: BasicAuth | None,
             content_type: str | None = None) -> tuple[tuple[str, str], ...]:
    headers = [("Host", server.authority), ("User-Agent", USER_AGENT), ("Accept", accept)]
    if auth is not None:
        headers.append(("Authorization", auth.header_value()))
    if content_type is not None:
        # RFC 8951: receivers ignore it, but RFC 7030-era servers may still look for it.
        headers += [("Content-Type", content_type), ("Content-Transfer-Encoding", "base64")]
    headers.append(("Connection", "close"))
    return tuple(headers)


def cacerts(server: EstServer, trust: TrustAnchors, *, auth: BasicAuth | None = None) -> Exchange:
    """GET /cacerts (§4.1).

    Succeeds with `CaCerts` only if every certificate is, or chains to, a ``trust`` anchor.
    """

    def interpret(response: HttpResponse, now: dt.datetime) -> Outcome:
        certs = _certs_body(response)
        if isinstance(certs, EstError):
            return certs
        verified = verify_ca_certs(certs, trust, now)
        return verified if isinstance(verified, EstError) else CaCerts(verified)

    headers = _headers(server, MEDIA_PKCS7, auth)
    request = HttpRequest("GET", server.path(Operation.CACERTS), headers)
    return Exchange(Operation.CACERTS, request, interpret, DeferralLimits())


def csrattrs(server: EstServer, *, auth: BasicAuth | None = None) -> Exchange:
    """GET /csrattrs (§4.5). 204 or 404 mean "no attributes" (§4.5.2)."""

    def interpret(response: HttpResponse, now: dt.datetime) -> Outcome:
        if response.status in (204, 404):
            return CsrAttributes(CsrAttrs())
        if response.status != 200:
            return _status_error(response)
        bad_type = check_media_type(response.header("Content-Type"), MEDIA_CSRATTRS)
        if bad_type is not None:
            return bad_type
        if not response.body.strip():
            return CsrAttributes(CsrAttrs())
        der = decode_base64_body(response.body)
        if isinstance(der, EstError):
            return der
        try:
            return CsrAttributes(decode_csrattrs(der))
        except ValueError as exc:
            return EstError(ErrorKind.MALFORMED_CSRATTRS, str(exc))

    accept = MEDIA_CSRATTRS
    request = HttpRequest("GET", server.path(Operation.CSRATTRS), _headers(server, accept, auth))
    return Exchange(Operation.CSRATTRS, request, interpret, DeferralLimits())


def _enroll(
    operation: Operation,
    server: EstServer,
    trust: TrustAnchors,
    csr: x509.CertificateSigningRequest,
    auth: BasicAuth | None,
    ca_certs: Sequence[x509.Certificate],
    limits: DeferralLimits,
) -> Exchange:
    def interpret(response: HttpResponse, now: dt.datetime) -> Outcome:
        certs = _certs_body(response)
        if isinstance(certs, EstError):
            return certs
        ours = [c for c in certs if same_public_key(c, csr)]
        if not ours:
            return EstError(
                ErrorKind.KEY_MISMATCH,
                f"none of the {len(certs)} returned certificate(s) holds the CSR's public key",
            )
        leaf = ours[0]
        others = [c for c in certs if c is not leaf] + list(ca_certs)
        chain = verify_issued(leaf, others, trust, now)
        return chain if isinstance(chain, EstError) else Enrolled(leaf, chain)

    request = HttpRequest(
        "POST",
        server.path(operation),
        _headers(server, MEDIA_PKCS7, auth, content_type=MEDIA_PKCS10),
        encode_pkcs10(csr),
    )
    return Exchange(operation, request, interpret, limits)


def simpleenroll(
    server: EstServer,
    trust: TrustAnchors,
    csr: x509.CertificateSigningRequest,
    *,
    auth: BasicAuth | None = None,
    ca_certs: Sequence[x509.Certificate] = (),
    limits: DeferralLimits = DeferralLimits(),
) -> Exchange:
    """POST /simpleenroll (§4.2.1): first enrollment, usually with HTTP Basic ``auth``.

    Succeeds with `Enrolled` only if a returned certificate holds the CSR's key and chains to
    ``trust`` (``ca_certs`` from a verified /cacerts may supply intermediates).
    """
    return _enroll(Operation.SIMPLEENROLL, server, trust, csr, auth, ca_certs, limits)


def simplereenroll(
    server: EstServer,
    trust: TrustAnchors,
    csr: x509.CertificateSigningRequest,
    *,
    auth: BasicAuth | None = None,
    ca_certs: Sequence[x509.Certificate] = (),
    limits: DeferralLimits = DeferralLimits(),
) -> Exchange:
    """POST /simplereenroll (§4.2.2). Build ``csr`` with `csr.build_reenroll_csr`; the shell
    must present the current certificate as the TLS client certificate (§3.3.2)."""
    return _enroll(Operation.SIMPLEREENROLL, server, trust, csr, auth, ca_certs, limits)
