"""CRM records: lead + enrichment merged per email, and the HubSpot import CSV."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from enrich_pipeline.merge_policy import DEFAULT_POLICY, Confidence, MergePolicy
from enrich_pipeline.provider.models import EnrichmentResult, Outcome
from enrich_pipeline.warehouse.connection import connect
from enrich_pipeline.warehouse.contacts import rebuild_clean_contacts
from enrich_pipeline.warehouse.crm import (
    merge_crm_contacts,
)
from enrich_pipeline.warehouse.enrichment import store_companies, store_persons

NOW = datetime(2026, 9, 10, 12, 0)
START = date(2026, 9, 1)
END = date(2026, 9, 4)
DAY = "2026-09-01 10:00"


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    with connect(tmp_path / "warehouse.duckdb") as connection:
        yield connection


def leads(con: duckdb.DuckDBPyConnection, *rows: dict[str, str]) -> None:
    """Land rows (each may carry its own received_at) and build their clean contacts."""
    for row in rows:
        values = dict(row)
        received_at = values.pop("received_at", DAY)
        columns = ["source", "received_at", "landed_at", *values]
        placeholders = ", ".join("?" for _ in columns)
        con.execute(
            f"INSERT INTO raw_contacts ({', '.join(columns)}) VALUES ({placeholders})",
            ["web", received_at, NOW, *values.values()],
        )
    rebuild_clean_contacts(con, START, END, NOW)


def person(key: str, **record: Any) -> EnrichmentResult:
    """A confident match: the merge policy trusts it for title, company and location."""
    return EnrichmentResult(
        key=key,
        status=Outcome.MATCHED,
        record=record,
        match_metadata={"match_confidence": "high"},
    )


def crm_records(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, Any]]:
    cursor = con.execute("SELECT * FROM crm_contacts ORDER BY email")
    names = [d[0] for d in cursor.description]
    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    return {row["email"]: row for row in rows}


ADA_LEAD = {
    "email": "ada@ae.io",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "phone": "(650) 253-0000",
    "job_title": "Analyst",
    "company_name": "AE Ltd",
    "city": "London",
    "state": "Greater London",
}
ADA_PROFILE = person(
    "ada@ae.io",
    first_name="Augusta",
    last_name="King",
    job_title="Chief Mathematician",
    company_name={"cleaned": "Analytical Engines", "raw": ["analytical engines"]},
    company_domain="analytical-engines.io",
    company_industry="computing",
    city="Paris",
    country="France",
    mobile_phone="+447700900123",
    linkedin_url="https://www.linkedin.com/in/ada-lovelace",
)


def test_lead_keeps_name_and_phone_enrichment_wins_the_rest(
    con: duckdb.DuckDBPyConnection,
) -> None:
    leads(con, ADA_LEAD)
    store_persons(con, [ADA_PROFILE], NOW)

    merge_crm_contacts(con, START, END, NOW)

    ada = crm_records(con)["ada@ae.io"]
    assert (ada["first_name"], ada["last_name"]) == ("Ada", "Lovelace")
    assert ada["phone"] == "+16502530000"
    assert ada["mobile_phone"] == "+447700900123"
    assert ada["job_title"] == "Chief Mathematician"
    assert ada["company_name"] == "Analytical Engines"
    assert ada["city"] == "Paris"
    assert ada["country"] == "France"
    # The profile has no state, so the lead's stays.
    assert ada["state"] == "Greater London"
    assert ada["industry"] == "Computing"  # the provider answered it in lower case
    assert ada["website"] == "https://analytical-engines.io"
    assert ada["linkedin_url"] == "https://www.linkedin.com/in/ada-lovelace"
    assert ada["person_status"] == "matched"
    assert ada["person_enriched_at"] == NOW
    assert ada["partition_date"] == date(2026, 9, 1)


def test_lead_values_stand_when_enrichment_found_nothing(
    con: duckdb.DuckDBPyConnection,
) -> None:
    leads(con, {**ADA_LEAD, "website": "https://ae.io"})
    store_persons(con, [EnrichmentResult(key="ada@ae.io", status=Outcome.NO_MATCH)], NOW)

    merge_crm_contacts(con, START, END, NOW)

    ada = crm_records(con)["ada@ae.io"]
    assert ada["job_title"] == "Analyst"
    assert ada["company_name"] == "AE Ltd"
    assert ada["city"] == "London"
    assert ada["website"] == "https://ae.io"
    assert ada["mobile_phone"] is None
    assert ada["person_status"] == "no_match"


def test_company_enrichment_supplies_name_industry_and_size(
    con: duckdb.DuckDBPyConnection,
) -> None:
    leads(con, ADA_LEAD)
    store_persons(con, [ADA_PROFILE], NOW)
    store_companies(
        con,
        [
            EnrichmentResult(
                key="analytical-engines.io",
                status=Outcome.MATCHED,
                record={
                    "name": {"cleaned": "Analytical Engines Inc", "raw": []},
                    "industry": "computer hardware",
                    "legion_employee_count": 42,
                },
            )
        ],
        NOW - timedelta(days=1),
    )

    merge_crm_contacts(con, START, END, NOW)

    ada = crm_records(con)["ada@ae.io"]
    assert ada["company_name"] == "Analytical Engines Inc"
    assert ada["industry"] == "Computer Hardware"  # answered in lower case
    assert ada["employee_count"] == 42
    assert ada["company_enriched_at"] == NOW - timedelta(days=1)


def test_phone_only_lead_is_keyed_by_the_matched_work_email(
    con: duckdb.DuckDBPyConnection,
) -> None:
    leads(con, {"phone": "+44 20 7946 0958", "first_name": "Alan"})
    store_persons(
        con,
        [person("phone:+442079460958", work_email=" Alan.Turing@Bletchley.org ", last_name="T")],
        NOW,
    )

    report = merge_crm_contacts(con, START, END, NOW)

    records = crm_records(con)
    assert list(records) == ["alan.turing@bletchley.org"]
    alan = records["alan.turing@bletchley.org"]
    assert alan["phone"] == "+442079460958"
    assert alan["first_name"] == "Alan"
    assert alan["last_name"] == "T"
    assert report.from_enrichment_email == 1
    assert report.records == 1


def test_a_lead_with_no_email_and_no_match_gets_no_record(
    con: duckdb.DuckDBPyConnection,
) -> None:
    leads(con, {"phone": "+44 20 7946 0958", "first_name": "Alan"})

    report = merge_crm_contacts(con, START, END, NOW)

    assert crm_records(con) == {}
    assert report.records == 0


def test_one_record_per_email_across_partitions(con: duckdb.DuckDBPyConnection) -> None:
    leads(
        con,
        {"received_at": "2026-09-01 10:00", "email": "ada@ae.io", "job_title": "Analyst"},
        {"received_at": "2026-09-02 10:00", "email": "ADA@ae.io", "phone": "(650) 253-0000"},
        {"received_at": "2026-09-03 10:00", "phone": "+44 20 7946 0958", "city": "Bletchley"},
    )
    # The phone lead's profile resolves to the same person's email.
    store_persons(con, [person("phone:+442079460958", work_email="ada@ae.io")], NOW)

    report = merge_crm_contacts(con, date(2026, 9, 2), date(2026, 9, 3), NOW)

    records = crm_records(con)
    assert list(records) == ["ada@ae.io"]
    ada = records["ada@ae.io"]
    # Merged over all of the email's leads, not only the window's.
    assert ada["job_title"] == "Analyst"
    assert ada["phone"] == "+442079460958"
    assert ada["city"] == "Bletchley"
    assert ada["partition_date"] == date(2026, 9, 3)
    assert report.records == 1
    assert report.from_enrichment_email == 0

    merge_crm_contacts(con, START, END, NOW)
    assert con.execute("SELECT count(*) FROM crm_contacts").fetchone() == (1,)


def test_rerunning_the_merge_is_idempotent(con: duckdb.DuckDBPyConnection) -> None:
    leads(con, ADA_LEAD, {"email": "grace@navy.mil", "first_name": "Grace"})
    store_persons(con, [ADA_PROFILE], NOW)

    first = merge_crm_contacts(con, START, END, NOW)
    before = con.execute("SELECT * FROM crm_contacts ORDER BY email").fetchall()
    second = merge_crm_contacts(con, START, END, NOW)

    assert (first.records, first.created, first.updated, first.unchanged) == (2, 2, 0, 0)
    assert (second.records, second.created, second.updated, second.unchanged) == (2, 0, 0, 2)
    assert second.removed == 0
    assert con.execute("SELECT * FROM crm_contacts ORDER BY email").fetchall() == before


def test_a_refreshed_profile_rebuilds_only_that_record(con: duckdb.DuckDBPyConnection) -> None:
    leads(con, ADA_LEAD, {"email": "grace@navy.mil", "first_name": "Grace"})
    store_persons(con, [ADA_PROFILE], NOW)
    merge_crm_contacts(con, START, END, NOW)

    later = NOW + timedelta(days=31)
    refreshed = person(ADA_PROFILE.key, job_title="Chief Analyst", company_domain="engines.io")
    store_persons(con, [refreshed], later)
    report = merge_crm_contacts(con, START, END, later + timedelta(seconds=1))

    assert (report.created, report.updated, report.unchanged) == (0, 1, 1)
    assert crm_records(con)[ADA_PROFILE.key]["job_title"] == "Chief Analyst"


def test_a_record_whose_email_no_lead_produces_any_more_is_removed(
    con: duckdb.DuckDBPyConnection,
) -> None:
    phone_lead = {"phone": "+1 415 555 0134", "first_name": "Alan", "last_name": "Turing"}
    leads(con, phone_lead)
    identity = con.execute("SELECT identity FROM clean_contacts").fetchone()[0]
    store_persons(con, [person(identity, work_email="alan@bletchley.example")], NOW)
    merge_crm_contacts(con, START, END, NOW)
    assert set(crm_records(con)) == {"alan@bletchley.example"}

    later = NOW + timedelta(days=31)
    store_persons(con, [person(identity, work_email="alan@manchester.example")], later)
    report = merge_crm_contacts(con, START, END, later + timedelta(seconds=1))

    assert report.removed == 1
    assert set(crm_records(con)) == {"alan@manchester.example"}


def test_a_different_merge_policy_merges_every_record_again(
    con: duckdb.DuckDBPyConnection,
) -> None:
    leads(con, ADA_LEAD)
    store_persons(
        con,
        [
            EnrichmentResult(
                ADA_PROFILE.key,
                Outcome.MATCHED,
                record=ADA_PROFILE.record,
                match_metadata={"match_confidence": "moderate"},
            )
        ],
        NOW,
    )
    merge_crm_contacts(con, START, END, NOW)
    assert crm_records(con)["ada@ae.io"]["job_title"] == "Chief Mathematician"

    strict = MergePolicy(rules=DEFAULT_POLICY.rules, min_confidence=Confidence.HIGH)
    report = merge_crm_contacts(con, START, END, NOW, strict)

    assert report.updated == 1
    record = crm_records(con)["ada@ae.io"]
    assert record["job_title"] == "Analyst"
    assert json.loads(record["provenance"])["job_title"]["source"] == "lead"
