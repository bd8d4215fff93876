"""The warehouse questions behind the sensor and the daily refresh: rows landed after a cursor,
and days holding work the enrichment job would do."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from enrich_pipeline.provider.models import EnrichmentResult, Outcome
from enrich_pipeline.warehouse.automation import (
    DayRange,
    contiguous_ranges,
    refresh_needs,
    rows_landed_after,
)
from enrich_pipeline.warehouse.connection import connect
from enrich_pipeline.warehouse.contacts import rebuild_clean_contacts
from enrich_pipeline.warehouse.enrichment import Freshness, store_companies, store_persons

FRESHNESS = Freshness(person_ttl_days=30, company_ttl_days=90, no_match_retry_days=14)

NOW = datetime(2026, 9, 20, 3, 0)
D1, D2, D3 = date(2026, 9, 1), date(2026, 9, 2), date(2026, 9, 3)


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    with connect(tmp_path / "warehouse.duckdb") as connection:
        yield connection


def land(con: duckdb.DuckDBPyConnection, day: date, email: str, **values: str) -> None:
    columns = ["source", "received_at", "landed_at", "email", *values]
    con.execute(
        f"INSERT INTO raw_contacts ({', '.join(columns)}) "
        f"VALUES ({', '.join('?' for _ in columns)})",
        ["web", datetime.combine(day, datetime.min.time()), NOW, email, *values.values()],
    )


def build(con: duckdb.DuckDBPyConnection) -> None:
    rebuild_clean_contacts(con, D1, D3 + timedelta(days=1), NOW)


def enriched(
    con: duckdb.DuckDBPyConnection, key: str, status: Outcome, days_ago: int, **record: str
) -> None:
    result = EnrichmentResult(key=key, status=status, record=record or None)
    store_persons(con, [result], NOW - timedelta(days=days_ago))


def company(con: duckdb.DuckDBPyConnection, domain: str, days_ago: int) -> None:
    result = EnrichmentResult(key=domain, status=Outcome.MATCHED, record={"name": domain})
    store_companies(con, [result], NOW - timedelta(days=days_ago))


def test_days_group_into_the_fewest_contiguous_ranges() -> None:
    days = [D3, date(2026, 9, 7), D1, D2, D3, date(2026, 9, 9), date(2026, 9, 8)]
    assert contiguous_ranges(days) == [
        DayRange(D1, D3),
        DayRange(date(2026, 9, 7), date(2026, 9, 9)),
    ]
    assert [r.days for r in contiguous_ranges(days)] == [3, 3]
    assert contiguous_ranges([]) == []


def test_rows_after_a_cursor_are_taken_in_id_order_within_the_budget(con) -> None:
    for day, email in [(D3, "a@x.io"), (D1, "b@x.io"), (D3, "c@x.io"), (D2, "d@x.io")]:
        land(con, day, email)

    first = rows_landed_after(con, 0, max_rows=3)
    assert (first.first_ingest_id, first.last_ingest_id) == (1, 3)
    assert first.rows_by_day == {D1: 1, D3: 2}

    rest = rows_landed_after(con, first.last_ingest_id, max_rows=3)
    assert (rest.first_ingest_id, rest.last_ingest_id, rest.rows_by_day) == (4, 4, {D2: 1})

    nothing = rows_landed_after(con, rest.last_ingest_id, max_rows=3)
    assert (nothing.last_ingest_id, nothing.rows) == (None, 0)


def test_days_with_rows_landed_since_their_build_need_a_run(con) -> None:
    land(con, D1, "a@gmail.com")
    land(con, D2, "b@gmail.com")
    assert refresh_needs(con, NOW, FRESHNESS, 30).unbuilt_days == {D1, D2}

    build(con)
    enriched(con, "a@gmail.com", Outcome.MATCHED, 1)
    enriched(con, "b@gmail.com", Outcome.MATCHED, 1)
    assert refresh_needs(con, NOW, FRESHNESS, 30).days == set()

    land(con, D2, "c@gmail.com")
    assert refresh_needs(con, NOW, FRESHNESS, 30).unbuilt_days == {D2}


def test_stale_and_never_enriched_persons_mark_their_days(con) -> None:
    land(con, D1, "old@gmail.com")
    land(con, D2, "fresh@gmail.com")
    land(con, D3, "never@gmail.com")
    land(con, D3, "old@gmail.com")
    build(con)
    enriched(con, "old@gmail.com", Outcome.MATCHED, 31)
    enriched(con, "fresh@gmail.com", Outcome.MATCHED, 29)

    needs = refresh_needs(con, NOW, FRESHNESS, 30)
    assert needs.person_days == {D1, D3}
    assert needs.stale_persons == 2
    assert needs.company_days == set()  # free-mail domains are never companies


def test_a_stale_company_marks_every_day_whose_contacts_work_there(con) -> None:
    # The matched person's company domain counts, not the domain the lead was typed with.
    land(con, D1, "ann@acme.io")
    land(con, D2, "bob@oldname.io")
    land(con, D3, "cat@globex.io")
    build(con)
    enriched(con, "ann@acme.io", Outcome.MATCHED, 1, company_domain="acme.io")
    enriched(con, "bob@oldname.io", Outcome.MATCHED, 1, company_domain="ACME.io")
    enriched(con, "cat@globex.io", Outcome.MATCHED, 1, company_domain="globex.io")
    company(con, "acme.io", 91)
    company(con, "oldname.io", 91)
    company(con, "globex.io", 89)

    needs = refresh_needs(con, NOW, FRESHNESS, 30)
    assert needs.company_days == {D1, D2}
    assert needs.stale_companies == 1
    assert needs.person_days == set()
