"""When to enroll, when to renew, and how to back off: a pure policy over an injected ``now``.

The policy never touches a certificate it has: on any failure the current certificate and
chain stay exactly as they were (`record_failure` only counts and schedules), so a broken EST
server can delay renewal but never take the device's identity away. Only `record_success`
replaces the certificate.

Decision rules (`decide`), in order:

1. a failure is being backed off (``retry_at`` in the future): WAIT until ``retry_at``;
2. no certificate, or the certificate has expired: ENROLL (/simpleenroll with the bootstrap
   credentials; an expired certificate cannot authenticate a TLS client, RFC 7030 §3.3.2);
3. ``renew_at_fraction`` of the validity period has passed: REENROLL (/simplereenroll with
   the current certificate as TLS client certificate);
4. otherwise WAIT until that point.

Backoff after the n-th consecutive failure is ``initial_backoff * backoff_factor**(n-1)``,
capped at ``max_backoff``. There is no jitter here (the policy stays deterministic); a fleet
shell that needs it can spread ``retry_at`` itself.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from enum import IntEnum

from cryptography import x509

from .results import AuthRequired, Enrolled, EstError

__all__ = ["Action", "Decision", "RenewalPolicy", "RenewalState", "decide", "record_failure",
           "record_success"]


class Action(IntEnum):
    """What the est_service task should do next."""

    WAIT = 0
    """Nothing to do before `Decision.at`."""
    ENROLL = 1
    """No usable certificate: run /simpleenroll."""
    REENROLL = 2
    """The certificate is due for renewal: run /simplereenroll."""


@dataclass(frozen=True, slots=True)
class RenewalPolicy:
    """Configuration of renewal timing; all durations in seconds."""

    renew_at_fraction: float = 0.66
    initial_backoff: float = 30.0
    backoff_factor: float = 2.0
    max_backoff: float = 3600.0

    def __post_init__(self) -> None:
        if not 0.0 < self.renew_at_fraction < 1.0:
            raise ValueError("renew_at_fraction must be strictly between 0 and 1")
        if self.initial_backoff <= 0 or self.max_backoff < self.initial_backoff:
            raise ValueError("need 0 < initial_backoff <= max_backoff")
        if self.backoff_factor < 1.0:
            raise ValueError("backoff_factor must be >= 1")

    def renewal_time(self, cert: x509.Certificate) -> dt.datetime:
        """The instant ``renew_at_fraction`` of ``cert``'s validity period has passed."""
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        return start + (end - start) * self.renew_at_fraction

    def backoff(self, failures: int) -> float:
        """Seconds to wait after ``failures`` (>= 1) consecutive failures."""
        if failures < 1:
            raise ValueError("backoff is defined for failures >= 1")
        exponent = min(failures - 1, 64)  # beyond this the cap applies anyway; avoids overflow
        return min(self.max_backoff, self.initial_backoff * self.backoff_factor**exponent)


@dataclass(frozen=True, slots=True)
class RenewalState:
    """What est_service knows: the current certificate (if any) and the failure streak."""

    certificate: x509.Certificate | None = None
    chain: tuple[x509.Certificate, ...] = ()
    failures: int = 0
    retry_at: dt.datetime | None = None
    last_failure: EstError | AuthRequired | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The next action and when: act at ``at`` (already due if ``at <= now``)."""

    action: Action
    at: dt.datetime
    reason: str


def decide(state: RenewalState, policy: RenewalPolicy, now: dt.datetime) -> Decision:
    """Apply the rules in the module docstring."""
    cert = state.certificate
    wanted = Action.ENROLL
    if cert is not None and now < cert.not_valid_after_utc:
        wanted = Action.REENROLL
    if state.retry_at is not None and now < state.retry_at:
        return Decision(Action.WAIT, state.retry_at,
                        f"backing off after {state.failures} failure(s), then {wanted.name}")
    if cert is None:
        return Decision(Action.ENROLL, now, "no certificate yet")
    if wanted is Action.ENROLL:
        return Decision(Action.ENROLL, now, "certificate expired")
    due = policy.renewal_time(cert)
    if now >= due:
        return Decision(Action.REENROLL, now,
                        f"{policy.renew_at_fraction:.0%} of the validity period has passed")
    return Decision(Action.WAIT, due, "certificate is fresh")


def record_success(state: RenewalState, enrolled: Enrolled) -> RenewalState:
    """The new certificate replaces the old one; the failure streak ends."""
    return RenewalState(certificate=enrolled.certificate, chain=enrolled.chain)


def record_failure(
    state: RenewalState,
    failure: EstError | AuthRequired,
    policy: RenewalPolicy,
    now: dt.datetime,
) -> RenewalState:
    """Count the failure and schedule the retry; the certificate and chain are kept as is."""
    failures = state.failures + 1
    retry_at = now + dt.timedelta(seconds=policy.backoff(failures))
    return replace(state, failures=failures, retry_at=retry_at, last_failure=failure)
