"""The per-peer rate limiter as a plain object, on a clock the test moves."""

from __future__ import annotations

import pytest

from broker.service.ratelimit import RateLimit, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_allowed_then_one_request_per_interval():
    clock = Clock()
    limiter = RateLimiter(RateLimit(per_s=2, burst=3), clock)
    assert [limiter.check("a").allowed for _ in range(3)] == [True, True, True]
    refused = limiter.check("a")
    assert not refused.allowed and refused.retry_after_s == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.check("a").allowed
    assert not limiter.check("a").allowed
    clock.now += 10  # a quiet spell refills the bucket to the burst, not beyond
    assert [limiter.check("a").allowed for _ in range(4)] == [True, True, True, False]


def test_a_flooding_peer_does_not_take_another_peers_requests():
    clock = Clock()
    limiter = RateLimiter(RateLimit(per_s=1, burst=5), clock)
    flood = [limiter.check("sha256:flood").allowed for _ in range(100)]
    assert flood.count(True) == 5
    assert all(limiter.check("sha256:calm").allowed for _ in range(5))


def test_only_the_first_refusal_of_a_run_is_marked():
    clock = Clock()
    limiter = RateLimiter(RateLimit(per_s=1, burst=1), clock)
    assert limiter.check("a").allowed
    marks = [limiter.check("a").first_refusal for _ in range(3)]
    assert marks == [True, False, False]
    clock.now += 1
    assert limiter.check("a").allowed
    assert limiter.check("a").first_refusal  # a new run after an allowed request


def test_refused_requests_take_no_tokens_and_the_wait_says_when():
    clock = Clock()
    limiter = RateLimiter(RateLimit(per_s=0.1, burst=1), clock)
    assert limiter.check("a").allowed
    for _ in range(50):
        assert limiter.check("a").retry_after_s == pytest.approx(10)
    clock.now += 4
    assert limiter.check("a").retry_after_s == pytest.approx(6)
    clock.now += 6
    assert limiter.check("a").allowed


def test_a_clock_that_steps_back_refills_nothing():
    clock = Clock()
    limiter = RateLimiter(RateLimit(per_s=1, burst=1), clock)
    assert limiter.check("a").allowed
    clock.now -= 3600
    assert not limiter.check("a").allowed
    clock.now += 1
    assert limiter.check("a").allowed


def test_the_table_of_buckets_stays_bounded():
    clock = Clock()
    limiter = RateLimiter(RateLimit(per_s=1, burst=2), clock, max_keys=10)
    for i in range(1000):
        limiter.check(f"k{i}")
        clock.now += 0.01
    assert len(limiter) <= 10
    # refilled buckets go first: a key still short of tokens keeps its bucket
    limiter = RateLimiter(RateLimit(per_s=0.01, burst=2), clock, max_keys=3)
    for _ in range(3):
        limiter.check("busy")  # 0 tokens left
    limiter.check("k0")
    limiter.check("k1")  # 1 token left each
    clock.now += 150  # k0, k1 full again; busy at 1.5
    limiter.check("k2")
    assert len(limiter) == 2
    assert limiter.check("busy").allowed
    assert not limiter.check("busy").allowed  # not a fresh bucket of 2


@pytest.mark.parametrize("limit", [RateLimit(0, 1), RateLimit(-1, 1), RateLimit(1, 0),
                                   RateLimit(float("nan"), 1), RateLimit(float("inf"), 1)])
def test_a_limit_that_cannot_work_is_refused(limit):
    with pytest.raises(ValueError, match="per_s > 0 and burst >= 1"):
        RateLimiter(limit)
