"""Rate-limit pacing and retries as httpx transports.

Being transports, they wrap whatever actually carries the request: the real network, the
in-process sandbox (``httpx.ASGITransport``) or a respx mock. Compose them as
``RetryTransport(ThrottleTransport(inner))`` so that every attempt, retries included, passes the
throttle.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    wait_random_exponential,
)

from enrich_pipeline.provider.models import CallStats
from enrich_pipeline.provider.ratelimit_headers import RateLimitInfo, parse_rate_limit

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Jitter = Callable[[float, float], float]

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# Timeouts, refused connections and resets are transient. Other transport errors
# (UnsupportedProtocol, LocalProtocolError, ProxyError) are configuration mistakes: retrying
# them only delays the report.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)
# Spreads the workers that were all told the same Retry-After, so they do not return in a burst.
RETRY_AFTER_JITTER_S = 1.0
THROTTLE_JITTER_S = 0.5

logger = logging.getLogger(__name__)


class RateLimitState:
    """What the provider has told us about its rate limit, shared by every request of a client.

    Kept apart from the transport so pacing can be extended (learning the rate and spacing
    requests at it) without touching how responses are read.
    """

    def __init__(self) -> None:
        self.limit: int | None = None
        self.window_s: float | None = None
        self.remaining: int | None = None
        self.reset_at: float | None = None
        self.blocked_until: float | None = None
        self.in_flight = 0

    def delay_s(self, now: float) -> float:
        """How long the next request must wait before it may go out (0 = go now)."""
        if self.blocked_until is not None and self.blocked_until > now:
            return self.blocked_until - now
        if self.remaining == 0 and self.reset_at is not None and self.reset_at > now:
            return self.reset_at - now
        return 0.0

    def reserve(self, now: float) -> None:
        """Account for a request going out now."""
        if self.reset_at is not None and self.reset_at <= now:
            # The window rolled over; what is left in the new one is unknown until a response says.
            self.remaining = None
            self.reset_at = None
        if self.remaining is not None:
            self.remaining = max(0, self.remaining - 1)
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1

    def observe(self, info: RateLimitInfo | None, status_code: int, now: float) -> None:
        """Learn from one response (called after ``release`` for that request)."""
        if info is not None:
            limit = info.limit if info.limit is not None else info.policy_quota
            if limit is not None:
                self.limit = limit
            if info.window_s is not None:
                self.window_s = info.window_s
            if info.retry_after_s is not None:
                # Retry-After wins over every other signal, including a later window reset.
                self.blocked_until = now + info.retry_after_s
                self.remaining = None
                self.reset_at = None
                return
            if info.remaining is not None:
                # Requests still in flight may not be counted in this figure yet: assume they are
                # not, so concurrent workers never overrun the window between them.
                self.remaining = max(0, info.remaining - self.in_flight)
                self.reset_at = info.reset_at
            elif info.reset_at is not None:
                self.reset_at = info.reset_at
        if status_code == 429:
            self.remaining = 0


class ThrottleTransport(httpx.AsyncBaseTransport):
    """Holds requests back while the provider's rate-limit window is used up."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        *,
        stats: CallStats,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        jitter: Jitter = random.uniform,
        state: RateLimitState | None = None,
        jitter_max_s: float = THROTTLE_JITTER_S,
    ) -> None:
        self._inner = inner
        self._stats = stats
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._jitter_max_s = jitter_max_s
        self.state = state if state is not None else RateLimitState()
        self._announced_until: float | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._wait_for_slot()
        try:
            response = await self._inner.handle_async_request(request)
        finally:
            self.state.release()
        now = self._clock()
        self.state.observe(parse_rate_limit(response.headers, now), response.status_code, now)
        return response

    async def _wait_for_slot(self) -> None:
        # Re-check after every pause: another response may have moved the deadline meanwhile.
        # Checking and reserving happen with no await in between, so no lock is needed.
        while (delay := self.state.delay_s(now := self._clock())) > 0:
            self._announce(now + delay, delay)
            pause = delay + self._jitter(0.0, self._jitter_max_s)
            self._stats.throttle_waits += 1
            self._stats.throttle_wait_s += pause
            await self._sleep(pause)
        self.state.reserve(self._clock())

    def _announce(self, until: float, delay: float) -> None:
        # Every waiting worker sees the same deadline; say it once.
        if self._announced_until != until:
            self._announced_until = until
            logger.info("Provider rate limit reached: pausing requests for %.1f s", delay)

    async def aclose(self) -> None:
        await self._inner.aclose()


class RetryTransport(httpx.AsyncBaseTransport):
    """Retries 429, 5xx and transient network failures with full-jitter backoff, bounded.

    After the last attempt the last response is returned (or its exception re-raised), so the
    caller still sees the provider's status and Request-ID. Also counts calls and credits.
    """

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        *,
        stats: CallStats,
        max_attempts: int = 5,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.time,
        jitter: Jitter = random.uniform,
    ) -> None:
        self._inner = inner
        self._stats = stats
        self._max_attempts = max_attempts
        self._backoff = wait_random_exponential(multiplier=backoff_base_s, max=backoff_max_s)
        self._sleep = sleep
        self._clock = clock
        self._jitter = jitter

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # A streamed body can be consumed only once; buffering it makes every attempt resendable.
        await request.aread()
        # A fresh AsyncRetrying per request: its iteration state is not safe to share between
        # concurrent tasks.
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=self._wait_s,
            retry=retry_if_exception_type(TRANSIENT_ERRORS) | retry_if_result(_is_retryable),
            sleep=self._sleep,
            before_sleep=self._before_sleep,
            retry_error_callback=_last_outcome,
        )
        response: httpx.Response = await retrying(self._attempt, request)
        return response

    async def _attempt(self, request: httpx.Request) -> httpx.Response:
        self._stats.requests += 1
        response = await self._inner.handle_async_request(request)
        self._stats.record_response(response.status_code)
        if response.status_code == 429:
            self._stats.rate_limited += 1
        if (used := _header_int(response.headers, "Credits-Used")) is not None:
            self._stats.credits_used += used
        if (left := _header_int(response.headers, "Credits-Remaining")) is not None:
            self._stats.credits_remaining = left
        return response

    def _wait_s(self, state: RetryCallState) -> float:
        outcome = state.outcome
        if outcome is not None and not outcome.failed:
            response: httpx.Response = outcome.result()
            info = parse_rate_limit(response.headers, self._clock())
            if info is not None and info.retry_after_s is not None:
                return info.retry_after_s + self._jitter(0.0, RETRY_AFTER_JITTER_S)
        return self._backoff(state)

    async def _before_sleep(self, state: RetryCallState) -> None:
        self._stats.retries += 1
        outcome = state.outcome
        if outcome is None:
            return
        if outcome.failed:
            reason = type(outcome.exception()).__name__
        else:
            response: httpx.Response = outcome.result()
            reason = f"HTTP {response.status_code}"
            # The discarded answer's body is never read: release its connection now.
            await response.aclose()
        wait_s = state.upcoming_sleep
        logger.debug(
            "Retrying %s after %s (attempt %d, waiting %.1f s)",
            state.args[0].url.path,
            reason,
            state.attempt_number,
            wait_s,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


def _is_retryable(response: httpx.Response) -> bool:
    return response.status_code in RETRYABLE_STATUSES


def _last_outcome(state: RetryCallState) -> httpx.Response:
    """Out of attempts: hand back the final response, or raise the final exception."""
    assert state.outcome is not None  # tenacity only gives up after an attempt
    response: httpx.Response = state.outcome.result()
    return response


def _header_int(headers: httpx.Headers, name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None
