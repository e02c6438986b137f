"""Token bucket (1000/s, burst 100) with a 100 ms cooldown, on a fake clock."""

from __future__ import annotations

import pytest

from tasks.crypto_service.ratelimit import RateLimitConfig, TokenBucket

MS = 1_000_000  # ns
T0 = 5_000 * MS


def drain(bucket: TokenBucket, now: int) -> int:
    """Requests allowed at one instant until the first rejection."""
    n = 0
    while bucket.allow(now):
        n += 1
        assert n <= 10_000_000
    return n


def test_defaults_are_the_published_numbers() -> None:
    cfg = RateLimitConfig()
    assert (cfg.rate_per_s, cfg.burst, cfg.cooldown_ms, cfg.enabled) == (1000, 100, 100, True)


def test_burst_of_100_then_rejected() -> None:
    bucket = TokenBucket(RateLimitConfig(), T0)
    assert drain(bucket, T0) == 100


def test_cooldown_blocks_for_100ms_even_with_tokens_back() -> None:
    bucket = TokenBucket(RateLimitConfig(), T0)
    drain(bucket, T0)  # rejection at T0 starts the cooldown
    assert not bucket.allow(T0 + 5 * MS)  # 5 tokens refilled, still cooling down
    assert not bucket.allow(T0 + 100 * MS - 1)
    assert bucket.allow(T0 + 100 * MS)
    # 100 ms refilled a full burst (capped at 100), one was just taken
    assert drain(bucket, T0 + 100 * MS) == 99


def test_rejections_inside_the_cooldown_do_not_extend_it() -> None:
    bucket = TokenBucket(RateLimitConfig(), T0)
    drain(bucket, T0)
    for ms in range(1, 100, 7):  # a client hammering during the cooldown
        assert not bucket.allow(T0 + ms * MS)
    assert bucket.allow(T0 + 100 * MS)


def test_exactly_the_refill_rate_is_sustainable() -> None:
    bucket = TokenBucket(RateLimitConfig(), T0)
    # 10 s at one request per millisecond = 1000/s: never limited
    assert all(bucket.allow(T0 + i * MS) for i in range(10_000))


def test_above_the_rate_is_limited_after_the_burst() -> None:
    bucket = TokenBucket(RateLimitConfig(), T0)
    step = MS // 2  # 2000/s: the bucket loses one token every 2 requests
    results = [bucket.allow(T0 + i * step) for i in range(400)]
    first_reject = results.index(False)
    assert 190 <= first_reject <= 200  # burst 100 + ~100 refilled meanwhile


def test_refill_is_capped_at_the_burst() -> None:
    bucket = TokenBucket(RateLimitConfig(), T0)
    bucket.allow(T0)
    assert drain(bucket, T0 + 3_600_000 * MS) == 100


def test_clock_going_backwards_refills_nothing() -> None:
    bucket = TokenBucket(RateLimitConfig(burst=2), T0)
    assert bucket.allow(T0) and bucket.allow(T0)
    assert not bucket.allow(T0 - 1_000 * MS)
    assert bucket.tokens == 0


def test_disabled_never_limits() -> None:
    bucket = TokenBucket(RateLimitConfig(enabled=False), T0)
    assert drain_limited(bucket, 5000)


def drain_limited(bucket: TokenBucket, n: int) -> bool:
    return all(bucket.allow(T0) for _ in range(n))


def test_configurable_for_a_benchmark_image() -> None:
    cfg = RateLimitConfig.from_dict({"rate_per_s": 1_000_000, "burst": 10_000, "cooldown_ms": 0})
    bucket = TokenBucket(cfg, T0)
    assert drain(bucket, T0) == 10_000
    assert bucket.allow(T0 + 1 * MS)  # no cooldown, 1000 tokens back after 1 ms


@pytest.mark.parametrize(
    "raw",
    [
        {"rate": 5},  # unknown key
        {"burst": True},
        {"burst": 1.5},
        {"rate_per_s": 0},
        {"cooldown_ms": -1},
        {"enabled": "yes"},
    ],
)
def test_config_is_strict(raw: dict) -> None:
    with pytest.raises(ValueError):
        RateLimitConfig.from_dict(raw)
