"""Rate limiting: a pure token bucket with a cooldown, driven by an injected clock.

WvdS publishes three numbers and nothing else: 1000 requests/s, "burst
tolerance" 100, cooldown 100 ms; a limited request gets status 0x07 and no
crypto is done. Our reading of them (an interpretation, not a quote):

- **Token bucket**: capacity ``burst`` (100) tokens, refilled continuously at
  ``rate_per_s`` (1000/s, i.e. one token per millisecond); it starts full.
  Each request takes one token.
- **Cooldown**: a request that finds the bucket empty is rejected and starts
  a cooldown of ``cooldown_ms`` (100 ms). Every request inside the cooldown is
  rejected, even if tokens have refilled meanwhile. Rejections during a
  cooldown neither take tokens nor extend it, so the documented client advice
  (retry after 100, 200, 400 ms ...) always gets through on its first retry,
  when the bucket has refilled to a full burst.
- Time is an integer nanosecond count from the injected clock (default
  ``time.monotonic_ns``) and tokens are counted in "token-nanoseconds", so the
  arithmetic is exact: a test with a fake clock sees exactly the numbers above.
  A clock that goes backwards is treated as not moving.

The bucket has no I/O and never reads the clock itself: ``allow(now_ns)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Per-image settings: config.json ``"rate_limit": {...}``."""

    rate_per_s: int = 1000
    burst: int = 100
    cooldown_ms: int = 100
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.burst <= 0 or self.cooldown_ms < 0:
            raise ValueError("rate_limit: rate_per_s and burst must be > 0, cooldown_ms >= 0")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> RateLimitConfig:
        """Strict: unknown keys are an error naming the key."""
        raw = dict(raw or {})
        unknown = set(raw) - {"rate_per_s", "burst", "cooldown_ms", "enabled"}
        if unknown:
            raise ValueError(f"rate_limit: unknown key(s) {sorted(unknown)}")
        for name in ("rate_per_s", "burst", "cooldown_ms"):
            if name in raw and (isinstance(raw[name], bool) or not isinstance(raw[name], int)):
                raise ValueError(f"rate_limit.{name} must be an integer")
        if "enabled" in raw and not isinstance(raw["enabled"], bool):
            raise ValueError("rate_limit.enabled must be true or false")
        return cls(**raw)


class TokenBucket:
    """One client's bucket. Not thread-safe (the service is single-threaded)."""

    __slots__ = ("_config", "_cooldown_until", "_last", "_level")

    def __init__(self, config: RateLimitConfig, now_ns: int) -> None:
        self._config = config
        self._level = config.burst * _NS  # token-nanoseconds; starts full
        self._last = now_ns
        self._cooldown_until: int | None = None

    @property
    def tokens(self) -> float:
        """Tokens available at the last update (for tests and statistics)."""
        return self._level / _NS

    def allow(self, now_ns: int) -> bool:
        """Take one token at time ``now_ns``; False means answer RATE_LIMITED."""
        cfg = self._config
        if not cfg.enabled:
            return True
        if now_ns > self._last:
            self._level = min(cfg.burst * _NS, self._level + (now_ns - self._last) * cfg.rate_per_s)
            self._last = now_ns
        if self._cooldown_until is not None:
            if now_ns < self._cooldown_until:
                return False
            self._cooldown_until = None
        if self._level >= _NS:
            self._level -= _NS
            return True
        self._cooldown_until = now_ns + cfg.cooldown_ms * 1_000_000
        return False
