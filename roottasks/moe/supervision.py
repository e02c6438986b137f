"""Moe's restart decisions: exponential backoff within an intensity window. Pure; the clock is passed in.

``after_exit(policy, state, code, now)`` says what to do when a task's incarnation has exited:
restart it at a time (``Restart``), leave it finished because the policy does not restart on that
status (``Finished``), or give up because it failed too often (``GiveUp``). ``started(state, now)``
records a restart once Moe has made it. Nothing here sleeps or reads a clock: Moe passes
``time.monotonic()`` and waits for the next attempt with its IPC receive timeout; the tests pass
numbers.

The rules (capabilities/restart.py declares them; docs/supervision.md explains them):

- a restart is due after ``initial * factor**k`` seconds, at most ``max``, where ``k`` is the
  number of restarts within the last ``period`` seconds (systemd's RestartSec growing with
  RestartSteps up to RestartMaxDelaySec; the window makes the delay shrink back once the task has
  run well for a period);
- if ``restarts`` restarts already happened within the last ``period`` seconds, one more exit
  gives up (Erlang/OTP: more than MaxR restarts within MaxT seconds; systemd StartLimitBurst
  within StartLimitIntervalSec);
- ``lifetime_limit`` (``restart_limit``) caps the restarts over the task's whole life.
"""
from __future__ import annotations

import dataclasses

from capabilities.restart import RestartPolicy


@dataclasses.dataclass
class SupervisionState:
    """What Moe remembers about one task across its incarnations."""

    generation: int = 1  #: incarnations started so far (the first start is 1)
    restarts: int = 0  #: restarts made over the task's life
    history: list[float] = dataclasses.field(default_factory=list)  #: when each restart was made (the clock's s)
    next_attempt: float | None = None  #: when the pending restart is due (None: none pending)
    gave_up: str = ""  #: why Moe gave up (empty: it did not)


@dataclasses.dataclass(frozen=True)
class Restart:
    at: float  #: when (the clock's seconds)
    delay: float  #: at - now
    number: int  #: this will be restart number N of the task's life
    in_window: int  #: restarts already made within the intensity period


@dataclasses.dataclass(frozen=True)
class Finished:
    """The policy does not restart after this exit status: the task is done (not a failure of Moe's)."""


@dataclasses.dataclass(frozen=True)
class GiveUp:
    reason: str


Decision = Restart | Finished | GiveUp


def in_window(policy: RestartPolicy, state: SupervisionState, now: float) -> int:
    if not policy.intensity_restarts:
        return 0
    return sum(1 for t in state.history if t > now - policy.intensity_period_s)


def delay(policy: RestartPolicy, k: int) -> float:
    """The backoff before a restart when ``k`` restarts were made within the period."""
    if policy.backoff_initial_s <= 0:
        return 0.0
    return min(policy.backoff_max_s, policy.backoff_initial_s * policy.backoff_factor ** min(k, 64))


def after_exit(policy: RestartPolicy, state: SupervisionState, code: int, now: float) -> Decision:
    if not policy.restarts_on(code):
        return Finished()
    if policy.lifetime_limit is not None and state.restarts >= policy.lifetime_limit:
        return GiveUp(f"restart limit {policy.lifetime_limit} reached")
    k = in_window(policy, state, now)
    if policy.intensity_restarts and k >= policy.intensity_restarts:
        return GiveUp(f"{k} restarts within {policy.intensity_period_s:g} s, its intensity limit")
    d = delay(policy, k)
    return Restart(now + d, d, state.restarts + 1, k)


def apply(state: SupervisionState, decision: Decision) -> None:
    """Record ``decision`` in ``state`` (the restart itself is recorded by ``started``)."""
    if isinstance(decision, Restart):
        state.next_attempt = decision.at
    else:
        state.next_attempt = None
        if isinstance(decision, GiveUp):
            state.gave_up = decision.reason


def due(state: SupervisionState, now: float) -> bool:
    return state.next_attempt is not None and state.next_attempt <= now


def started(state: SupervisionState, now: float, policy: RestartPolicy | None = None) -> None:
    """Moe has restarted the task at ``now``."""
    state.next_attempt = None
    state.restarts += 1
    state.generation += 1
    state.history.append(now)
    if policy is not None and policy.intensity_restarts:  # keep only what the window can still count
        state.history = [t for t in state.history if t > now - policy.intensity_period_s]


def message(name: str, how: str, code: int, policy: RestartPolicy, decision: Decision) -> str:
    """Moe's console line for an exit. The legacy policy (immediate, lifetime cap) keeps its old words."""
    if isinstance(decision, Restart):
        if policy.lifetime_limit is not None and not decision.delay:
            return f"{name} {how} ({code}); restart {decision.number} of {policy.lifetime_limit}"
        of = f" of {policy.lifetime_limit}" if policy.lifetime_limit is not None else ""
        return (f"{name} {how} ({code}); restart {decision.number}{of} in {decision.delay:.2f} s "
                f"({decision.in_window + 1} within {policy.intensity_period_s:g} s)"
                if policy.intensity_restarts else
                f"{name} {how} ({code}); restart {decision.number}{of} in {decision.delay:.2f} s")
    if isinstance(decision, GiveUp) and policy.intensity_restarts:
        return f"{name} {how} with status {code}; giving up: {decision.reason}"
    return f"{name} {how} with status {code}"
