"""One rate-limit budget per key across machines, in a Postgres warehouse: stores that share
nothing but the database (as processes on different machines would) pace as one, on a fake
clock, under concurrent first use, and as real processes against the sandbox over HTTP."""

from __future__ import annotations

import asyncio
import logging
import threading
import traceback
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import httpx
import psycopg2
import pytest
from sqlalchemy.engine import make_url

from enrich_pipeline.dagster_layer.resources import DataLegionResource
from enrich_pipeline.provider.http import build_http_client
from enrich_pipeline.provider.models import CallStats
from enrich_pipeline.provider.pacing import Pacer
from enrich_pipeline.provider.ratelimit_headers import parse_rate_limit
from enrich_pipeline.provider.shared_limit import state_key
from enrich_pipeline.provider.shared_limit_postgres import PostgresStateStore
from enrich_pipeline.settings import Settings
from enrich_pipeline.warehouse.postgres import WarehouseUnreachable, libpq_url
from enrich_pipeline_tests.helpers import FakeTime
from enrich_pipeline_tests.test_provider_shared_limit import (
    BASE,
    KEY,
    NOW,
    assert_processes_share_the_limit,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def stores(postgres_database: str) -> Iterator[Any]:
    """Makes stores on the test's database, each with a connection of its own (another
    machine, as far as the budget can tell); closes them after the test."""
    made: list[PostgresStateStore] = []

    def make(**kwargs: Any) -> PostgresStateStore:
        kwargs = {"base_url": BASE, "api_key": KEY, "location": postgres_database, **kwargs}
        made.append(PostgresStateStore(**kwargs))
        return made[-1]

    yield make
    for store in made:
        store.close()


def pacer(store: PostgresStateStore, fake: FakeTime) -> Pacer:
    return Pacer(
        stats=CallStats(),
        clock=fake.clock,
        sleep=fake.sleep,
        jitter=lambda low, high: low,
        jitter_max_s=0.5,
        store=store,
    )


def rows(url: str) -> list[tuple[str, str]]:
    with closing(psycopg2.connect(libpq_url(url))) as con, con.cursor() as cur:
        cur.execute("SELECT state_key, state FROM rate_budget ORDER BY state_key")
        return cur.fetchall()


def execute(url: str, statement: str) -> None:
    with closing(psycopg2.connect(libpq_url(url))) as con, con.cursor() as cur:
        cur.execute(statement)
        con.commit()


def test_different_keys_do_not_share(stores: Any) -> None:
    mine, other_key, other_provider = (
        stores(),
        stores(api_key=KEY + "x"),
        stores(base_url="https://other.test"),
    )
    with mine.transaction(NOW) as state:
        state.observe(parse_rate_limit({"Retry-After": "20"}, NOW), 429, NOW)
        state.reserve(NOW, mine.owner)
    for store in (other_key, other_provider):
        with store.transaction(NOW) as state:
            assert state.hold(NOW, 1) == (None, None)
            assert state.total_in_flight() == 0


def test_the_row_is_named_by_a_hash_and_never_holds_the_key(
    stores: Any, postgres_database: str
) -> None:
    with stores().transaction(NOW) as state:
        state.observe(parse_rate_limit({"RateLimit-Policy": "100/min"}, NOW), 200, NOW)
    ((name, state_json),) = rows(postgres_database)
    assert name == state_key(BASE, KEY)
    assert KEY not in name
    assert KEY not in state_json
    assert '"limit":100' in state_json


def test_an_unreadable_state_starts_afresh(stores: Any, postgres_database: str) -> None:
    with stores().transaction(NOW) as state:
        state.observe(parse_rate_limit({"RateLimit-Policy": "100/min"}, NOW), 200, NOW)
    execute(postgres_database, """UPDATE rate_budget SET state = '{"limit": 100, "window_s": '""")
    with stores().transaction(NOW) as state:
        assert state.limit is None
        state.observe(parse_rate_limit({"RateLimit-Policy": "100/min"}, NOW), 200, NOW)
    with stores().transaction(NOW) as state:
        assert state.rate_per_s == pytest.approx(100 / 60)


def test_a_block_that_fails_changes_nothing(stores: Any) -> None:
    store = stores()
    with pytest.raises(RuntimeError), store.transaction(NOW) as state:
        state.reserve(NOW, store.owner)
        raise RuntimeError("the caller failed")
    # The row was unlocked by the rollback, or this would wait forever.
    with stores().transaction(NOW) as state:
        assert state.total_in_flight() == 0
    with store.transaction(NOW) as state:
        assert state.total_in_flight() == 0


def test_machines_starting_at_once_on_a_new_database_lose_no_update(stores: Any) -> None:
    # Every store finds no table and no row, and all create them at once; then each
    # read-modify-write counts one request, and none overwrites another's.
    machines, each = 4, 40
    made = [stores() for _ in range(machines)]
    start = threading.Barrier(machines)
    failures: list[BaseException] = []

    def run(store: PostgresStateStore) -> None:
        start.wait()
        try:
            for _ in range(each):
                with store.transaction(NOW) as state:
                    state.reserve(NOW, store.owner)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(store,)) for store in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    with stores().transaction(NOW) as state:
        assert state.total_in_flight() == machines * each
        assert sorted(count for count, _ in state.in_flight.values()) == [each] * machines


def test_a_connection_the_server_dropped_is_reopened(stores: Any, postgres_database: str) -> None:
    store = stores()
    with store.transaction(NOW) as state:
        state.reserve(NOW, store.owner)
    # As a server restart or a proxy's idle timeout would.
    execute(
        postgres_database,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    with store.transaction(NOW) as state:
        assert state.total_in_flight() == 1


def test_the_password_never_reaches_an_error(postgres_database: str) -> None:
    password = "s3cret-pass-word"
    with_password = make_url(postgres_database).set(password=password)
    url = with_password.render_as_string(hide_password=False)
    missing = with_password.set(database="no_such_db").render_as_string(hide_password=False)
    # A table of another shape: the budget cannot be read once connected.
    execute(postgres_database, "CREATE TABLE rate_budget (state_key TEXT PRIMARY KEY)")

    def failure(location: str) -> str:
        with pytest.raises(WarehouseUnreachable) as raised:
            store = PostgresStateStore(base_url=BASE, api_key=KEY, location=location)
            with closing(store), store.transaction(NOW):
                pass
        return "".join(traceback.format_exception(raised.value))

    unreachable, unusable = failure(missing), failure(url)
    assert "no_such_db" in unreachable
    assert "rate budget" in unusable
    for text in (unreachable, unusable):
        assert password not in text
        assert "***" in text


def test_with_a_postgres_warehouse_the_provider_budget_is_kept_there(
    postgres_database: str,
) -> None:
    resource = DataLegionResource.from_settings(
        Settings(warehouse_path=postgres_database), api_key=KEY
    )
    endpoint = resource.endpoint(logging.getLogger(__name__))
    assert (endpoint.shared_state_dir, endpoint.shared_state_url) == (None, postgres_database)

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"RateLimit-Policy": "100/min"})

    async def one_call() -> None:
        async with build_http_client(
            base_url=endpoint.base_url,
            api_key=endpoint.api_key,
            stats=CallStats(),
            transport=httpx.MockTransport(answer),
            shared_state_url=endpoint.shared_state_url,
        ) as http:
            await http.post("/person/enrich", json={})

    asyncio.run(one_call())
    ((name, state_json),) = rows(postgres_database)
    assert name == state_key(endpoint.base_url, KEY)
    assert '"limit":100' in state_json


# --- real processes ------------------------------------------------------------------------------


@pytest.mark.slow
def test_processes_sharing_only_the_database_share_the_limit_over_http(
    postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert_processes_share_the_limit(monkeypatch, {"shared_state_url": postgres_database})
