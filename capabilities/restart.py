"""A task's restart policy as the image declares it (``tasks.NAME.restart``). Pure: no I/O.

Two forms. The short one is today's ``restart: never | on-failure | always``; the long one says
how fast and how often (the anchors: systemd's ``Restart=``, ``RestartSec=`` with
``RestartSteps=``/``RestartMaxDelaySec=``, ``StartLimitIntervalSec=``/``StartLimitBurst=``;
Erlang/OTP supervisors' intensity and period; Genode init's restart of a child)::

    restart:
      policy: on-failure        # never | on-failure (non-zero exit or a signal) | always
      backoff: {initial: 100ms, max: 30s, factor: 2}   # delay before restart n: initial * factor**k, at most max
      intensity: {restarts: 5, period: 60s}            # more restarts than this within period: give up

``k`` is the number of restarts already made within the intensity period, so the delay grows
while a task keeps failing and shrinks back once it has run well for a period. Durations are
seconds (``1.5``) or a number with ``ms``, ``s`` or ``min``. Left-out keys take the defaults
below. The short form means the long form with every default, unless the task also declares the
older ``restart_limit: N``: then it keeps its old meaning exactly (restart at once, at most N
times in the task's life, no window). ``restart_limit`` with the long form is a lifetime cap on
top of the window. What Moe does with a policy is ``roottasks.moe.supervision``.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import yaml

POLICIES = ("never", "on-failure", "always")
KEYS = {"policy", "backoff", "intensity"}
BACKOFF_KEYS = {"initial", "max", "factor"}
INTENSITY_KEYS = {"restarts", "period"}
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min)?\s*$")
DURATION_UNITS = {None: 1.0, "s": 1.0, "ms": 0.001, "min": 60.0}
MAX_DURATION_S = 24 * 3600.0


@dataclasses.dataclass(frozen=True)
class RestartPolicy:
    policy: str = "never"
    backoff_initial_s: float = 0.1  #: delay before the first restart of a period
    backoff_max_s: float = 30.0  #: the delay never grows past this
    backoff_factor: float = 2.0  #: each further restart within the period waits this much longer
    intensity_restarts: int = 5  #: at most this many restarts ...
    intensity_period_s: float = 60.0  #: ... within this many seconds; one more and Moe gives up
    lifetime_limit: int | None = None  #: ``restart_limit``: restarts in the task's whole life (None: no cap)

    def restarts_on(self, code: int) -> bool:
        """Does the policy ask for a restart after an exit with status ``code``?"""
        return self.policy == "always" or (self.policy == "on-failure" and code != 0)

    def describe(self) -> str:
        if self.policy == "never":
            return "never"
        parts = [self.policy]
        if self.backoff_initial_s:
            parts.append(f"backoff {_secs(self.backoff_initial_s)}..{_secs(self.backoff_max_s)} "
                         f"x{self.backoff_factor:g}")
        if self.intensity_restarts:
            parts.append(f"{self.intensity_restarts} in {_secs(self.intensity_period_s)}")
        if self.lifetime_limit is not None:
            parts.append(f"at most {self.lifetime_limit}")
        return ", ".join(parts)


def legacy(policy: str, limit: int) -> RestartPolicy:
    """``restart: POLICY`` with ``restart_limit: N``: the meaning these had before the long form."""
    return RestartPolicy(policy, 0.0, 0.0, 1.0, 0, 0.0, limit)


def _secs(s: float) -> str:
    return f"{s * 1000:g}ms" if s < 1 else f"{s:g}s"


def parse_duration(text: str) -> float:
    m = DURATION_RE.match(str(text))
    if not m:
        raise ValueError(f"expected a duration such as 0.5, 250ms, 30s or 2min, got {text!r}")
    value = float(m.group(1)) * DURATION_UNITS[m.group(2)]
    if value > MAX_DURATION_S:
        raise ValueError(f"expected a duration of at most 24 hours, got {text!r}")
    return value


def parse(ck: Any, field: str, node: Any, limit: int | None) -> RestartPolicy | None:
    """The ``restart`` value at ``node`` (a scalar or the long form), through the image checker ``ck``
    (``capabilities.image._Checker``: problems name file, line and field). ``limit``: ``restart_limit``
    if the task declares it. None if there was a problem (already reported)."""
    if not isinstance(node, yaml.MappingNode):
        policy = ck.scalar(node, field) or "never"
        if policy not in POLICIES:
            ck.problem(node, field, f"expected one of {', '.join(POLICIES)}, got {policy!r}")
            return None
        return legacy(policy, limit) if limit is not None else RestartPolicy(policy)
    body = ck.mapping(node, field, KEYS)
    base = RestartPolicy()
    values: dict[str, Any] = {"lifetime_limit": limit}
    ok = True
    if "policy" not in body:
        ck.problem(node, f"{field}.policy", f"missing required key 'policy' (one of {', '.join(POLICIES)})")
        ok = False
    else:
        policy = ck.scalar(body["policy"][1], f"{field}.policy")
        if policy not in POLICIES:
            ck.problem(body["policy"][1], f"{field}.policy", f"expected one of {', '.join(POLICIES)}, got {policy!r}")
            ok = False
        values["policy"] = policy
    if "backoff" in body:
        sub = ck.mapping(body["backoff"][1], f"{field}.backoff", BACKOFF_KEYS)
        for key, attr in (("initial", "backoff_initial_s"), ("max", "backoff_max_s")):
            if key in sub:
                value = ck.duration(sub[key][1], f"{field}.backoff.{key}")
                ok &= value is not None
                values[attr] = value
        if "factor" in sub:
            text = ck.scalar(sub["factor"][1], f"{field}.backoff.factor", "a number")
            try:
                factor = float(text) if text is not None else None
            except ValueError:
                factor = None
            if factor is None or not 1.0 <= factor <= 100.0:
                ck.problem(sub["factor"][1], f"{field}.backoff.factor",
                           f"expected a number from 1 to 100, got {text!r}")
                ok = False
            values["backoff_factor"] = factor
        initial = values.get("backoff_initial_s", base.backoff_initial_s)
        most = values.get("backoff_max_s", base.backoff_max_s)
        if ok and most < initial:
            ck.problem(sub.get("max", (None, body["backoff"][1]))[1], f"{field}.backoff.max",
                       f"the largest delay ({most:g} s) is below the first one ({initial:g} s)")
            ok = False
    if "intensity" in body:
        sub = ck.mapping(body["intensity"][1], f"{field}.intensity", INTENSITY_KEYS)
        if "restarts" in sub:
            restarts = ck.integer(sub["restarts"][1], f"{field}.intensity.restarts", 1)
            ok &= restarts is not None
            values["intensity_restarts"] = restarts
        if "period" in sub:
            period = ck.duration(sub["period"][1], f"{field}.intensity.period")
            if period is not None and period <= 0:
                ck.problem(sub["period"][1], f"{field}.intensity.period", "expected a period > 0")
                period = None
            ok &= period is not None
            values["intensity_period_s"] = period
    if not ok:
        return None
    return dataclasses.replace(base, **values)
