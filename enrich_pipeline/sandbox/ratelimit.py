"""Server-side rate limiting for the sandbox: fixed windows (a minute by default) or a token bucket.

Both limiters are synchronous and never await, so a decision is atomic under asyncio.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from enrich_pipeline.sandbox.config import LimitAlgorithm

WINDOW_S = 60


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_epoch_s: int
    # Whole seconds from now until ``reset_epoch_s``, for delta-seconds headers.
    reset_after_s: int
    # Whole seconds to wait before retrying; 0 when allowed.
    retry_after_s: int


class RateLimiter(Protocol):
    limit: int

    def acquire(self, cost: int = 1) -> Decision: ...


def _retry_after(wait_s: float) -> int:
    return max(1, math.ceil(wait_s))


class FixedWindowLimiter:
    """``limit`` units per window; windows are aligned to multiples of ``window_s`` of the epoch."""

    def __init__(
        self, limit: int, clock: Callable[[], float] = time.time, window_s: float = WINDOW_S
    ) -> None:
        self.limit = limit
        self._clock = clock
        self._window_s = window_s
        self._window_start = -1.0
        self._used = 0

    def acquire(self, cost: int = 1) -> Decision:
        now = self._clock()
        window_start = (now // self._window_s) * self._window_s
        if window_start != self._window_start:
            self._window_start = window_start
            self._used = 0
        # A cost above the capacity could never pass; capped, it passes in a fresh window.
        cost = min(cost, self.limit)
        reset = window_start + self._window_s
        allowed = self._used + cost <= self.limit
        if allowed:
            self._used += cost
        return Decision(
            allowed=allowed,
            limit=self.limit,
            remaining=self.limit - self._used,
            reset_epoch_s=math.ceil(reset),
            reset_after_s=math.ceil(reset - now),
            retry_after_s=0 if allowed else _retry_after(reset - now),
        )


class TokenBucketLimiter:
    """Bucket of ``limit`` tokens refilled at ``limit / window_s`` per second.

    The reset reported is when the next whole token arrives (now when the bucket is full).
    """

    def __init__(
        self, limit: int, clock: Callable[[], float] = time.time, window_s: float = WINDOW_S
    ) -> None:
        self.limit = limit
        self._clock = clock
        self._rate = limit / window_s
        self._tokens = float(limit)
        self._updated = clock()

    def acquire(self, cost: int = 1) -> Decision:
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self.limit, self._tokens + elapsed * self._rate)
        self._updated = now
        cost = min(cost, self.limit)
        allowed = self._tokens >= cost
        if allowed:
            self._tokens -= cost
        remaining = math.floor(self._tokens)
        next_token_s = (
            0.0 if remaining >= self.limit else (remaining + 1 - self._tokens) / self._rate
        )
        return Decision(
            allowed=allowed,
            limit=self.limit,
            remaining=remaining,
            reset_epoch_s=math.ceil(now + next_token_s),
            reset_after_s=math.ceil(next_token_s),
            retry_after_s=0 if allowed else _retry_after((cost - self._tokens) / self._rate),
        )


def make_limiter(
    algorithm: LimitAlgorithm,
    limit: int,
    clock: Callable[[], float] = time.time,
    window_s: float = WINDOW_S,
) -> RateLimiter:
    if algorithm == "token_bucket":
        return TokenBucketLimiter(limit, clock, window_s)
    return FixedWindowLimiter(limit, clock, window_s)
