"""est_service's state and decisions: ``EstService`` (no I/O but its transport and log).

It enrolls the device over EST, renews its certificate and answers its clients' requests
(``handle``); ``transport_for`` and ``log`` are its only ways out, so the task loop
(``task.py``) and tests drive it alike. docs/est.md has the full story.
"""
from __future__ import annotations

import dataclasses
import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from protocols.est_service import (
    AUTH_REFUSED,
    LOCAL_ERROR,
    Activity,
    CertState,
    Op,
    ServiceStatus,
    Status,
    decode_request,
    encode_cert,
    encode_chain,
    encode_response,
    too_large,
)
from tasks.est_service import protocol
from tasks.est_service.config import Config, utc_now
from tasks.est_service.csr import Curve, build_csr, build_reenroll_csr, generate_key, same_identity
from tasks.est_service.exchange import Exchange
from tasks.est_service.http_transport import HttpTransport
from tasks.est_service.renewal import Action, RenewalState, decide, record_failure, record_success
from tasks.est_service.results import AuthRequired, CaCerts, Deferred, Enrolled, ErrorKind, EstError, Redirected
from tasks.est_service.store import Pending, Persisted, Store, StoreError
from tasks.est_service.trust import TrustAnchors, still_valid
from tasks.runtime.shm import ShmPeer


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
            self.log(f"state: MISSING: no stored state ({self.store.state_path.name}): starting without a "
                     "certificate (a first start, or the state was lost; store.required refuses instead)")
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
        except Exception as exc:
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
                assert self.key is not None  # a current certificate comes with its key (as for REENROLL)
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
        response = attempt.exchange.response
        assert response is not None  # the caller rechecks only an answer that arrived
        return again.receive(response, self.clock())

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
        failure: EstError | AuthRequired | None
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
