"""What gets (re-)enriched and how provider answers are stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from enrich_pipeline.provider.models import EnrichmentResult, Outcome
from enrich_pipeline.warehouse.connection import connect
from enrich_pipeline.warehouse.contacts import rebuild_clean_contacts
from enrich_pipeline.warehouse.enrichment import (
    Freshness,
    stale_companies,
    stale_for_leads,
    stale_persons,
    store_companies,
    store_persons,
)

FRESHNESS = Freshness(person_ttl_days=30, company_ttl_days=90, no_match_retry_days=14)

NOW = datetime(2026, 9, 10, 12, 0)
START = date(2026, 9, 1)
END = date(2026, 9, 4)
DAY = "2026-09-01 10:00"


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    with connect(tmp_path / "warehouse.duckdb") as connection:
        yield connection


def land(con: duckdb.DuckDBPyConnection, received_at: str, **values: str) -> None:
    columns = ["source", "received_at", "landed_at", *values]
    placeholders = ", ".join("?" for _ in columns)
    con.execute(
        f"INSERT INTO raw_contacts ({', '.join(columns)}) VALUES ({placeholders})",
        ["web", received_at, NOW, *values.values()],
    )


def leads(con: duckdb.DuckDBPyConnection, *rows: dict[str, str]) -> None:
    """Land rows (each may carry its own received_at) and build their clean contacts."""
    for row in rows:
        values = dict(row)
        land(con, values.pop("received_at", DAY), **values)
    rebuild_clean_contacts(con, START, END, NOW)


def matched(key: str, **record: Any) -> EnrichmentResult:
    return EnrichmentResult(
        key=key,
        status=Outcome.MATCHED,
        record={"legion_id": f"lg-{key}", **record},
        match_metadata={"match_confidence": "high"},
    )


def no_match(key: str) -> EnrichmentResult:
    return EnrichmentResult(key=key, status=Outcome.NO_MATCH)


def error(key: str) -> EnrichmentResult:
    return EnrichmentResult(key=key, status=Outcome.ERROR, error="HTTP 500 from provider")


def person_row(con: duckdb.DuckDBPyConnection, identity: str) -> dict[str, Any]:
    cursor = con.execute("SELECT * FROM person_enrichment WHERE identity = ?", [identity])
    names = [d[0] for d in cursor.description]
    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    assert len(rows) == 1, rows
    return rows[0]


def stale_person_keys(
    con: duckdb.DuckDBPyConnection, freshness: Freshness | None = None
) -> list[str]:
    selection = stale_persons(con, START, END, NOW, freshness or FRESHNESS)
    return [q.key for q in selection.queries]


@pytest.mark.parametrize(
    ("previous", "age_days", "stale"),
    [
        (Outcome.MATCHED, 29, False),
        (Outcome.MATCHED, 31, True),
        (Outcome.NO_MATCH, 13, False),
        (Outcome.NO_MATCH, 15, True),
        (Outcome.ERROR, 0, True),
        (Outcome.ERROR, 1, True),
        (None, 0, True),
    ],
)
def test_person_ttl(
    con: duckdb.DuckDBPyConnection, previous: Outcome | None, age_days: int, stale: bool
) -> None:
    leads(con, {"email": "ada@ae.io"})
    if previous is not None:
        result = {
            Outcome.MATCHED: matched("ada@ae.io"),
            Outcome.NO_MATCH: no_match("ada@ae.io"),
            Outcome.ERROR: error("ada@ae.io"),
        }[previous]
        store_persons(con, [result], NOW - timedelta(days=age_days))

    selection = stale_persons(con, START, END, NOW, FRESHNESS)

    assert [q.key for q in selection.queries] == (["ada@ae.io"] if stale else [])
    assert selection.total == 1
    assert selection.fresh == (0 if stale else 1)


def test_person_ttl_follows_the_configured_freshness(con: duckdb.DuckDBPyConnection) -> None:
    leads(con, {"email": "ada@ae.io"}, {"email": "grace@navy.mil"})
    store_persons(con, [matched("ada@ae.io")], NOW - timedelta(days=8))
    store_persons(con, [no_match("grace@navy.mil")], NOW - timedelta(days=3))

    short = Freshness(person_ttl_days=7, company_ttl_days=90, no_match_retry_days=2)

    assert stale_person_keys(con) == []
    assert stale_person_keys(con, short) == ["ada@ae.io", "grace@navy.mil"]


def test_each_person_query_carries_exactly_one_identifier(
    con: duckdb.DuckDBPyConnection,
) -> None:
    leads(
        con,
        {
            "email": "Ada@AE.io",
            "phone": "(650) 253-0000",
            "linkedin_url": "https://linkedin.com/in/ada",
            "first_name": "Ada",
            "last_name": "Lovelace",
            "company_name": "Analytical Engines",
        },
        {
            "phone": "+44 20 7946 0958",
            "linkedin_url": "https://linkedin.com/in/alan-turing",
            "first_name": "Alan",
            "company_name": "GCHQ",
        },
        {"linkedin_url": "https://www.linkedin.com/in/edsger-dijkstra/", "full_name": "E D"},
        {"first_name": "Katherine", "last_name": "Johnson", "company_name": "NASA Langley"},
        {"full_name": "Dorothy Vaughan", "website": "langley.example.org"},
    )

    queries = {
        q.key: q.identifiers() for q in stale_persons(con, START, END, NOW, FRESHNESS).queries
    }

    assert queries == {
        "ada@ae.io": {"email": "ada@ae.io"},
        "phone:+442079460958": {"phone": "+442079460958"},
        "social:edsger-dijkstra": {"social_url": "https://www.linkedin.com/in/edsger-dijkstra"},
        "name:katherine johnson|nasa langley": {
            "full_name": "Katherine Johnson",
            "company": "NASA Langley",
        },
        "name:dorothy vaughan|langley.example.org": {
            "full_name": "Dorothy Vaughan",
            "company": "langley.example.org",
        },
    }


def test_an_identity_seen_in_several_partitions_is_asked_once(
    con: duckdb.DuckDBPyConnection,
) -> None:
    leads(
        con,
        {"received_at": "2026-09-01 10:00", "email": "ada@ae.io"},
        {"received_at": "2026-09-02 10:00", "email": "ADA@ae.io"},
        {"received_at": "2026-09-01 10:00", "phone": "(650) 253-0000"},
        {"received_at": "2026-09-03 10:00", "phone": "+1 650 253 0000"},
    )
    assert con.execute("SELECT count(*) FROM clean_contacts").fetchone() == (4,)

    selection = stale_persons(con, START, END, NOW, FRESHNESS)

    assert [q.key for q in selection.queries] == ["ada@ae.io", "phone:+16502530000"]
    assert selection.total == 2


def test_store_persons_keeps_one_row_per_identity_with_the_latest_answer(
    con: duckdb.DuckDBPyConnection,
) -> None:
    store_persons(
        con,
        [
            matched(
                "ada@ae.io",
                job_title="Analyst",
                company_name={"cleaned": "Analytical Engines", "raw": ["AE"]},
                company_domain="Analytical-Engines.IO",
            ),
            matched("phone:+16502530000", work_email="x@y.io"),
        ],
        NOW - timedelta(days=40),
    )
    store_persons(con, [no_match("ada@ae.io")], NOW)

    counts = con.execute(
        "SELECT identity, count(*) FROM person_enrichment GROUP BY identity ORDER BY identity"
    ).fetchall()
    assert counts == [("ada@ae.io", 1), ("phone:+16502530000", 1)]
    ada = person_row(con, "ada@ae.io")
    assert ada["status"] == "no_match"
    assert ada["job_title"] is None
    assert ada["enriched_at"] == NOW
    phone = person_row(con, "phone:+16502530000")
    assert phone["identity_type"] == "phone"
    assert phone["work_email"] == "x@y.io"


def test_stored_person_fields(con: duckdb.DuckDBPyConnection) -> None:
    store_persons(
        con,
        [
            matched(
                "social:ada",
                job_title="Analyst",
                company_name={"cleaned": "Analytical Engines", "raw": ["AE"]},
                company_domain="Analytical-Engines.IO",
                city="London",
                work_email="ada@ae.io",
            )
        ],
        NOW,
    )

    row = person_row(con, "social:ada")
    assert row["identity_type"] == "social_url"
    assert row["status"] == "matched"
    assert row["match_confidence"] == "high"
    assert row["legion_id"] == "lg-social:ada"
    assert row["company_name"] == "Analytical Engines"
    assert row["company_domain"] == "analytical-engines.io"
    assert row["city"] == "London"
    assert json.loads(row["raw"])["job_title"] == "Analyst"


def test_an_error_never_overwrites_a_matched_profile(con: duckdb.DuckDBPyConnection) -> None:
    leads(con, {"email": "ada@ae.io"}, {"email": "grace@navy.mil"})
    old = NOW - timedelta(days=40)
    store_persons(con, [matched("ada@ae.io", job_title="Analyst")], old)

    store_persons(con, [error("ada@ae.io"), matched("grace@navy.mil", job_title="Admiral")], NOW)

    ada = person_row(con, "ada@ae.io")
    assert ada["status"] == "matched"
    assert ada["job_title"] == "Analyst"
    assert ada["enriched_at"] == old
    assert person_row(con, "grace@navy.mil")["job_title"] == "Admiral"
    # The old profile is still past its TTL, so the next run asks again.
    assert stale_person_keys(con) == ["ada@ae.io"]


def test_stale_companies_prefers_the_matched_persons_domain(
    con: duckdb.DuckDBPyConnection,
) -> None:
    leads(
        con,
        {"email": "ada@lead-domain.io"},
        {"email": "grace@navy.mil"},
        {"email": "alan@gmail.com", "website": "bletchley.example.org"},
    )
    store_persons(
        con,
        [
            matched("ada@lead-domain.io", company_domain="Acme.com"),
            no_match("grace@navy.mil"),
        ],
        NOW,
    )

    selection = stale_companies(con, START, END, NOW, FRESHNESS)

    assert [(q.key, q.domain) for q in selection.queries] == [
        ("acme.com", "acme.com"),
        ("bletchley.example.org", "bletchley.example.org"),
        ("navy.mil", "navy.mil"),
    ]
    assert selection.total == 3


def test_stale_companies_never_asks_for_a_free_mail_domain(
    con: duckdb.DuckDBPyConnection,
) -> None:
    leads(con, {"email": "alan@gmail.com"}, {"email": "joan@outlook.com"})
    store_persons(con, [matched("joan@outlook.com", company_domain="Outlook.com")], NOW)

    selection = stale_companies(con, START, END, NOW, FRESHNESS)

    assert selection.queries == []
    assert selection.total == 0


@pytest.mark.parametrize(
    ("previous", "age_days", "stale"),
    [
        (Outcome.MATCHED, 89, False),
        (Outcome.MATCHED, 91, True),
        (Outcome.NO_MATCH, 13, False),
        (Outcome.NO_MATCH, 15, True),
        (Outcome.ERROR, 0, True),
        (None, 0, True),
    ],
)
def test_company_ttl(
    con: duckdb.DuckDBPyConnection, previous: Outcome | None, age_days: int, stale: bool
) -> None:
    leads(con, {"email": "ada@acme.com"})
    if previous is not None:
        result = {
            Outcome.MATCHED: matched("acme.com"),
            Outcome.NO_MATCH: no_match("acme.com"),
            Outcome.ERROR: error("acme.com"),
        }[previous]
        store_companies(con, [result], NOW - timedelta(days=age_days))

    selection = stale_companies(con, START, END, NOW, FRESHNESS)

    assert [q.domain for q in selection.queries] == (["acme.com"] if stale else [])
    assert selection.total == 1


def company_table(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return con.execute(
        "SELECT domain, status, enriched_at, name, industry, founded, employee_count "
        "FROM company_enrichment ORDER BY domain"
    ).fetchall()


def test_store_companies_upserts_by_domain(con: duckdb.DuckDBPyConnection) -> None:
    earlier = NOW - timedelta(days=100)
    store_companies(
        con,
        [
            matched("acme.com", name={"cleaned": "Acme", "raw": ["ACME"]}, founded="1950"),
            no_match("initech.com"),
        ],
        earlier,
    )
    store_companies(
        con,
        [
            matched(
                "acme.com",
                name={"cleaned": "Acme Corp", "raw": ["ACME"]},
                industry="anvils",
                founded=1949,
                legion_employee_count=250,
            ),
            error("initech.com"),
        ],
        NOW,
    )

    assert company_table(con) == [
        ("acme.com", "matched", NOW, "Acme Corp", "Anvils", 1949, 250),  # display-cased
        ("initech.com", "error", NOW, None, None, None, None),
    ]


def test_a_company_error_never_overwrites_a_matched_company(
    con: duckdb.DuckDBPyConnection,
) -> None:
    earlier = NOW - timedelta(days=100)
    store_companies(con, [matched("acme.com", name={"cleaned": "Acme"})], earlier)

    store_companies(con, [error("acme.com")], NOW)

    assert company_table(con) == [("acme.com", "matched", earlier, "Acme", None, None, None)]


def test_a_free_mail_company_domain_from_the_provider_falls_back_to_the_leads(
    tmp_path: Path,
) -> None:
    now = datetime(2026, 10, 1, 12, 0)
    with connect(tmp_path / "w.duckdb") as con:
        con.execute(
            """
            INSERT INTO clean_contacts (partition_date, identity, identity_type, email,
                company_domain, row_count, first_received_at, last_received_at, built_at)
            VALUES ('2026-09-01', 'ann@realco.io', 'email', 'ann@realco.io', 'realco.io', 1,
                    '2026-09-01', '2026-09-01', '2026-09-01')
            """
        )
        store_persons(
            con,
            [
                EnrichmentResult(
                    "ann@realco.io",
                    Outcome.MATCHED,
                    record={"full_name": "Ann", "company_domain": "Gmail.com"},
                )
            ],
            now,
        )
        stored = con.execute("SELECT company_domain FROM person_enrichment").fetchone()[0]
        selection = stale_companies(con, date(2026, 9, 1), date(2026, 9, 2), now, FRESHNESS)
    assert stored is None
    assert [q.domain for q in selection.queries] == ["realco.io"]


def test_records_named_one_by_one_are_stale_by_the_windows_rule(
    con: duckdb.DuckDBPyConnection,
) -> None:
    # Every status at every age around its TTL, each kind: what stale_for_leads (Python) says
    # of each record is what the windows' SQL (stale_persons, stale_companies) says of it.
    ages = [0, 13.9, 14.1, 29.9, 30.1, 89.9, 90.1]
    answers = {"matched": matched, "no_match": no_match, "error": error}
    keys = []
    for status, answer in answers.items():
        for age in ages:
            key = f"{status.replace('_', '')}-{age * 10:.0f}"  # a valid domain label
            keys.append(key)
            moment = NOW - timedelta(days=age)
            store_persons(con, [answer(f"{key}@acme.example")], moment)
            store_companies(con, [answer(f"{key}.example")], moment)
    emails = [f"{key}@acme.example" for key in [*keys, "never-asked"]]
    domains = [f"{key}.example" for key in [*keys, "never-asked"]]
    leads(
        con,
        *(
            {"email": email, "website": domain}
            for email, domain in zip(emails, domains, strict=True)
        ),
    )

    by_sql = {("person", q.key) for q in stale_persons(con, START, END, NOW, FRESHNESS).queries}
    by_sql |= {("company", q.key) for q in stale_companies(con, START, END, NOW, FRESHNESS).queries}
    assert stale_for_leads(con, emails, domains, NOW, FRESHNESS) == by_sql
    assert ("person", "never-asked@acme.example") in by_sql
    assert ("company", "matched-299.example") not in by_sql
    assert ("company", "nomatch-141.example") in by_sql
