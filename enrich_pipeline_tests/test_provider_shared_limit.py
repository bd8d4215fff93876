"""One rate-limit budget per key across processes: the shared state's arithmetic on a fake
clock (in the file, and in a Postgres warehouse), then real processes against the sandbox
served over HTTP."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from enrich_pipeline.provider.client import EnrichmentClient
from enrich_pipeline.provider.http import build_http_client
from enrich_pipeline.provider.models import CallStats, PersonQuery
from enrich_pipeline.provider.pacing import PACING_MARGIN, Pacer, StateStore
from enrich_pipeline.provider.ratelimit_headers import parse_rate_limit
from enrich_pipeline.provider.shared_limit import SharedStateStore, state_key
from enrich_pipeline_tests.helpers import FakeTime

NOW = 1_700_000_000.0
BASE = "https://provider.test"
KEY = "dl-secret-key-1234567890"


def store(directory: Path, **kwargs: Any) -> SharedStateStore:
    return SharedStateStore(base_url=BASE, api_key=KEY, directory=directory, **kwargs)


@pytest.fixture(params=["file", pytest.param("postgres", marks=pytest.mark.postgres)])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., StateStore]]:
    """Makes stores of one kind on one shared place, each as another process (or machine) would
    open it: the locked file, or the Postgres warehouse's table. Closes them after the test."""
    made: list[StateStore] = []

    def make(**kwargs: Any) -> StateStore:
        if request.param == "file":
            made.append(store(tmp_path, **kwargs))
        else:
            from enrich_pipeline.provider.shared_limit_postgres import PostgresStateStore

            url = request.getfixturevalue("postgres_database")
            made.append(PostgresStateStore(base_url=BASE, api_key=KEY, location=url, **kwargs))
        return made[-1]

    yield make
    for each in made:
        each.close()


def pacer(shared: Path | StateStore, fake: FakeTime, stats: CallStats | None = None) -> Pacer:
    return Pacer(
        stats=stats or CallStats(),
        clock=fake.clock,
        sleep=fake.sleep,
        jitter=lambda low, high: low,
        jitter_max_s=0.5,
        store=store(shared) if isinstance(shared, Path) else shared,
    )


def headers(**values: str) -> httpx.Headers:
    return httpx.Headers({name.replace("_", "-"): value for name, value in values.items()})


POLICY_60 = {"RateLimit_Policy": "60/min"}


def test_a_limit_learned_by_one_process_paces_the_others(stores: Any) -> None:
    fake = FakeTime()
    first, second = pacer(stores(), fake), pacer(stores(), fake)

    async def go() -> list[float]:
        await first.acquire()
        first.complete(headers(**POLICY_60), 200, 0.1)
        sent = []
        # The second process has had no answer, yet it paces at the rate the first learned,
        # and both draw on one bucket.
        for each in (second, first, second, first, second):
            await each.acquire()
            sent.append(fake.now)
            each.complete(httpx.Headers(), 200, 0.1)
        return sent

    sent = asyncio.run(go())
    interval = 1 / (1 - PACING_MARGIN)
    # The bucket holds two requests (the minimum burst); after that, one per interval.
    assert sent[:2] == [NOW, NOW]
    gaps = [later - earlier for earlier, later in itertools.pairwise(sent[1:])]
    assert gaps == pytest.approx([interval] * 3)


def test_requests_in_flight_in_another_process_count_against_remaining(stores: Any) -> None:
    other, mine = stores(), stores()
    with other.transaction(NOW) as state:
        for _ in range(3):
            state.reserve(NOW, other.owner)
    with mine.transaction(NOW) as state:
        state.observe(parse_rate_limit({"RateLimit-Remaining": "5"}, NOW), 200, NOW)
        assert state.remaining == 2


def test_a_crashed_process_stops_counting_after_the_expiry(stores: Any) -> None:
    crashed, alive = stores(), stores(in_flight_ttl_s=60)
    with crashed.transaction(NOW) as state:
        state.reserve(NOW, crashed.owner)
    crashed.close()
    with alive.transaction(NOW + 59) as state:
        assert state.total_in_flight() == 1
    with alive.transaction(NOW + 61) as state:
        assert state.total_in_flight() == 0


def test_retry_after_seen_by_one_process_holds_every_process(stores: Any) -> None:
    fake = FakeTime()
    first, second = pacer(stores(), fake), pacer(stores(), fake)

    async def go() -> float:
        await first.acquire()
        first.complete(headers(Retry_After="20"), 429, 0.1)
        await second.acquire()
        return fake.now

    assert asyncio.run(go()) == NOW + 20


def test_the_file_is_named_by_a_hash_and_never_holds_the_key(tmp_path: Path) -> None:
    shared = store(tmp_path)
    with shared.transaction(NOW) as state:
        state.observe(parse_rate_limit({"RateLimit-Policy": "100/min"}, NOW), 200, NOW)
    (path,) = tmp_path.iterdir()
    assert path.name == f"{state_key(BASE, KEY)}.json"
    assert KEY not in path.name
    assert KEY not in path.read_text()
    assert state_key(BASE, KEY) != state_key(BASE, KEY + "x")
    assert state_key(BASE, KEY) != state_key("https://other.test", KEY)
    assert json.loads(path.read_text())["limit"] == 100


def test_an_unreadable_file_starts_afresh(tmp_path: Path) -> None:
    shared = store(tmp_path)
    shared.path.write_text('{"limit": 100, "window_s": ')
    with shared.transaction(NOW) as state:
        assert state.limit is None
        state.observe(parse_rate_limit({"RateLimit-Policy": "100/min"}, NOW), 200, NOW)
    with store(tmp_path).transaction(NOW) as state:
        assert state.rate_per_s == pytest.approx(100 / 60)


# --- real processes ------------------------------------------------------------------------------

# The server and every client process share one clock running this much faster than the wall
# clock, so a minute window passes in a second and the test crosses several of them quickly.
SPEEDUP = 60.0
LIMIT_PER_MIN = 60
PROCESSES = 3
QUERIES_PER_PROCESS = 70


class ScaledTime:
    def __init__(self, origin: float) -> None:
        self.origin = origin

    def clock(self) -> float:
        return self.origin + (time.time() - self.origin) * SPEEDUP

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / SPEEDUP)


def _enrich_in_a_process(
    base_url: str,
    shared: dict[str, str],
    origin: float,
    index: int,
    start: Any,
    results: Any,
) -> None:
    scaled = ScaledTime(origin)
    stats = CallStats()
    queries = [
        PersonQuery(key=f"{index}-{i}", email=f"p{index}-{i}@acme.com")
        for i in range(QUERIES_PER_PROCESS)
    ]

    async def go() -> tuple[int, float, float]:
        async with build_http_client(
            base_url=base_url,
            api_key=KEY,
            stats=stats,
            clock=scaled.clock,
            sleep=scaled.sleep,
            **shared,
        ) as http:
            client = EnrichmentClient(http, stats=stats, use_bulk=False)
            began = scaled.clock()
            answered = [result async for result in client.enrich("person", queries)]
            return len(answered), began, scaled.clock()

    start.wait()
    answered, began, ended = asyncio.run(go())
    results.put((index, answered, began, ended))


def assert_processes_share_the_limit(
    monkeypatch: pytest.MonkeyPatch, shared: dict[str, str]
) -> None:
    """Processes on one key, sharing their pacing state through ``shared`` (the keyword
    ``build_http_client`` takes it by) and nothing else, stay inside a fixed-window limit."""
    from enrich_pipeline.sandbox import SandboxConfig, create_app
    from enrich_pipeline_tests import helpers

    scaled = ScaledTime(time.time())
    monkeypatch.setattr(
        helpers,
        "create_app",
        lambda config: create_app(config, clock=scaled.clock, sleep=scaled.sleep),
    )
    config = SandboxConfig(
        rate_limit_per_min=LIMIT_PER_MIN, limit_algorithm="fixed_window", latency_ms=200
    )
    with helpers.sandbox_over_http(config) as url:
        finished = helpers.in_processes_together(
            _enrich_in_a_process,
            [(url, shared, scaled.origin, index) for index in range(PROCESSES)],
            timeout_s=60,
        )
        served = httpx.get(f"{url}/_sandbox/stats").json()

    assert all(answered == QUERIES_PER_PROCESS for _, answered, _, _ in finished)
    # The runs overlapped: each began before any other had finished.
    assert max(began for _, _, began, _ in finished) < min(ended for _, _, _, ended in finished)
    assert served["rate_limited"] <= 0.01 * served["requests_total"]
    arrivals_per_window = Counter(int(at // 60) for at, _, _ in served["events"])
    assert max(arrivals_per_window.values()) <= LIMIT_PER_MIN + 1


@pytest.mark.slow
def test_processes_on_one_key_share_the_limit_over_http(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert_processes_share_the_limit(monkeypatch, {"shared_state_dir": str(tmp_path)})


def test_how_bulk_calls_are_counted_is_learned_once_for_every_process(stores: Any) -> None:
    fake = FakeTime()
    first, second = pacer(stores(), fake), pacer(stores(), fake)
    # 99 left after a bulk call of 100 items at a limit of 100: it counted as one request.
    per_request = headers(RateLimit_Policy="100/min", RateLimit_Remaining="99")

    async def go() -> tuple[int, int]:
        await first.acquire()
        first.complete(headers(RateLimit_Policy="100/min"), 200, 0.1)
        await second.acquire()
        second.complete(httpx.Headers(), 200, 0.1)
        # Not known yet: a bulk call is assumed to count per item, a quarter of the limit.
        before = second.bulk_items(100)
        units = await first.acquire(items=100)
        first.complete(per_request, 200, 0.1, items=100, units=units)
        await second.acquire()
        second.complete(httpx.Headers(), 200, 0.1)
        return before, second.bulk_items(100)

    assert asyncio.run(go()) == (25, 100)
