"""The pure renewal policy, driven by an injected clock (plain datetimes, no sleeping)."""

from __future__ import annotations

import datetime as dt

import pytest

from tasks.est_service.csr import generate_key
from tasks.est_service.renewal import (
    Action,
    Decision,
    RenewalPolicy,
    RenewalState,
    decide,
    record_failure,
    record_success,
)
from tasks.est_service.results import AuthRequired, Enrolled, ErrorKind, EstError

UTC = dt.UTC
START = dt.datetime(2030, 1, 1, tzinfo=UTC)
DAY = dt.timedelta(days=1)
POLICY = RenewalPolicy(renew_at_fraction=0.66, initial_backoff=30, backoff_factor=2,
                       max_backoff=600)
TIMEOUT = EstError(ErrorKind.TIMEOUT, "no answer")


@pytest.fixture
def cert(pki, subject):
    """A 100-day certificate: renewal falls due on day 66."""
    return pki.issue(generate_key().public_key(), subject("gw"), not_before=START,
                     not_after=START + 100 * DAY)


def test_renewal_time_is_the_configured_fraction(cert) -> None:
    assert POLICY.renewal_time(cert) == START + 66 * DAY
    assert RenewalPolicy(renew_at_fraction=0.5).renewal_time(cert) == START + 50 * DAY


def test_no_certificate_means_enroll_now() -> None:
    assert decide(RenewalState(), POLICY, START) == Decision(Action.ENROLL, START,
                                                             "no certificate yet")


def test_fresh_certificate_waits_until_due_then_reenrolls(cert) -> None:
    state = RenewalState(certificate=cert)
    early = decide(state, POLICY, START + 10 * DAY)
    assert (early.action, early.at) == (Action.WAIT, START + 66 * DAY)
    just_before = decide(state, POLICY, START + 66 * DAY - dt.timedelta(seconds=1))
    assert just_before.action is Action.WAIT
    due = START + 66 * DAY
    assert decide(state, POLICY, due).action is Action.REENROLL
    assert decide(state, POLICY, START + 99 * DAY).action is Action.REENROLL


def test_expired_certificate_means_enroll(cert) -> None:
    expired = decide(RenewalState(certificate=cert), POLICY, START + 100 * DAY)
    assert (expired.action, expired.reason) == (Action.ENROLL, "certificate expired")


def test_failure_keeps_the_certificate_and_backs_off_exponentially(cert) -> None:
    now = START + 70 * DAY
    state = RenewalState(certificate=cert, chain=(cert,))
    waits = []
    for attempt in range(1, 8):
        assert decide(state, POLICY, now).action is Action.REENROLL
        state = record_failure(state, TIMEOUT, POLICY, now)
        assert state.certificate is cert and state.chain == (cert,)  # nothing lost
        assert state.failures == attempt and state.last_failure is TIMEOUT
        waiting = decide(state, POLICY, now)
        assert waiting.action is Action.WAIT and "REENROLL" in waiting.reason
        waits.append((waiting.at - now).total_seconds())
        now = waiting.at  # the injected clock jumps to the retry time
    assert waits == [30, 60, 120, 240, 480, 600, 600]


def test_success_replaces_the_certificate_and_ends_the_streak(cert, pki, subject) -> None:
    now = START + 70 * DAY
    state = record_failure(RenewalState(certificate=cert), AuthRequired(None, True), POLICY, now)
    new = pki.issue(generate_key().public_key(), subject("gw"), not_before=now,
                    not_after=now + 100 * DAY)
    state = record_success(state, Enrolled(new, (new, pki.cert)))
    assert state == RenewalState(certificate=new, chain=(new, pki.cert))
    assert decide(state, POLICY, now).action is Action.WAIT


def test_backoff_retry_that_crosses_expiry_enrolls(cert) -> None:
    now = START + 100 * DAY - dt.timedelta(seconds=10)
    state = record_failure(RenewalState(certificate=cert), TIMEOUT, POLICY, now)
    assert decide(state, POLICY, now).action is Action.WAIT
    assert state.retry_at is not None
    assert decide(state, POLICY, state.retry_at).action is Action.ENROLL
    assert state.certificate is cert  # still kept: the caller decides when to drop it


def test_huge_failure_counts_stay_capped() -> None:
    assert POLICY.backoff(10_000) == 600


@pytest.mark.parametrize(
    "kwargs",
    [{"renew_at_fraction": 0}, {"renew_at_fraction": 1}, {"initial_backoff": 0},
     {"initial_backoff": 10, "max_backoff": 5}, {"backoff_factor": 0.5}],
)
def test_policy_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RenewalPolicy(**kwargs)
