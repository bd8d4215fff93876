"""Rate-limit pacing, call statistics and retries as httpx transports.

Being transports, they wrap whatever actually carries the request: the real network, the
in-process sandbox (``httpx.ASGITransport``) or a respx mock. Compose them as
``RetryTransport(StatsTransport(ThrottleTransport(inner)))`` so that every attempt, retries
included, is counted and passes the throttle.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

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
from enrich_pipeline.provider.pacing import (
    DEFAULT_MAX_IN_FLIGHT,
    Clock,
    Jitter,
    Pacer,
    Sleep,
    StateStore,
)
from enrich_pipeline.provider.ratelimit_headers import parse_rate_limit

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
# The request extension that says how many look-ups a call carries (a bulk call's items), so
# the throttle can count it as the provider does; absent means one.
ITEMS_EXTENSION = "enrich_pipeline.items"

logger = logging.getLogger(__name__)


class ThrottleTransport(httpx.AsyncBaseTransport):
    """Paces requests to the provider's rate limit and sizes how many are in flight.

    The decisions are the ``Pacer``'s (see ``pacing``); ``store`` decides whether its state is
    this process's alone (the default) or shared with other processes on the same key.
    """

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        *,
        stats: CallStats,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        jitter: Jitter = random.uniform,
        jitter_max_s: float = THROTTLE_JITTER_S,
        store: StateStore | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        self._inner = inner
        self._clock = clock
        self.pacer = Pacer(
            stats=stats,
            clock=clock,
            sleep=sleep,
            jitter=jitter,
            jitter_max_s=jitter_max_s,
            store=store,
            max_in_flight=max_in_flight,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        items = int(request.extensions.get(ITEMS_EXTENSION, 1))
        units = await self.pacer.acquire(items)
        sent_at = self._clock()
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            self.pacer.abandon(units)
            raise
        self.pacer.complete(
            response.headers,
            response.status_code,
            self._clock() - sent_at,
            items=items,
            units=units,
        )
        return response

    async def aclose(self) -> None:
        self.pacer.close()
        await self._inner.aclose()


class StatsTransport(httpx.AsyncBaseTransport):
    """Counts every request that passes, and what came back: statuses, 429s and credits."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *, stats: CallStats) -> None:
        self._inner = inner
        self._stats = stats

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # Counted before it is sent: a request that fails on the way still cost an attempt.
        self._stats.requests += 1
        response = await self._inner.handle_async_request(request)
        self._stats.record_response(response.status_code)
        if response.status_code == 429:
            self._stats.rate_limited += 1
        if (used := header_int(response.headers, "Credits-Used")) is not None:
            self._stats.credits_used += used
        if (left := header_int(response.headers, "Credits-Remaining")) is not None:
            self._stats.credits_remaining = left
        return response

    def count_retry(self) -> None:
        """Pass as ``RetryTransport``'s ``on_retry``: from here a retry looks like any request."""
        self._stats.retries += 1

    async def aclose(self) -> None:
        await self._inner.aclose()


class DeadlineTransport(httpx.AsyncBaseTransport):
    """Holds a transport that does not time requests itself (the in-process sandbox's
    ``httpx.ASGITransport``, a mock) to the request's read timeout, as the network transport
    is: a slow answer raises ``httpx.ReadTimeout``, which ``RetryTransport`` retries."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        deadline_s = request.extensions.get("timeout", {}).get("read")
        if deadline_s is None:
            return await self._inner.handle_async_request(request)
        try:
            # Not wait_for: on Python 3.11 it can swallow a cancellation that arrives as the
            # answer does, and a cancelled run would carry on.
            async with asyncio.timeout(deadline_s):
                return await self._inner.handle_async_request(request)
        except TimeoutError:
            raise httpx.ReadTimeout(f"no answer within {deadline_s:g} s", request=request) from None

    async def aclose(self) -> None:
        await self._inner.aclose()


class RetryTransport(httpx.AsyncBaseTransport):
    """Retries 429, 5xx and transient network failures with full-jitter backoff, bounded.

    After the last attempt the last response is returned (or its exception re-raised), so the
    caller still sees the provider's status and Request-ID. ``on_retry`` is called before each
    retry (``StatsTransport.count_retry`` counts them).
    """

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        *,
        max_attempts: int = 5,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.time,
        jitter: Jitter = random.uniform,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        self._inner = inner
        self._on_retry = on_retry
        self._max_attempts = max_attempts
        self._backoff = wait_random_exponential(multiplier=backoff_base_s, max=backoff_max_s)
        self._sleep = sleep
        self._clock = clock
        self._jitter = jitter

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # A streamed body can be consumed only once; buffering it makes every attempt resendable.
        await request.aread()
        # Nearly every call succeeds at once, and setting up a retry loop costs more than the
        # rest of the client's work on a call: make the first attempt before building one.
        first: httpx.Response | Exception
        try:
            first = await self._inner.handle_async_request(request)
        except TRANSIENT_ERRORS as exc:
            first = exc
        else:
            if not _is_retryable(first) or self._max_attempts <= 1:
                return first
        replay = [first]

        async def attempt(request: httpx.Request) -> httpx.Response:
            if replay:  # tenacity's first attempt is the one already made
                outcome = replay.pop()
                if isinstance(outcome, Exception):
                    raise outcome
                return outcome
            return await self._inner.handle_async_request(request)

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
        response: httpx.Response = await retrying(attempt, request)
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
        if self._on_retry is not None:
            self._on_retry()
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


def header_int(headers: httpx.Headers, name: str) -> int | None:
    """An integer header's value; ``None`` when absent or not an integer."""
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None
