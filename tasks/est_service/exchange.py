"""The EST exchange state machine: one operation from first request to final outcome.

`protocol.py` creates exchanges (one constructor per EST operation); this module holds what
they share: the states, the transition table, deferral (202 + Retry-After) handling and the
bounds on it. Nothing here does I/O; time enters only as the ``now`` argument.

Every outcome of `Exchange.receive` moves the state along `TRANSITIONS`::

    AWAITING_RESPONSE --result--------> DONE
    AWAITING_RESPONSE --202-----------> DEFERRED --resend()--> AWAITING_RESPONSE
    AWAITING_RESPONSE --401-----------> AUTH_REQUIRED
    AWAITING_RESPONSE --error/fail()--> FAILED

Anything not in the table is a bug in the caller and raises `ProtocolMisuse`, the only
exception raised on purpose; every problem with what the *server* sent is an `EstError`.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from .messages import HttpRequest, HttpResponse, Operation
from .results import AuthRequired, Deferred, ErrorKind, EstError, Outcome

__all__ = [
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

    A Retry-After above ``max_delay`` is clamped to it (a server asking for a week must not
    park the device for a week; asking again early only costs one more 202). One below
    ``min_delay`` is raised to it, so ``Retry-After: 0`` cannot cause a busy loop. After
    ``max_deferrals`` consecutive 202s the exchange fails with TOO_MANY_DEFERRALS and the
    renewal policy's backoff takes over.
    """

    max_delay: float = 3600.0
    min_delay: float = 1.0
    max_deferrals: int = 10

    def __post_init__(self) -> None:
        if not 0 <= self.min_delay <= self.max_delay:
            raise ValueError("DeferralLimits needs 0 <= min_delay <= max_delay")
        if self.max_deferrals < 0:
            raise ValueError("DeferralLimits.max_deferrals must be >= 0")


class State(IntEnum):
    """Where an `Exchange` is. DONE, AUTH_REQUIRED and FAILED are final."""

    AWAITING_RESPONSE = 1
    DEFERRED = 2
    DONE = 3
    AUTH_REQUIRED = 4
    FAILED = 5


class Event(IntEnum):
    """What moves an `Exchange`: the kind of outcome received, or the caller resending."""

    RESULT = 1
    DEFERRED = 2
    AUTH_REQUIRED = 3
    ERROR = 4
    RESEND = 5


TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.AWAITING_RESPONSE, Event.RESULT): State.DONE,
    (State.AWAITING_RESPONSE, Event.DEFERRED): State.DEFERRED,
    (State.AWAITING_RESPONSE, Event.AUTH_REQUIRED): State.AUTH_REQUIRED,
    (State.AWAITING_RESPONSE, Event.ERROR): State.FAILED,
    (State.DEFERRED, Event.RESEND): State.AWAITING_RESPONSE,
}


class ProtocolMisuse(RuntimeError):
    """The caller drove an `Exchange` against `TRANSITIONS` (a bug in the caller)."""


def _event_of(outcome: Outcome) -> Event:
    if isinstance(outcome, Deferred):
        return Event.DEFERRED
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

    __slots__ = ("_operation", "_request", "_interpret", "_limits", "_state", "_deferrals",
                 "_outcome")

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
        self._outcome: Outcome | None = None

    def __repr__(self) -> str:
        return f"<Exchange {self._operation.value} {self._state.name} deferrals={self._deferrals}>"

    @property
    def operation(self) -> Operation:
        return self._operation

    @property
    def request(self) -> HttpRequest:
        """The request to send; identical on every resend (§4.2.3: "resend the same")."""
        return self._request

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
        outcome = self._classify(response, now)
        return self._advance(outcome)

    def fail(self, error: EstError) -> EstError:
        """Record that the request could not be completed (transport error); returns it."""
        self._require(Event.ERROR)
        return self._advance(error)  # type: ignore[return-value]

    def resend(self) -> HttpRequest:
        """After `Deferred` (and after waiting): the same request again."""
        self._transition(Event.RESEND)
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
        return self._interpret(response, now)

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
        delay = min(max(requested, self._limits.min_delay), self._limits.max_delay)
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
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, (when - now).total_seconds())
