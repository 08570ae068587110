"""Per-peer rate limits of the peer API: one token bucket per client certificate.

A plain object with no I/O (the clock is passed in). Each certificate fingerprint has a bucket
of ``burst`` tokens that refills at ``per_s`` tokens a second; a request takes one token, and a
request that finds none is refused with the time until one will be there. The API consults
it before it reads a request's body, so a peer that sends too much is answered 429 at little
cost and cannot starve the others or fill the store.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RateLimit:
    """``per_s`` requests a second sustained, ``burst`` at once after a quiet spell."""

    per_s: float = 20.0
    burst: int = 100


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: float = 0.0  # refused: seconds until the next request would be allowed
    first_refusal: bool = False  # refused, and the one before from this key was allowed


@dataclass
class _Bucket:
    tokens: float
    at: float
    refusing: bool = False


class RateLimiter:
    """Token buckets by key (a peer's certificate fingerprint).

    Buckets that have refilled are forgotten once more than ``max_keys`` are held (a full
    bucket and no bucket mean the same), so the table stays bounded.
    """

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 1024) -> None:
        if not 0 < limit.per_s < math.inf or limit.burst < 1:
            raise ValueError(f"a rate limit needs per_s > 0 and burst >= 1, not {limit}")
        self.limit = limit
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def _level(self, bucket: _Bucket, now: float) -> float:
        elapsed = max(now - bucket.at, 0.0)  # a clock that stepped back refills nothing
        return min(float(self.limit.burst), bucket.tokens + elapsed * self.limit.per_s)

    def check(self, key: str) -> Decision:
        """Take a token for one request from ``key``, or say how long to wait for one."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(float(self.limit.burst), now)
        bucket.tokens = self._level(bucket, now)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            bucket.refusing = False
            return Decision(True)
        first = not bucket.refusing
        bucket.refusing = True
        return Decision(False, (1.0 - bucket.tokens) / self.limit.per_s, first)

    def _forget_full(self, now: float) -> None:
        for key in [k for k, b in self._buckets.items() if self._level(b, now) >= self.limit.burst]:
            del self._buckets[key]
        if len(self._buckets) >= self.max_keys:  # all busy: drop the longest quiet ones
            for key in sorted(self._buckets, key=lambda k: self._buckets[k].at)[
                    : len(self._buckets) - self.max_keys + 1]:
                del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)
