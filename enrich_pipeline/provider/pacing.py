"""Pacing: learn the provider's rate limit and send at it, never over it.

Three signals, strongest first. ``Retry-After`` holds every request until it has passed. A
known ``Remaining`` (less our requests in flight) too small for the next request holds it until
the window resets. Otherwise a client-side token bucket spaces the requests at the learned rate
(limit / window, less ``PACING_MARGIN``). Once the server reports ``Remaining`` our bucket may
hold a whole limit, but never more than the server says is left (its ``Remaining`` minus our
requests still in flight), so a run starts by spending what is left at once; without
``Remaining`` it holds about a second of the rate.

Why this is right whichever algorithm the server uses, without knowing which:

- token bucket: ``Remaining`` is the server bucket's fill. Ours is cut to it (less what is in
  flight) on every answer and refills slower than the server's, so ours runs dry first: we
  spend the initial fill, then pace just under the refill rate, and the server never refuses.
- fixed windows: spending the window's ``Remaining`` and then waiting for the reset it
  announced is exactly what the window allows. The known ``Remaining`` caps every window on
  its own, whatever our bucket holds; our bucket can refill to at most what the window's
  reset pause let it (under the limit), so the burst that opens the next window fits it.

A pause loses nothing either way: both buckets keep filling while we wait, and the backlog goes
out after it. The concurrency needed to keep the pace is Little's law (rate × latency); while
the bucket holds more than that, as many requests as it holds may be in flight.

What a request costs. A single look-up counts one unit against the limit. Whether a bulk call
counts one or one per item depends on the provider, so its own accounting decides: an accepted
bulk call of ``n`` items after which ``Remaining`` is above ``limit - n`` cannot have cost
``n``, so bulk calls count one request; otherwise they count per item. Until the first
accepted bulk call says which, a bulk call is counted per item, so not knowing can never
overspend (the enrichment client sends its first bulk call alone, so the answer sizes the
rest). That figure is the server's right after counting the call itself
(``limit`` less its cost less whatever else was counted), so concurrent requests, ours or
another client's, can make a per-request call look per item, never the reverse: per item is
the safe reading, and the verdict moves from it to per request only on that contradiction,
never back. When bulk calls count per item, the largest bulk call worth making is a quarter of
the limit (``Pacer.bulk_items``).

The state is plain data behind a store, so one process can keep it in memory
(``LocalStateStore``) or several processes can share it through a file
(``enrich_pipeline.provider.shared_limit``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import httpx

from enrich_pipeline.provider.models import CallStats
from enrich_pipeline.provider.ratelimit_headers import RateLimitInfo, parse_rate_limit

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Jitter = Callable[[float, float], float]

# Pace this far under the learned rate: room for clock drift and for a window boundary the
# server draws a little differently from us.
PACING_MARGIN = 0.015
# Without a Remaining to cap it, the client bucket holds this many seconds of the rate (but at
# least MIN_BURST units and never more than the limit): enough to absorb scheduling hiccups,
# too little to drain a token-bucket server.
BURST_S = 1.0
MIN_BURST = 2
# Requests in flight before the first answer says anything about the limit.
INITIAL_IN_FLIGHT = 4
DEFAULT_MAX_IN_FLIGHT = 32
# When bulk calls count per item, one costs at most this share of the limit: whole calls then
# pace smoothly and fill a window to within a few units.
BULK_SHARE_OF_LIMIT = 4
# Little's law with room for latency above its average.
LATENCY_HEADROOM = 1.5
LATENCY_EWMA_WEIGHT = 0.2

logger = logging.getLogger(__name__)


class WaitReason(StrEnum):
    PACING = "pacing"
    RESET = "reset"
    RETRY_AFTER = "retry_after"


@dataclass
class PacingState:
    """What is known about one key's rate limit, and what our requests have used of it.

    Times are seconds on the caller's clock. Counts are units of the limit (what requests cost
    against it). ``in_flight`` maps an owner (a process, or ``local``) to ``[units, last
    update]`` so a crashed process's share can expire. ``bulk_per_item`` is ``None`` until an
    answer has shown how bulk calls are counted.
    """

    limit: int | None = None
    window_s: float | None = None
    window_from_policy: bool = False
    tokens: float = 0.0
    tokens_at: float = 0.0
    remaining: int | None = None
    reported: int | None = None
    reset_at: float | None = None
    blocked_until: float | None = None
    in_flight: dict[str, list[float]] = field(default_factory=dict)
    reports_remaining: bool = False
    bulk_per_item: bool | None = None

    @property
    def rate_per_s(self) -> float | None:
        """The provider's allowed rate, as learned (no margin)."""
        if self.limit is None or not self.window_s:
            return None
        return self.limit / self.window_s

    def total_in_flight(self) -> int:
        return int(sum(count for count, _ in self.in_flight.values()))

    def units(self, items: int) -> int:
        """What a call with ``items`` look-ups counts against the limit, as far as is known."""
        if items <= 1 or self.bulk_per_item is False:
            return 1
        # A server cannot hold back a call for more than its whole limit.
        return items if self.limit is None else min(items, self.limit)

    def hold(self, now: float, units: int = 1) -> tuple[float | None, WaitReason | None]:
        """Until when the server wants a request of ``units`` held, and why (``None, None``: it
        does not)."""
        self._roll_over(now)
        if self.blocked_until is not None:
            return self.blocked_until, WaitReason.RETRY_AFTER
        if self.remaining is not None and self.remaining < units and self.reset_at is not None:
            return self.reset_at, WaitReason.RESET
        return None, None

    def take_token(self, now: float, units: int = 1) -> float:
        """Take ``units`` tokens of the pacing bucket; returns how long until they are due
        (GCRA: the bucket may go negative, each taker waiting its turn). 0 when no rate is
        known."""
        rate = self.rate_per_s
        if rate is None:
            return 0.0
        self._refill(now)
        self.tokens -= units
        return max(0.0, -self.tokens / (rate * (1 - PACING_MARGIN)))

    def spendable(self, now: float) -> int:
        """Units that may go out at once now: what the bucket holds, within what is left."""
        if self.rate_per_s is None:
            return 0
        self._refill(now)
        left = self.tokens if self.remaining is None else min(self.tokens, self.remaining)
        return max(0, math.floor(left))

    def reserve(self, now: float, owner: str, units: int = 1) -> None:
        """Account for a request going out now; call only when ``hold`` said go."""
        if self.remaining is not None:
            self.remaining = max(0, self.remaining - units)
        entry = self.in_flight.setdefault(owner, [0, now])
        entry[0] += units
        entry[1] = now

    def release(self, now: float, owner: str, units: int = 1) -> None:
        entry = self.in_flight.get(owner)
        if entry is None:
            return
        entry[0] -= units
        entry[1] = now
        if entry[0] <= 0:
            del self.in_flight[owner]

    def expire(self, now: float, ttl_s: float, keep: str) -> None:
        """Forget other owners' in-flight counts not updated for ``ttl_s`` (a crashed process)."""
        for owner in [o for o, (_, at) in self.in_flight.items() if o != keep and at < now - ttl_s]:
            del self.in_flight[owner]

    def observe(
        self, info: RateLimitInfo | None, status_code: int, now: float, items: int = 1
    ) -> None:
        """Learn from the answer to a call of ``items`` look-ups; call after ``release`` for
        its request."""
        self._roll_over(now)
        # Bring the bucket up to now first: whatever the answer sets it to holds from now on.
        self._refill(now)
        if items > 1 and 200 <= status_code < 300:
            self._learn_bulk_cost(info, items)
        if info is not None:
            left: int | None = None
            window_over = info.reset_at is not None and info.reset_at <= now
            if info.remaining is not None and not window_over:
                # Our requests still in flight may not be counted in this figure yet: assume
                # they are not, so concurrent senders never overrun the window between them.
                left = max(0, info.remaining - self.total_in_flight())
                self.reports_remaining = True
            self._learn_limit(info, now)
            if info.retry_after_s is not None:
                # Retry-After wins over every other signal in the same answer.
                until = now + info.retry_after_s
                self.blocked_until = max(until, self.blocked_until or until)
                self.remaining = None
                self.reported = None
                self.reset_at = None
                self.tokens = min(self.tokens, 0.0)
                return
            if left is not None and (self.reported is None or info.remaining <= self.reported):
                # Until the reset, a figure above the lowest one reported is an answer
                # overtaken by a newer one (a window only counts down), so it is ignored. A
                # token bucket's refill shows after its reset, the time of its next token,
                # at most seconds away. The bucket is only ever lowered: its own refill is what
                # lets it spend more, so requests already waiting their turn (a negative
                # bucket) are never counted twice.
                self.reported = info.remaining
                self.remaining = left
                self.reset_at = info.reset_at
                self.tokens = min(self.tokens, float(left))
        if status_code == 429:
            self.tokens = min(self.tokens, 0.0)
            if self.reset_at is not None:
                self.remaining = 0

    def _learn_bulk_cost(self, info: RateLimitInfo | None, items: int) -> None:
        """How bulk calls are counted, from an accepted one of ``items`` look-ups."""
        limit = self.limit
        if info is not None:
            limit = next((n for n in (info.limit, info.policy_quota) if n is not None), limit)
        if info is None or info.remaining is None or limit is None:
            # Nothing to tell by: count a bulk call as one request, and let 429s teach.
            if self.bulk_per_item is None:
                self.bulk_per_item = False
            return
        # The figure is the server's right after counting this very call, so nothing else
        # counted can raise it: above ``limit - items`` the call cost less than its items.
        if info.remaining > limit - min(items, limit):
            self.bulk_per_item = False
        elif self.bulk_per_item is None:
            self.bulk_per_item = True

    def _learn_limit(self, info: RateLimitInfo, now: float) -> None:
        known = self.rate_per_s is not None
        limit = info.limit if info.limit is not None else info.policy_quota
        if limit is not None and limit > 0:
            self.limit = limit
        if info.window_s is not None:
            self.window_s = info.window_s
            self.window_from_policy = True
        elif not self.window_from_policy and limit is not None and info.reset_at is not None:
            # No policy: the window is the longest time to a reset we have been told.
            delta = float(math.ceil(info.reset_at - now))
            if delta > (self.window_s or 0.0):
                self.window_s = delta
        if not known and (rate := self.rate_per_s) is not None:
            self.tokens = self._capacity(rate)
            self.tokens_at = now

    def _capacity(self, rate: float) -> float:
        assert self.limit is not None  # only called once a rate is known
        if self.reports_remaining:
            # Every answer cuts the bucket to what the server says is left.
            return float(self.limit)
        return float(min(self.limit, max(MIN_BURST, rate * BURST_S)))

    def _refill(self, now: float) -> None:
        rate = self.rate_per_s
        if rate is None:
            return
        elapsed = max(0.0, now - self.tokens_at)
        self.tokens = min(self._capacity(rate), self.tokens + elapsed * rate * (1 - PACING_MARGIN))
        self.tokens_at = now

    def _roll_over(self, now: float) -> None:
        if self.reset_at is not None and self.reset_at <= now:
            # A new window: what is left in it is unknown until an answer says.
            self.remaining = None
            self.reported = None
            self.reset_at = None
        if self.blocked_until is not None and self.blocked_until <= now:
            self.blocked_until = None

    def to_json(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "window_s": self.window_s,
            "window_from_policy": self.window_from_policy,
            "tokens": self.tokens,
            "tokens_at": self.tokens_at,
            "remaining": self.remaining,
            "reported": self.reported,
            "reset_at": self.reset_at,
            "blocked_until": self.blocked_until,
            "in_flight": self.in_flight,
            "reports_remaining": self.reports_remaining,
            "bulk_per_item": self.bulk_per_item,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PacingState:
        """The state written by ``to_json``; raises ``ValueError``/``TypeError`` if it is not."""
        in_flight = {
            str(owner): [int(count), float(at)] for owner, (count, at) in data["in_flight"].items()
        }
        return cls(
            limit=_optional(int, data["limit"]),
            window_s=_optional(float, data["window_s"]),
            window_from_policy=bool(data["window_from_policy"]),
            tokens=float(data["tokens"]),
            tokens_at=float(data["tokens_at"]),
            remaining=_optional(int, data["remaining"]),
            reported=_optional(int, data["reported"]),
            reset_at=_optional(float, data["reset_at"]),
            blocked_until=_optional(float, data["blocked_until"]),
            in_flight=in_flight,
            reports_remaining=bool(data["reports_remaining"]),
            bulk_per_item=_optional(bool, data["bulk_per_item"]),
        )


def _optional(cast: Callable[[Any], Any], value: Any) -> Any:
    return None if value is None else cast(value)


class StateStore(Protocol):
    """Where a ``PacingState`` lives; every read-modify-write happens in one transaction."""

    owner: str

    def transaction(self, now: float) -> AbstractContextManager[PacingState]: ...

    def close(self) -> None: ...


class LocalStateStore:
    """The state in this process's memory: the default, and all the in-process sandbox needs."""

    owner = "local"

    def __init__(self) -> None:
        self._state = PacingState()

    @contextmanager
    def transaction(self, now: float) -> Iterator[PacingState]:
        # Callers never await inside a transaction, so under asyncio it is atomic as it is.
        yield self._state

    def close(self) -> None:
        return None


class Pacer:
    """Decides when each request may go out, and how many may be in flight at once.

    ``target`` is the Little's-law figure for the learned rate; more may be in flight while the
    bucket holds more than that (a burst).
    """

    def __init__(
        self,
        *,
        stats: CallStats,
        clock: Clock,
        sleep: Sleep,
        jitter: Jitter,
        jitter_max_s: float,
        store: StateStore | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        log: logging.Logger | None = None,
    ) -> None:
        self.logger = log or logger
        self._stats = stats
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._jitter_max_s = jitter_max_s
        self._store: StateStore = store if store is not None else LocalStateStore()
        self._max_in_flight = max_in_flight
        self._rate: float | None = None
        self._limit: int | None = None
        self._bulk_per_item: bool | None = None
        self._spendable = 0
        self._latency_s: float | None = None
        self._answers_without_limit = 0
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._announced_pause: float | None = None
        self._announced_limit: tuple[int | None, float | None] = (None, None)
        self.target = 0
        self._allowed = 0
        self._retarget()

    @property
    def max_in_flight(self) -> int:
        return self._max_in_flight

    @max_in_flight.setter
    def max_in_flight(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {value}")
        self._max_in_flight = value
        self._retarget()

    def bulk_items(self, wanted: int) -> int:
        """The largest bulk call worth making, up to ``wanted`` look-ups: when bulk calls count
        per item (or may), a quarter of the limit, so that whole calls pace smoothly."""
        if self._bulk_per_item is False or self._limit is None:
            return wanted
        return max(1, min(wanted, self._limit // BULK_SHARE_OF_LIMIT))

    async def acquire(self, items: int = 1) -> int:
        """Wait until a call of ``items`` look-ups may go out, then count it as in flight.
        Returns the units it was counted at, for ``complete`` or ``abandon``."""
        await self._enter()
        try:
            paced = False
            units: int | None = None
            while True:
                now = self._clock()
                with self._store.transaction(now) as state:
                    if units is None:
                        units = state.units(items)
                    until, reason = state.hold(now, units)
                    if until is None and not paced:
                        delay = state.take_token(now, units)
                        until, reason, paced = now + delay, WaitReason.PACING, True
                    if until is None or until <= now:
                        state.reserve(now, self._store.owner, units)
                        self._learned(state, now)
                        return units
                # After any pause, look again: the server may have said more meanwhile.
                await self._pause(until, reason, now)
        except BaseException:
            self._leave()
            raise

    def complete(
        self,
        headers: httpx.Headers,
        status_code: int,
        latency_s: float,
        *,
        items: int = 1,
        units: int = 1,
    ) -> None:
        """The call of ``items`` look-ups, counted at ``units``, was answered: learn from the
        answer and free its slot."""
        now = self._clock()
        info = parse_rate_limit(headers, now)
        self._latency_s = (
            latency_s
            if self._latency_s is None
            else self._latency_s + LATENCY_EWMA_WEIGHT * (latency_s - self._latency_s)
        )
        with self._store.transaction(now) as state:
            state.release(now, self._store.owner, units)
            state.observe(info, status_code, now, items)
            self._learned(state, now)
        if self._rate is None:
            self._answers_without_limit += 1
        self._leave()

    def abandon(self, units: int = 1) -> None:
        """The request failed without an answer: free its slot, learn nothing."""
        now = self._clock()
        with self._store.transaction(now) as state:
            state.release(now, self._store.owner, units)
        self._leave()

    def close(self) -> None:
        self._store.close()

    def _learned(self, state: PacingState, now: float) -> None:
        self._rate = state.rate_per_s
        self._limit = state.limit
        self._bulk_per_item = state.bulk_per_item
        self._spendable = state.spendable(now)
        if (state.limit, state.window_s) != self._announced_limit and self._rate is not None:
            self._announced_limit = (state.limit, state.window_s)
            self._stats.rate_limit = state.limit
            self._stats.rate_window_s = state.window_s
            self.logger.info(
                "Provider rate limit: %d requests per %g s; pacing at %.2f requests/s",
                state.limit,
                state.window_s,
                self._rate * (1 - PACING_MARGIN),
            )
        self._retarget()

    def _retarget(self) -> None:
        """Little's law: in flight = rate × latency, with headroom, within [1, max_in_flight];
        more while the bucket holds more than that, since those requests may all go now."""
        if self._rate is None:
            # No limit learned: start modestly, and open up once answers show there is none.
            if self._answers_without_limit >= INITIAL_IN_FLIGHT:
                wanted = self._max_in_flight
            else:
                wanted = INITIAL_IN_FLIGHT
        elif self._latency_s is None:
            wanted = INITIAL_IN_FLIGHT
        else:
            wanted = math.ceil(self._rate * self._latency_s * LATENCY_HEADROOM) + 1
        target = max(1, min(wanted, self._max_in_flight))
        allowed = max(target, min(self._spendable, self._max_in_flight))
        if target != self.target:
            self.target = target
            self._stats.concurrency_target = target
        if allowed != self._allowed:
            self._allowed = allowed
            self._wake()

    async def _enter(self) -> None:
        while self._in_flight >= self._allowed:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                with suppress(ValueError):
                    self._waiters.remove(waiter)
                # A wake-up this waiter can no longer use goes to the next one.
                self._wake()
                raise
        self._in_flight += 1

    def _leave(self) -> None:
        self._in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        free = self._allowed - self._in_flight
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    async def _pause(self, until: float, reason: WaitReason | None, now: float) -> None:
        delay = until - now
        if reason is WaitReason.PACING:
            await self._sleep(delay)
            return
        # Every waiting worker sees the same deadline; say it once.
        if self._announced_pause != until:
            self._announced_pause = until
            why = (
                "as the provider asked (Retry-After)"
                if reason is WaitReason.RETRY_AFTER
                else "until the provider's rate-limit window resets"
            )
            self.logger.info("Provider rate limit reached: pausing requests %.1f s %s", delay, why)
        # Jitter spreads the workers so they do not all return at the same instant.
        pause = delay + self._jitter(0.0, self._jitter_max_s)
        self._stats.throttle_waits += 1
        self._stats.throttle_wait_s += pause
        await self._sleep(pause)
