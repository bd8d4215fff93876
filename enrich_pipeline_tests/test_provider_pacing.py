"""Pacing against the sandbox's own limiters, in simulated time.

A virtual-time event loop makes the simulation deterministic and instant: whenever every task
waits on a timer, the clock jumps to the next one. The real ``EnrichmentClient`` and the real
transports from ``build_http_client`` talk to a simulated provider that answers with the
sandbox's ``FixedWindowLimiter`` or ``TokenBucketLimiter`` verdicts and headers after a network
latency. Utilisation and the share of 429s are counted on the server side, as the provider
would count them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import random
import selectors
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from enrich_pipeline.provider.client import EnrichmentClient
from enrich_pipeline.provider.http import build_http_client
from enrich_pipeline.provider.models import CallStats, PersonQuery
from enrich_pipeline.provider.models import Outcome as Outcome_
from enrich_pipeline.provider.pacing import PACING_MARGIN
from enrich_pipeline.provider.transports import THROTTLE_JITTER_S, ThrottleTransport
from enrich_pipeline.sandbox.config import BulkCost, HeaderStyle, LimitAlgorithm, SandboxConfig
from enrich_pipeline.sandbox.ratelimit import Decision, RateLimiter, make_limiter
from enrich_pipeline.settings import SettingError, Settings

# Deliberately not on a minute boundary: fixed windows are aligned to the epoch.
T0 = 1_700_000_017.3
BASE = "https://provider.test"
KEY = "dl-secret-key-1234567890"
WINDOW_S = 60.0


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self, advance: Callable[[float], None]) -> None:
        super().__init__()
        self._advance = advance

    def select(self, timeout: float | None = None) -> list[Any]:
        events = super().select(0)
        if not events:
            if timeout is None:
                raise RuntimeError("simulation deadlock: every task waits and no timer is set")
            self._advance(timeout)
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose clock only moves when every task is waiting on a timer."""

    def __init__(self) -> None:
        self._virtual_now = 0.0
        super().__init__(_JumpingSelector(self._advance))

    def _advance(self, seconds: float) -> None:
        self._virtual_now += seconds

    def time(self) -> float:
        return self._virtual_now


def run_simulated(main: Callable[[], Awaitable[Any]]) -> Any:
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main())


def sim_clock() -> float:
    return T0 + asyncio.get_running_loop().time()


@dataclass(frozen=True)
class Arrival:
    at: float
    status: int
    units: int  # what the server counted against the limit (0 when refused)
    items: int


@dataclass
class SimulatedProvider(httpx.AsyncBaseTransport):
    """The provider's rate limiting as the sandbox does it, behind a network latency (half
    on the way in, half on the way back). Every look-up is a no-match, so credits stay out.
    A bulk call counts one request or, with ``bulk_cost="item"``, one per item."""

    limiter: RateLimiter
    style: HeaderStyle
    latency_s: float
    window_s: float = WINDOW_S
    bulk_cost: BulkCost = "request"
    arrivals: list[Arrival] = field(default_factory=list)
    send_headers: bool = True
    in_flight: int = 0
    peak_in_flight: int = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: httpx.Request) -> httpx.Response:
        bulk = request.url.path.endswith("/bulk")
        items = json.loads(request.content)["items"] if bulk else []
        cost = len(items) if self.bulk_cost == "item" and bulk else 1
        await asyncio.sleep(self.latency_s / 2)
        decision = self.limiter.acquire(cost)
        status = (200 if bulk else 404) if decision.allowed else 429
        counted = min(cost, self.limiter.limit) if decision.allowed else 0
        self.arrivals.append(Arrival(sim_clock(), status, counted, max(1, len(items))))
        headers: dict[str, str] = {}
        if self.send_headers:
            headers = self._rate_headers(decision)
            if not decision.allowed:
                headers["Retry-After"] = str(decision.retry_after_s)
        await asyncio.sleep(self.latency_s / 2)
        body: dict[str, Any] = {"error": "rate_limit_exceeded"}
        if decision.allowed:
            body = {"error": "not_found"}
            if bulk:
                results = [{"error": "not_found", "metadata": item["metadata"]} for item in items]
                body = {"results": results}
        return httpx.Response(status, headers=headers, content=json.dumps(body).encode())

    def _rate_headers(self, decision: Decision) -> dict[str, str]:
        # As the sandbox app writes them.
        if self.style == "draft":
            return {
                "RateLimit-Policy": f"{decision.limit}/min",
                "RateLimit-Limit": str(decision.limit),
                "RateLimit-Remaining": str(decision.remaining),
                "RateLimit-Reset": str(decision.reset_epoch_s),
            }
        return {
            "RateLimit-Policy": f'"default";q={decision.limit};w={self.window_s:g}',
            "RateLimit": f'"default";r={decision.remaining};t={decision.reset_after_s}',
        }

    def counted(self, start: float, end: float) -> int:
        """Units counted against the limit for the requests that reached the server in
        [start, end)."""
        return sum(a.units for a in self.arrivals if start <= a.at < end)


def queries(count: int, prefix: str = "") -> list[PersonQuery]:
    return [PersonQuery(key=f"{prefix}{i}", email=f"{prefix}p{i}@acme.com") for i in range(count)]


@dataclass
class Outcome:
    server: SimulatedProvider
    stats: list[CallStats]
    limit: int
    seconds: float

    def steady_interval(self) -> tuple[float, float]:
        """Whole windows from the end of the first minute to the end of the run."""
        start = math.ceil((T0 + WINDOW_S) / WINDOW_S) * WINDOW_S
        end = math.floor((T0 + self.seconds) / WINDOW_S) * WINDOW_S
        return start, end

    @property
    def utilisation(self) -> float:
        """What the server counted in the steady windows over what it allowed (in items when
        it counts bulk calls per item)."""
        start, end = self.steady_interval()
        return self.server.counted(start, end) / (self.limit * (end - start) / WINDOW_S)

    @property
    def share_429(self) -> float:
        statuses = [arrival.status for arrival in self.server.arrivals]
        return statuses.count(429) / len(statuses)

    @property
    def time_to_all_s(self) -> float:
        """From the start until the server accepted the last look-up."""
        return max(a.at for a in self.server.arrivals if a.status != 429) - T0


def simulate(
    algorithm: LimitAlgorithm,
    style: HeaderStyle,
    per_min: int,
    *,
    runs: int = 1,
    minutes: float = 10,
    latency_s: float = 0.2,
    shared_state_dir: Path | None = None,
    send_headers: bool = True,
    lookups: int | None = None,
    use_bulk: bool = False,
    bulk_cost: BulkCost = "request",
    **client_options: Any,
) -> Outcome:
    """``runs`` concurrent enrichment runs on one key for ``minutes`` of simulated time, each
    with ``lookups`` to make (by default more than the limit lets through)."""
    seconds = minutes * 60
    per_run = lookups if lookups is not None else int(per_min * (minutes + 2))

    async def main() -> Outcome:
        limiter = make_limiter(algorithm, per_min, sim_clock)
        server = SimulatedProvider(
            limiter, style, latency_s, bulk_cost=bulk_cost, send_headers=send_headers
        )
        all_stats = [CallStats() for _ in range(runs)]

        async def one_run(index: int) -> None:
            stats = all_stats[index]
            async with build_http_client(
                base_url=BASE,
                api_key=KEY,
                stats=stats,
                transport=server,
                clock=sim_clock,
                shared_state_dir=shared_state_dir,
            ) as http:
                client = EnrichmentClient(http, stats=stats, use_bulk=use_bulk, **client_options)
                work = queries(per_run, prefix=f"r{index}-")
                async for _ in client.enrich("person", work):
                    pass

        tasks = [asyncio.create_task(one_run(index)) for index in range(runs)]
        await asyncio.sleep(seconds)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return Outcome(server, all_stats, per_min, seconds)

    return run_simulated(main)


@pytest.fixture(autouse=True)
def _seeded_jitter() -> Iterator[None]:
    """Jitter and backoff draw from ``random``: seed it so each simulation replays exactly."""
    state = random.getstate()
    random.seed(20260901)
    yield
    random.setstate(state)


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)


ALGORITHMS: Sequence[LimitAlgorithm] = ("fixed_window", "token_bucket")
STYLES: Sequence[HeaderStyle] = ("draft", "ietf")


@pytest.mark.parametrize("per_min", [100, 600])
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_runs_at_the_limit_with_almost_no_rejections(
    algorithm: LimitAlgorithm, style: HeaderStyle, per_min: int
) -> None:
    outcome = simulate(algorithm, style, per_min)
    assert outcome.utilisation >= 0.97
    assert outcome.share_429 <= 0.005
    # Little's law: at 600/min with 200 ms latency one request at a time cannot keep up.
    if per_min == 600:
        assert outcome.server.peak_in_flight >= 2


@pytest.mark.parametrize(
    ("algorithm", "style", "per_min"),
    [("fixed_window", "draft", 600), ("token_bucket", "ietf", 100)],
)
def test_three_runs_sharing_a_key_share_its_limit(
    tmp_path: Path, algorithm: LimitAlgorithm, style: HeaderStyle, per_min: int
) -> None:
    outcome = simulate(algorithm, style, per_min, runs=3, minutes=5, shared_state_dir=tmp_path)
    assert outcome.share_429 <= 0.01
    assert outcome.utilisation >= 0.90
    # Every run got its turn.
    assert all(stats.requests > per_min for stats in outcome.stats)


# Latencies whose in-flight figure is not a whole number, so the clock's float noise in the
# measured latency cannot tip it over.
@pytest.mark.parametrize("latency_s", [0.25, 0.9])
def test_requests_in_flight_follow_littles_law(latency_s: float) -> None:
    outcome = simulate("token_bucket", "draft", 600, minutes=3, latency_s=latency_s)
    rate_per_s = 600 / 60
    assert outcome.stats[0].concurrency_target == math.ceil(rate_per_s * latency_s * 1.5) + 1
    assert outcome.utilisation >= 0.97


def test_max_concurrency_caps_requests_in_flight() -> None:
    outcome = simulate("token_bucket", "draft", 600, minutes=2, latency_s=1.0, max_concurrency=3)
    assert outcome.stats[0].concurrency_target == 3
    assert outcome.server.peak_in_flight == 3


def test_without_rate_limit_headers_there_is_no_pacing_only_concurrency() -> None:
    outcome = simulate(
        "token_bucket",
        "draft",
        10**9,
        minutes=1,
        send_headers=False,
        lookups=3000,
        max_concurrency=8,
    )
    (stats,) = outcome.stats
    assert stats.concurrency_target == 8
    assert stats.rate_limit is None
    assert stats.throttle_waits == 0
    # Eight at a time, 200 ms each, for a minute: nothing held them back.
    assert len(outcome.server.arrivals) >= 0.99 * 8 * 60 / 0.2


def lower_bound_s(algorithm: LimitAlgorithm, per_min: int, units: int, requests: int) -> float:
    """The earliest the server can have accepted ``units`` (from T0), as ``make bench`` judges
    it: its limiter's verdict or what 8 requests in flight at 200 ms allow, whichever is later."""
    if algorithm == "fixed_window":
        first_window = T0 // WINDOW_S * WINDOW_S
        limiter_s = first_window + (units - 1) // per_min * WINDOW_S - T0
    else:  # the bucket starts full
        limiter_s = max(0, units - per_min) * WINDOW_S / per_min
    return max(limiter_s + 0.2, math.ceil(requests / 8) * 0.2)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(
    ("use_bulk", "lookups", "units", "requests"),
    [(False, 500, 500, 500), (True, 20_000, 200, 200)],
    ids=["single calls", "bulk calls"],
)
def test_a_short_job_spends_what_is_left_at_once(
    algorithm: LimitAlgorithm, use_bulk: bool, lookups: int, units: int, requests: int
) -> None:
    # What the server says is left (the window's Remaining, or the token bucket's initial fill)
    # goes at once, as fast as eight in flight allow, not at 600/min: 500 single calls or 200
    # bulk calls.
    outcome = simulate(
        algorithm,
        "draft",
        600,
        minutes=2,
        lookups=lookups,
        use_bulk=use_bulk,
        max_concurrency=8,
    )
    assert outcome.share_429 == 0
    accepted = [a for a in outcome.server.arrivals if a.status != 429]
    assert sum(a.items for a in accepted) == lookups
    bound = lower_bound_s(algorithm, 600, units, requests)
    assert outcome.time_to_all_s <= 1.3 * bound


@pytest.mark.parametrize("per_min", [100, 600])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bulk_calls_counted_per_item_are_paced_in_items(
    algorithm: LimitAlgorithm, per_min: int
) -> None:
    outcome = simulate(algorithm, "ietf", per_min, use_bulk=True, bulk_cost="item")
    assert outcome.share_429 <= 0.005
    assert outcome.utilisation >= 0.95
    # A bulk call never costs more than a quarter of the limit once the cost is known.
    sizes = [a.items for a in outcome.server.arrivals[1:]]
    assert max(sizes) == min(100, per_min // 4)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bulk_calls_counted_per_request_stay_whole(algorithm: LimitAlgorithm) -> None:
    outcome = simulate(
        algorithm, "draft", 100, minutes=3, use_bulk=True, lookups=100 * 400, max_concurrency=8
    )
    assert outcome.share_429 <= 0.005
    assert outcome.utilisation >= 0.97
    assert {a.items for a in outcome.server.arrivals} == {100}


# --- the rules one by one -----------------------------------------------------------------------


@dataclass
class Scripted:
    """A throttle in front of a server that answers from a script; records when each request
    reached it (in seconds from the start)."""

    answers: list[httpx.Response]
    sent_at: list[float] = field(default_factory=list)
    stats: CallStats = field(default_factory=CallStats)

    def run(self, count: int, *, concurrency: int = 1, latency_s: float = 0.0) -> None:
        async def main() -> None:
            async def handler(request: httpx.Request) -> httpx.Response:
                self.sent_at.append(asyncio.get_running_loop().time())
                await asyncio.sleep(latency_s)
                return self.answers.pop(0) if self.answers else httpx.Response(404)

            transport = ThrottleTransport(
                httpx.MockTransport(handler),
                stats=self.stats,
                clock=sim_clock,
                jitter=random.uniform,
            )
            pending = list(range(count))
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:

                async def worker() -> None:
                    while pending:
                        pending.pop()
                        await http.post("/person/enrich", json={})

                await asyncio.gather(*(worker() for _ in range(concurrency)))

        run_simulated(main)


@pytest.mark.parametrize(
    ("answers", "limit", "window_s"),
    [
        ([{"RateLimit-Policy": "100/min"}], 100, 60.0),
        ([{"RateLimit-Policy": '"default";q=100;w=60'}], 100, 60.0),
        ([{"RateLimit-Policy": "5000/hour", "RateLimit-Limit": "5000"}], 5000, 3600.0),
        # No policy: the window is the longest time to a reset the server has announced.
        (
            [
                {"RateLimit-Limit": "100", "RateLimit-Reset": "20"},
                {"RateLimit-Limit": "100", "RateLimit-Reset": "45"},
                {"RateLimit-Limit": "100", "RateLimit-Reset": "30"},
            ],
            100,
            45.0,
        ),
        ([{"RateLimit-Limit": "100", "RateLimit": '"default";r=99;t=50'}], 100, 50.0),
        ([{"RateLimit-Policy": "lots/min", "RateLimit-Limit": "many"}], None, None),
        ([{"RateLimit-Limit": "100"}], None, None),
    ],
)
def test_the_limit_is_learned_from_every_header_form(
    answers: list[dict[str, str]], limit: int | None, window_s: float | None
) -> None:
    script = Scripted([httpx.Response(404, headers=headers) for headers in answers])
    script.run(len(answers))
    assert (script.stats.rate_limit, script.stats.rate_window_s) == (limit, window_s)


def test_requests_are_spaced_at_the_learned_rate_less_the_margin() -> None:
    script = Scripted([httpx.Response(404, headers={"RateLimit-Policy": "60/min"})])
    script.run(6)
    gaps = [later - earlier for earlier, later in itertools.pairwise(script.sent_at)]
    # One request, then the bucket's burst of two, then one every 1 / (60/min × 98.5%).
    assert gaps == pytest.approx([0, 0, *[1 / (1 - PACING_MARGIN)] * 3])


def test_a_429_without_retry_after_empties_the_bucket() -> None:
    script = Scripted(
        [
            httpx.Response(404, headers={"RateLimit-Policy": "600/min"}),
            httpx.Response(429),
        ]
    )
    script.run(3)
    assert script.sent_at[:2] == [0, 0]
    assert script.sent_at[2] == pytest.approx(0.1 / (1 - PACING_MARGIN))


def test_remaining_zero_holds_everyone_until_the_reset_then_resumes_spread_out() -> None:
    script = Scripted(
        [
            httpx.Response(
                404,
                headers={
                    "RateLimit-Limit": "100",
                    "RateLimit-Remaining": "0",
                    "RateLimit-Reset": str(math.ceil(T0) + 30),
                },
            )
        ]
    )
    script.run(5, concurrency=4, latency_s=0.05)
    # Four went before anything was known; the fifth waited for the reset, plus jitter.
    reset = math.ceil(T0) + 30 - T0
    assert reset <= script.sent_at[4] <= reset + THROTTLE_JITTER_S
    assert script.stats.throttle_waits == 1


def test_retry_after_holds_every_worker_and_they_return_spread_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = Scripted([httpx.Response(429, headers={"Retry-After": "10"})])
    with caplog.at_level(logging.INFO, logger="enrich_pipeline.provider.pacing"):
        script.run(8, concurrency=4, latency_s=0.5)
    # Four went out at once; the first answer, at 0.5 s, said to wait 10 s: nobody sent before
    # that had passed, and they came back at different moments within the jitter.
    assert script.sent_at[:4] == [0, 0, 0, 0]
    resumed = script.sent_at[4:]
    assert all(10.5 <= at <= 10.5 + THROTTLE_JITTER_S for at in resumed)
    assert len(set(resumed)) == len(resumed)
    pauses = [r.getMessage() for r in caplog.records if "pausing" in r.getMessage()]
    assert pauses == [
        "Provider rate limit reached: pausing requests 10.0 s as the provider asked (Retry-After)"
    ]


def test_the_learned_limit_and_each_pause_are_logged_once_without_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO):
        simulate("fixed_window", "draft", 100, minutes=2, lookups=150)
    messages = [record.getMessage() for record in caplog.records]
    learned = [m for m in messages if m.startswith("Provider rate limit:")]
    assert learned == ["Provider rate limit: 100 requests per 60 s; pacing at 1.64 requests/s"]
    assert all(KEY not in message and "RateLimit-" not in message for message in messages)


# --- the sandbox limiters the simulation stands on ----------------------------------------------


def test_sandbox_windows_can_be_shortened() -> None:
    now = [1_700_000_000.0]
    window = make_limiter("fixed_window", 3, lambda: now[0], window_s=2)
    verdicts = [window.acquire().allowed for _ in range(4)]
    assert verdicts == [True, True, True, False]
    assert window.acquire().reset_epoch_s == 1_700_000_002
    now[0] += 2
    assert window.acquire().allowed
    bucket = make_limiter("token_bucket", 4, lambda: now[0], window_s=2)
    assert [bucket.acquire().allowed for _ in range(5)] == [True] * 4 + [False]
    now[0] += 0.5  # refills 4 per 2 s: one token
    assert [bucket.acquire().allowed for _ in range(2)] == [True, False]


def test_sandbox_window_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert SandboxConfig().rate_window_s == 60
    monkeypatch.setenv("ENRICH_SANDBOX_RATE_WINDOW_S", "2.5")
    assert Settings.from_env().sandbox.rate_window_s == 2.5
    monkeypatch.setenv("ENRICH_SANDBOX_RATE_WINDOW_S", "0")
    with pytest.raises(SettingError, match="ENRICH_SANDBOX_RATE_WINDOW_S"):
        Settings.from_env()


class StrictLimiter:
    """A fixed window that refuses a call costing more than the whole limit, every time (the
    sandbox lets one through in a fresh window)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._window = make_limiter("fixed_window", limit, sim_clock)

    def acquire(self, cost: int = 1) -> Decision:
        decision = self._window.acquire(min(cost, self.limit) if cost <= self.limit else 0)
        if cost <= self.limit:
            return decision
        return replace(decision, allowed=False, retry_after_s=max(1, decision.reset_after_s))


def test_a_bulk_call_that_can_never_fit_is_split_and_every_record_converges() -> None:
    # The provider counts a bulk call per item and allows 50 a minute: a call of 100 is refused
    # every time. The refusals' RateLimit-Limit says so; the call is split, and no record is
    # ever stored as an error for having been rate-limited.
    results: list[Any] = []

    async def main() -> SimulatedProvider:
        server = SimulatedProvider(StrictLimiter(50), "draft", 0.2, bulk_cost="item")
        async with build_http_client(
            base_url=BASE, api_key=KEY, stats=CallStats(), transport=server, clock=sim_clock
        ) as http:
            client = EnrichmentClient(http, stats=CallStats(), use_bulk=True, bulk_size=100)
            async for result in client.enrich("person", queries(369)):
                results.append(result)
        return server

    server = run_simulated(main)
    assert len(results) == 369
    assert {result.status for result in results} == {Outcome_.NO_MATCH}
    assert sum(a.items for a in server.arrivals if a.status == 200) == 369
