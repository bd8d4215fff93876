"""Job-change history: a refreshed profile naming another employer or title is recorded in
``job_changes``, counted in the run's metadata and carried into the CRM record and export."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dagster import DagsterInstance

from enrich_pipeline.destinations.files import write_crm_files
from enrich_pipeline.field_profiles import field_profile
from enrich_pipeline.ingest import ingest_file
from enrich_pipeline.provider.models import EnrichmentResult, Outcome
from enrich_pipeline.settings import Settings
from enrich_pipeline.warehouse.connection import connect
from enrich_pipeline.warehouse.contacts import rebuild_clean_contacts
from enrich_pipeline.warehouse.crm import merge_crm_contacts
from enrich_pipeline.warehouse.enrichment import store_persons
from enrich_pipeline_tests.helpers import materialise_range, metadata_of

NOW = datetime(2026, 9, 10, 12, 0)
LATER = NOW + timedelta(days=31)
START = date(2026, 9, 1)
END = date(2026, 9, 4)


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    with connect(tmp_path / "warehouse.duckdb") as connection:
        yield connection


def matched(key: str, **record: Any) -> EnrichmentResult:
    return EnrichmentResult(
        key=key,
        status=Outcome.MATCHED,
        record=record,
        match_metadata={"match_confidence": "high"},
    )


def job_changes(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    cursor = con.execute("SELECT * FROM job_changes ORDER BY identity, detected_at")
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


ANALYST_AT_AE = {
    "job_title": "Analyst",
    "company_name": {"cleaned": "Analytical Engines", "raw": []},
    "company_domain": "analytical-engines.io",
}


def test_a_new_title_is_recorded_with_old_and_new(con: duckdb.DuckDBPyConnection) -> None:
    store_persons(con, [matched("ada@ae.io", **ANALYST_AT_AE)], NOW)

    recorded = store_persons(
        con, [matched("ada@ae.io", **{**ANALYST_AT_AE, "job_title": "Chief Analyst"})], LATER
    )

    assert recorded == 1
    assert job_changes(con) == [
        {
            "identity": "ada@ae.io",
            "email": "ada@ae.io",
            "old_company": "Analytical Engines",
            "new_company": "Analytical Engines",
            "old_company_domain": "analytical-engines.io",
            "new_company_domain": "analytical-engines.io",
            "old_title": "Analyst",
            "new_title": "Chief Analyst",
            "detected_at": LATER,
        }
    ]


def test_a_new_employer_is_recorded_with_the_work_email_for_a_phone_identity(
    con: duckdb.DuckDBPyConnection,
) -> None:
    identity = "phone:+442079460958"
    store_persons(con, [matched(identity, **ANALYST_AT_AE, work_email="ada@ae.io")], NOW)

    recorded = store_persons(
        con,
        [
            matched(
                identity,
                job_title="Analyst",
                company_name="Difference Engines",
                company_domain="difference.example",
                work_email=" Ada@Difference.example ",
            )
        ],
        LATER,
    )

    assert recorded == 1
    (change,) = job_changes(con)
    assert change["email"] == "ada@difference.example"
    assert (change["old_company"], change["new_company"]) == (
        "Analytical Engines",
        "Difference Engines",
    )
    assert (change["old_company_domain"], change["new_company_domain"]) == (
        "analytical-engines.io",
        "difference.example",
    )
    assert change["old_title"] == change["new_title"] == "Analyst"


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param(ANALYST_AT_AE, ANALYST_AT_AE, id="same-profile"),
        pytest.param(
            ANALYST_AT_AE,
            {
                "job_title": " ANALYST ",
                "company_name": "ANALYTICAL ENGINES LTD",
                "company_domain": "Analytical-Engines.IO",
            },
            id="same-domain-other-spelling",
        ),
        pytest.param(
            {"job_title": "Analyst", "company_name": "Analytical Engines"},
            {
                "job_title": "Analyst",
                "company_name": "analytical engines",
                "company_domain": "ae.io",
            },
            id="domain-gained-same-name",
        ),
        pytest.param(
            {"full_name": "Ada Lovelace"}, ANALYST_AT_AE, id="gaps-filled-are-not-changes"
        ),
    ],
)
def test_no_row_when_employer_and_title_are_unchanged(
    con: duckdb.DuckDBPyConnection, before: dict[str, Any], after: dict[str, Any]
) -> None:
    store_persons(con, [matched("ada@ae.io", **before)], NOW)

    recorded = store_persons(con, [matched("ada@ae.io", **after)], LATER)

    assert recorded == 0
    assert job_changes(con) == []


def test_a_first_match_or_a_match_after_no_match_is_no_change(
    con: duckdb.DuckDBPyConnection,
) -> None:
    first = store_persons(con, [matched("ada@ae.io", **ANALYST_AT_AE)], NOW)
    store_persons(con, [EnrichmentResult(key="grace@navy.mil", status=Outcome.NO_MATCH)], NOW)
    after_no_match = store_persons(
        con, [matched("grace@navy.mil", job_title="Admiral", company_name="US Navy")], LATER
    )

    assert (first, after_no_match) == (0, 0)
    assert job_changes(con) == []


def test_an_error_or_no_match_answer_records_nothing(con: duckdb.DuckDBPyConnection) -> None:
    store_persons(
        con,
        [matched("ada@ae.io", **ANALYST_AT_AE), matched("grace@navy.mil", job_title="Admiral")],
        NOW,
    )

    recorded = store_persons(
        con,
        [
            EnrichmentResult(key="ada@ae.io", status=Outcome.ERROR, error="HTTP 500"),
            EnrichmentResult(key="grace@navy.mil", status=Outcome.NO_MATCH),
        ],
        LATER,
    )

    assert recorded == 0
    assert job_changes(con) == []


def test_every_change_is_kept_and_counted_per_chunk(con: duckdb.DuckDBPyConnection) -> None:
    store_persons(
        con,
        [matched("ada@ae.io", job_title="Analyst"), matched("grace@navy.mil", job_title="Ensign")],
        NOW,
    )
    first = store_persons(
        con,
        [matched("ada@ae.io", job_title="Lead"), matched("grace@navy.mil", job_title="Admiral")],
        LATER,
    )
    second = store_persons(
        con, [matched("ada@ae.io", job_title="Director")], LATER + timedelta(days=1)
    )

    assert (first, second) == (2, 1)
    assert [(c["identity"], c["old_title"], c["new_title"]) for c in job_changes(con)] == [
        ("ada@ae.io", "Analyst", "Lead"),
        ("ada@ae.io", "Lead", "Director"),
        ("grace@navy.mil", "Ensign", "Admiral"),
    ]


def lead(con: duckdb.DuckDBPyConnection, received_at: str, **values: str) -> None:
    columns = ["source", "received_at", "landed_at", *values]
    con.execute(
        f"INSERT INTO raw_contacts ({', '.join(columns)}) "
        f"VALUES ({', '.join('?' for _ in columns)})",
        ["web", received_at, NOW, *values.values()],
    )
    rebuild_clean_contacts(con, START, END, NOW)


def crm_record(con: duckdb.DuckDBPyConnection, email: str) -> dict[str, Any]:
    cursor = con.execute("SELECT * FROM crm_contacts WHERE email = ?", [email])
    names = [d[0] for d in cursor.description]
    (row,) = cursor.fetchall()
    return dict(zip(names, row, strict=True))


def test_the_crm_record_is_rebuilt_with_the_job_change_date_and_exported(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    lead(con, "2026-09-01 10:00", email="ada@ae.io", first_name="Ada")
    lead(con, "2026-09-01 11:00", email="grace@navy.mil", first_name="Grace")
    store_persons(con, [matched("ada@ae.io", **ANALYST_AT_AE)], NOW)
    merge_crm_contacts(con, START, END, NOW)
    assert crm_record(con, "ada@ae.io")["job_changed_at"] is None

    store_persons(con, [matched("ada@ae.io", **{**ANALYST_AT_AE, "job_title": "CTO"})], LATER)
    report = merge_crm_contacts(con, START, END, LATER + timedelta(seconds=1))
    exported_files = write_crm_files(
        con, tmp_path / "exports", field_profile("sales_prospecting").crm_columns
    )
    rows = exported_files.rows

    assert (report.updated, report.unchanged) == (1, 1)
    ada = crm_record(con, "ada@ae.io")
    assert (ada["job_title"], ada["job_changed_at"]) == ("CTO", LATER)
    assert crm_record(con, "grace@navy.mil")["job_changed_at"] is None
    with (tmp_path / "exports" / "crm_contacts.csv").open(newline="", encoding="utf-8") as fh:
        exported = {row["Email"]: row for row in csv.DictReader(fh)}
    assert rows == 2
    assert exported["ada@ae.io"]["Job Change Date"] == LATER.date().isoformat()
    assert exported["grace@navy.mil"]["Job Change Date"] == ""


def test_the_latest_change_among_an_emails_identities_wins(
    con: duckdb.DuckDBPyConnection,
) -> None:
    lead(con, "2026-09-01 10:00", email="ada@ae.io")
    lead(con, "2026-09-02 10:00", phone="+44 20 7946 0958")
    phone = "phone:+442079460958"
    store_persons(
        con,
        [
            matched("ada@ae.io", job_title="Analyst"),
            matched(phone, job_title="Analyst", work_email="ada@ae.io"),
        ],
        NOW,
    )
    store_persons(con, [matched("ada@ae.io", job_title="Lead")], LATER)
    store_persons(
        con,
        [matched(phone, job_title="Director", work_email="ada@ae.io")],
        LATER + timedelta(days=2),
    )

    merge_crm_contacts(con, START, END, LATER + timedelta(days=3))

    assert crm_record(con, "ada@ae.io")["job_changed_at"] == LATER + timedelta(days=2)


def test_an_older_warehouse_gains_the_job_change_column(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    with connect(path) as con:
        con.execute("ALTER TABLE crm_contacts DROP COLUMN job_changed_at")
        con.execute("DROP TABLE job_changes")

    with connect(path) as con:
        lead(con, "2026-09-01 10:00", email="ada@ae.io")
        store_persons(con, [matched("ada@ae.io", job_title="Analyst")], NOW)
        store_persons(con, [matched("ada@ae.io", job_title="Lead")], LATER)
        merge_crm_contacts(con, START, END, LATER + timedelta(seconds=1))

        assert crm_record(con, "ada@ae.io")["job_changed_at"] == LATER


CONTACTS_CSV = """Email,First Name,Last Name,Company Name,Lead Source,Create Date
ada@analytical-engines.io,Ada,Lovelace,Analytical Engines,Web Form,2026-09-01 10:00:00
grace@navy.example,Grace,Hopper,US Navy,Web Form,2026-09-02 10:00:00
"""


def test_a_refresh_that_finds_new_jobs_shows_in_the_runs_metadata_and_the_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENRICH_SANDBOX_MATCH_RATE", "1")
    settings = Settings(
        warehouse_path=str(tmp_path / "warehouse.duckdb"),
        export_dir=str(tmp_path / "exports"),
        chunk_size=1,
    )
    source = tmp_path / "contacts.csv"
    source.write_text(CONTACTS_CSV, encoding="utf-8")
    ingest_file(settings.warehouse_path, source)

    with DagsterInstance.ephemeral() as instance:
        first = materialise_range(settings, "2026-09-01", "2026-09-02", instance)
        # The stored profiles become last month's answers with other titles: the refresh the
        # TTL now asks for brings back the provider's current ones.
        with connect(settings.warehouse_path) as con:
            con.execute(
                "UPDATE person_enrichment SET job_title = 'Intern', "
                "enriched_at = enriched_at - INTERVAL 40 DAY"
            )
        second = materialise_range(settings, "2026-09-01", "2026-09-02", instance)

    assert metadata_of(first, "enriched_persons")["job_changes_detected"] == 0
    persons = metadata_of(second, "enriched_persons")
    # Two chunks of one: the count is the run's, not the last chunk's.
    assert persons["results_written"] == 2
    assert persons["job_changes_detected"] == 2
    assert metadata_of(second, "crm_exports")["records_with_job_change"] == 2
    with connect(settings.warehouse_path) as con:
        changes = con.execute(
            "SELECT j.email, j.old_title, j.new_title = p.job_title FROM job_changes j "
            "JOIN person_enrichment p USING (identity) ORDER BY email"
        ).fetchall()
    assert changes == [
        ("ada@analytical-engines.io", "Intern", True),
        ("grace@navy.example", "Intern", True),
    ]
    with (Path(settings.export_dir) / "crm_contacts.csv").open(encoding="utf-8") as fh:
        assert all(row["Job Change Date"] for row in csv.DictReader(fh))
