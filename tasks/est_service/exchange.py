"""The EST exchange state machine: one operation from first request to final outcome.

`protocol.py` creates exchanges (one constructor per EST operation); this module holds what
they share: the states, the transition table, deferral (202 + Retry-After) handling and the
bounds on it. Nothing here does I/O; time enters only as the ``now`` argument.

Every outcome of `Exchange.receive` moves the state along `TRANSITIONS`::

    AWAITING_RESPONSE --result--------> DONE
    AWAITING_RESPONSE --202-----------> DEFERRED --resend()--> AWAITING_RESPONSE
    AWAITING_RESPONSE --307/308-------> REDIRECTED --resend()--> AWAITING_RESPONSE
    AWAITING_RESPONSE --401-----------> AUTH_REQUIRED --authenticate()--> AWAITING_RESPONSE
    AWAITING_RESPONSE --error/fail()--> FAILED

* 202 (RFC 7030 §4.2.3): the client waits *at least* the server's Retry-After -- never less
  (``min_delay`` only raises a 0 to avoid a busy loop) -- then resends the same request.
* 307/308 to the same origin (https, same host and port): the same request (method, body,
  headers) goes to the new target, at most ``MAX_REDIRECTS`` times; another origin, or any
  other 3xx, is an error (RFC 7030 §3.2.1: the client follows redirects only to where it
  already authenticated the server).
* 401 on any operation: `authenticate` answers the challenge once with the configured HTTP
  Basic credentials (the caller has authenticated the server through TLS, §3.2.3); a 401 to
  a request that already carried them is final.

Anything not in the table is a bug in the caller and raises `ProtocolMisuse`, the only
exception raised on purpose; every problem with what the *server* sent is an `EstError`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from urllib.parse import urljoin, urlsplit

from .messages import BasicAuth, HttpRequest, HttpResponse, Operation
from .results import AuthRequired, Deferred, ErrorKind, EstError, Outcome, Redirected

__all__ = [
    "MAX_REDIRECTS",
    "TRANSITIONS",
    "DeferralLimits",
    "Event",
    "Exchange",
    "Interpret",
    "ProtocolMisuse",
    "State",
    "parse_retry_after",
]


@dataclass(frozen=True, slots=True)
class DeferralLimits:
    """Bounds on honouring ``202 Accepted`` + ``Retry-After`` (RFC 7030 §4.2.3).

    The client waits at least what the server asked for: there is no upper clamp (the RFC
    says the client MUST wait). A Retry-After below ``min_delay`` is raised to it, so
    ``Retry-After: 0`` cannot cause a busy loop. After ``max_deferrals`` consecutive 202s the
    exchange fails with TOO_MANY_DEFERRALS and the renewal policy's backoff takes over.
    """

    min_delay: float = 1.0
    max_deferrals: int = 10

    def __post_init__(self) -> None:
        if not self.min_delay >= 0:
            raise ValueError("DeferralLimits needs min_delay >= 0")
        if self.max_deferrals < 0:
            raise ValueError("DeferralLimits.max_deferrals must be >= 0")


class State(IntEnum):
    """Where an `Exchange` is. DONE, AUTH_REQUIRED and FAILED are final."""

    AWAITING_RESPONSE = 1
    DEFERRED = 2
    DONE = 3
    AUTH_REQUIRED = 4
    FAILED = 5
    REDIRECTED = 6


class Event(IntEnum):
    """What moves an `Exchange`: the kind of outcome received, or the caller resending."""

    RESULT = 1
    DEFERRED = 2
    AUTH_REQUIRED = 3
    ERROR = 4
    RESEND = 5
    REDIRECTED = 6
    AUTHENTICATE = 7


TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.AWAITING_RESPONSE, Event.RESULT): State.DONE,
    (State.AWAITING_RESPONSE, Event.DEFERRED): State.DEFERRED,
    (State.AWAITING_RESPONSE, Event.AUTH_REQUIRED): State.AUTH_REQUIRED,
    (State.AWAITING_RESPONSE, Event.ERROR): State.FAILED,
    (State.AWAITING_RESPONSE, Event.REDIRECTED): State.REDIRECTED,
    (State.DEFERRED, Event.RESEND): State.AWAITING_RESPONSE,
    (State.REDIRECTED, Event.RESEND): State.AWAITING_RESPONSE,
    (State.AUTH_REQUIRED, Event.AUTHENTICATE): State.AWAITING_RESPONSE,
}

MAX_REDIRECTS = 5


class ProtocolMisuse(RuntimeError):
    """The caller drove an `Exchange` against `TRANSITIONS` (a bug in the caller)."""


def _event_of(outcome: Outcome) -> Event:
    if isinstance(outcome, Deferred):
        return Event.DEFERRED
    if isinstance(outcome, Redirected):
        return Event.REDIRECTED
    if isinstance(outcome, AuthRequired):
        return Event.AUTH_REQUIRED
    if isinstance(outcome, EstError):
        return Event.ERROR
    return Event.RESULT


Interpret = Callable[[HttpResponse, dt.datetime], Outcome]


class Exchange:
    """One EST operation from first request to final outcome.

    Create exchanges with `protocol.cacerts`, `protocol.csrattrs`, `protocol.simpleenroll` and
    `protocol.simplereenroll`; ``interpret`` is the operation-specific reading of every answer
    other than 401 and (for enrollment) 202.
    """

    __slots__ = (
        "_deferrals",
        "_interpret",
        "_limits",
        "_operation",
        "_outcome",
        "_redirects",
        "_request",
        "_response",
        "_state",
    )

    def __init__(
        self,
        operation: Operation,
        request: HttpRequest,
        interpret: Interpret,
        limits: DeferralLimits,
    ) -> None:
        self._operation = operation
        self._request = request
        self._interpret = interpret
        self._limits = limits
        self._state = State.AWAITING_RESPONSE
        self._deferrals = 0
        self._redirects = 0
        self._outcome: Outcome | None = None
        self._response: HttpResponse | None = None

    def __repr__(self) -> str:
        return f"<Exchange {self._operation.value} {self._state.name} deferrals={self._deferrals}>"

    @property
    def operation(self) -> Operation:
        return self._operation

    @property
    def request(self) -> HttpRequest:
        """The request to send; identical on every resend (§4.2.3: "resend the same"), except
        for the target after a same-origin redirect and the credentials after a 401."""
        return self._request

    @property
    def response(self) -> HttpResponse | None:
        """The last response given to `receive` (e.g. to re-check it against fresh /cacerts)."""
        return self._response

    @property
    def state(self) -> State:
        return self._state

    @property
    def deferrals(self) -> int:
        """How many 202s this exchange has seen so far."""
        return self._deferrals

    @property
    def outcome(self) -> Outcome | None:
        """The last outcome returned by `receive` or `fail`, if any."""
        return self._outcome

    def receive(self, response: HttpResponse, now: dt.datetime) -> Outcome:
        """Interpret the server's answer to `request`. ``now`` must be timezone-aware.

        Returns the final result, `Deferred` (wait, then `resend`), `AuthRequired`, or an
        `EstError`. Raises `ProtocolMisuse` if no response is awaited.
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware (UTC)")
        self._require(Event.RESULT)  # any outcome event is legal exactly where RESULT is
        self._response = response
        outcome = self._classify(response, now)
        return self._advance(outcome)

    def fail(self, error: EstError) -> EstError:
        """Record that the request could not be completed (transport error); returns it."""
        self._require(Event.ERROR)
        return self._advance(error)  # type: ignore[return-value]

    def resend(self) -> HttpRequest:
        """After `Deferred` (and after waiting) or `Redirected`: the same request again."""
        self._transition(Event.RESEND)
        return self._request

    def authenticate(self, auth: BasicAuth) -> HttpRequest:
        """After `AuthRequired` for a request without credentials: the same request with
        HTTP Basic ``auth``. Raises `ProtocolMisuse` if credentials were already sent."""
        self._require(Event.AUTHENTICATE)
        if self._request.header("Authorization") is not None:
            raise ProtocolMisuse(f"{self._operation.value}: credentials were already refused")
        headers = list(self._request.headers)
        index = next((i for i, (k, _) in enumerate(headers) if k.lower() == "connection"),
                     len(headers))
        headers.insert(index, ("Authorization", auth.header_value()))
        self._request = dataclasses.replace(self._request, headers=tuple(headers))
        self._transition(Event.AUTHENTICATE)
        return self._request

    def _require(self, event: Event) -> None:
        if (self._state, event) not in TRANSITIONS:
            raise ProtocolMisuse(
                f"{self._operation.value}: {event.name} is not allowed in state {self._state.name}"
            )

    def _transition(self, event: Event) -> None:
        self._require(event)
        self._state = TRANSITIONS[(self._state, event)]

    def _advance(self, outcome: Outcome) -> Outcome:
        self._transition(_event_of(outcome))
        self._outcome = outcome
        return outcome

    def _classify(self, response: HttpResponse, now: dt.datetime) -> Outcome:
        if response.status == 401:
            return AuthRequired(
                challenge=response.header("WWW-Authenticate"),
                credentials_sent=self._request.header("Authorization") is not None,
            )
        if response.status == 202 and self._operation in _ENROLL_OPS:
            return self._deferred(response, now)
        if response.status in (307, 308):
            return self._redirected(response)
        return self._interpret(response, now)

    def _redirected(self, response: HttpResponse) -> Redirected | EstError:
        location = response.header("Location")
        if not location:
            return EstError(ErrorKind.HTTP_STATUS, f"{response.status} without a Location",
                            status=response.status)
        origin = self._request.header("Host") or ""
        base = f"https://{origin}{self._request.target}"
        target = urlsplit(urljoin(base, location.strip()))
        netloc = target.netloc.lower()
        if netloc.endswith(":443"):
            netloc = netloc[:-4]
        if target.scheme != "https" or netloc != origin.lower():
            return EstError(ErrorKind.HTTP_STATUS,
                            f"redirect to another origin refused: {location!r} "
                            f"(we authenticated https://{origin})", status=response.status)
        if self._redirects >= MAX_REDIRECTS:
            return EstError(ErrorKind.HTTP_STATUS, f"more than {MAX_REDIRECTS} redirects",
                            status=response.status)
        path = (target.path or "/") + (f"?{target.query}" if target.query else "")
        try:
            self._request = dataclasses.replace(self._request, target=path)
        except ValueError as exc:
            return EstError(ErrorKind.HTTP_STATUS, f"unusable redirect target: {exc}",
                            status=response.status)
        self._redirects += 1
        return Redirected(path, response.status, self._redirects)

    def _deferred(self, response: HttpResponse, now: dt.datetime) -> Deferred | EstError:
        raw = response.header("Retry-After")
        requested = parse_retry_after(raw, now)
        if requested is None:
            return EstError(
                ErrorKind.BAD_RETRY_AFTER,
                f"202 with {'no' if raw is None else 'an unusable'} Retry-After ({raw!r})",
                status=202,
            )
        if self._deferrals >= self._limits.max_deferrals:
            return EstError(
                ErrorKind.TOO_MANY_DEFERRALS,
                f"server deferred {self._deferrals + 1} times "
                f"(limit {self._limits.max_deferrals})",
                status=202,
            )
        self._deferrals += 1
        delay = max(requested, self._limits.min_delay)  # at least what the server asked for
        return Deferred(
            delay=delay,
            requested=requested,
            not_before=now + dt.timedelta(seconds=delay),
            deferrals=self._deferrals,
        )


_ENROLL_OPS = (Operation.SIMPLEENROLL, Operation.SIMPLEREENROLL)
_DELTA_SECONDS = re.compile(r"[0-9]{1,10}")


def parse_retry_after(value: str | None, now: dt.datetime) -> float | None:
    """Seconds to wait from a Retry-After value (RFC 9110 §10.2.3), or None if unusable.

    Accepts delay-seconds (``"120"``) and an HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``);
    a date in the past means "now" (0.0).
    """
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" zone: RFC 5322 "no information", HTTP-dates are GMT
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - now).total_seconds())
