from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from enrich_pipeline.ingest import ingest_file
from enrich_pipeline.intake import landing
from enrich_pipeline.intake.journal import IntakeJournal, Journal
from enrich_pipeline.intake.landing import LandingReport, land_from_journal, lead_problem
from enrich_pipeline.settings import Settings
from enrich_pipeline.warehouse.connection import WarehouseBusy
from enrich_pipeline_tests.helpers import held_by_another_process, read_warehouse, release
from enrich_pipeline_tests.test_ingest import HUBSPOT, hubspot_row

NOW = datetime(2026, 9, 1, 12, 0, 0)
RECEIVED = datetime(2026, 8, 30, 9, 0, 0)
LANDED_COLUMNS = (
    "source, received_at, landed_at, email, first_name, last_name, full_name, phone, "
    "company_name, website, linkedin_url, job_title, city, state, country"
)


def hubspot_lead(**values: str) -> dict[str, Any]:
    """A lead as a HubSpot form would send it: every field of the export, blank ones empty."""
    return dict(zip(HUBSPOT, hubspot_row(**values), strict=True))


HUBSPOT_LEADS = [
    # Padding, a zone offset and a lead source of its own: what mapping and parsing must do.
    hubspot_lead(
        Email="  MAX.ROE@Initech.COM ",
        City="\tAustin",
        **{"Last Name": "Roe\u00a0", "Phone Number": "(512) 555-0101", "Lead Source": "Webinar"},
        **{"Create Date": "2026-08-03T14:22:05+02:00", "State/Region": "TX "},
    ),
    hubspot_lead(**{"Mobile Phone Number": " 415.555.0199 "}),
    hubspot_lead(Email="jane@@acme.com", **{"Create Date": "yesterday"}),
    hubspot_lead(City="Boston", **{"Job Title": "CTO"}),
]
SNAKE_LEADS: list[dict[str, Any]] = [
    {
        "email": "bob@example.com",
        "full_name": " Bob Stone ",
        "phone_number": "+1 212 555 0100",
        "company": "Globex",
        "website": "globex.com",
        "linkedin": "linkedin.com/in/bob",
        "title": "VP Sales",
        "city": "NYC",
        "state": "NY",
        "country": "US",
        "submitted_at": "08/03/2026 14:22",
        "utm_campaign": "fall",
    },
]


@pytest.fixture
def warehouse(settings: Settings) -> str:
    """The test's warehouse, where its ``journal`` lands: a file, or Postgres."""
    return settings.warehouse_path


def query(warehouse: str, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with read_warehouse(str(warehouse)) as con:
        return con.execute(sql, params or []).fetchall()


def landed(warehouse: str) -> list[tuple[Any, ...]]:
    return query(warehouse, f"SELECT {LANDED_COLUMNS} FROM raw_contacts ORDER BY ingest_id")


def quarantined(warehouse: str) -> list[tuple[Any, ...]]:
    rows = query(
        warehouse, "SELECT source, field, reason, original FROM quarantine ORDER BY source_row"
    )
    return [(*row[:3], json.loads(row[3])) for row in rows]


@pytest.mark.parametrize("leads", [HUBSPOT_LEADS, SNAKE_LEADS], ids=["hubspot", "snake_case"])
def test_leads_land_exactly_as_the_same_csv_rows(
    tmp_path: Path, journal: Journal, warehouse: str, leads: list[dict[str, Any]]
) -> None:
    csv_path = tmp_path / "same.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(leads[0]))
        writer.writeheader()
        writer.writerows(leads)
    csv_warehouse = tmp_path / "csv.duckdb"
    # The CSV's "now" is both received_at fallback and landed_at, as for the entry below.
    ingested = ingest_file(csv_warehouse, csv_path, source="form", now=RECEIVED)
    journal.append(leads, source="form", received_at=RECEIVED)

    report = land_from_journal(journal, warehouse, now=RECEIVED)

    assert report == LandingReport(
        entries=len(leads),
        landed=ingested.accepted,
        quarantined=ingested.quarantined,
        last_seq=len(leads),
    )
    assert landed(warehouse) == landed(csv_warehouse)
    # The same reasons and rows; only the kept original differs where it should: a CSV reads
    # an empty cell as null, the journal keeps the lead exactly as sent.
    as_csv_reads = [
        (*row[:3], {k: v or None for k, v in row[3].items()}) for row in quarantined(warehouse)
    ]
    assert as_csv_reads == quarantined(csv_warehouse)
    assert [row[3] for row in quarantined(warehouse)] == [
        lead for lead in leads if lead_problem(lead) is not None
    ]
    [(source_file,)] = query(warehouse, "SELECT DISTINCT source_file FROM raw_contacts")
    assert source_file == f"intake:{journal.journal_id}"


def test_values_are_stringified_and_fallbacks_come_from_the_entry(
    journal: Journal, warehouse: str
) -> None:
    journal.append(
        [
            {"Phone": 14155550123, "Email": None, "signup_date": 1754230920, "source": "ad"},
            {"email": "a@x.com", "source": " "},
        ],
        source="form",
        received_at=RECEIVED,
    )
    land_from_journal(journal, warehouse, now=NOW)

    assert query(
        warehouse, "SELECT phone, email, source, received_at FROM raw_contacts ORDER BY ingest_id"
    ) == [
        ("14155550123", None, "ad", datetime(2025, 8, 3, 14, 22)),
        (None, "a@x.com", "form", RECEIVED),
    ]


@pytest.mark.duckdb_file  # the file journal's watermark; Postgres marks each entry
def test_entries_land_in_sequence_order_in_batches_and_only_once(
    journal: Journal, warehouse: str
) -> None:
    for i in range(5):
        journal.append(
            [{"email": f"{i}a@x.com"}, {"email": f"{i}b@x.com"}],
            source="form",
            received_at=RECEIVED + timedelta(minutes=i),
        )

    first = land_from_journal(journal, warehouse, limit=3, now=NOW)
    rest = land_from_journal(journal, warehouse, limit=100, now=NOW)
    again = land_from_journal(journal, warehouse, now=NOW)

    assert first == LandingReport(entries=3, landed=3, quarantined=0, last_seq=3)
    assert rest == LandingReport(entries=7, landed=7, quarantined=0, last_seq=10)
    assert again == LandingReport(entries=0, landed=0, quarantined=0, last_seq=10)
    rows = query(warehouse, "SELECT source_row, email FROM raw_contacts ORDER BY ingest_id")
    assert rows == [(seq, f"{(seq - 1) // 2}{'ab'[(seq - 1) % 2]}@x.com") for seq in range(1, 11)]
    assert query(warehouse, "SELECT journal_id, last_seq FROM intake_progress") == [
        (journal.journal_id, 10)
    ]


def test_each_journal_keeps_its_own_watermark(
    tmp_path: Path, journal: Journal, warehouse: str
) -> None:
    other = IntakeJournal(tmp_path / "other.sqlite")
    journal.append([{"email": "a@x.com"}], source="form", received_at=RECEIVED)
    other.append([{"email": "b@x.com"}, {"email": "c@x.com"}], source="form", received_at=RECEIVED)

    assert land_from_journal(journal, warehouse, now=NOW).last_seq == 1
    assert land_from_journal(other, warehouse, now=NOW).last_seq == 2
    other.close()
    assert [r[3] for r in landed(warehouse)] == ["a@x.com", "b@x.com", "c@x.com"]


def test_a_crash_before_commit_lands_nothing_and_the_next_call_lands_all_once(
    journal: Journal, warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal.append([{"email": "a@x.com"}, {"city": "Oslo"}], source="form", received_at=RECEIVED)
    real_land = landing.land_checked

    def land_then_die(*args: Any, **kwargs: Any) -> Any:
        real_land(*args, **kwargs)  # rows written inside the transaction, watermark not yet
        raise RuntimeError("killed")

    monkeypatch.setattr(landing, "land_checked", land_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        land_from_journal(journal, warehouse, now=NOW)
    assert landed(warehouse) == []
    assert quarantined(warehouse) == []
    assert query(warehouse, "SELECT * FROM intake_progress") == []

    monkeypatch.undo()
    assert land_from_journal(journal, warehouse, now=NOW) == LandingReport(
        entries=2, landed=1, quarantined=1, last_seq=2
    )
    assert land_from_journal(journal, warehouse, now=NOW).entries == 0
    assert [r[3] for r in landed(warehouse)] == ["a@x.com"]


def test_a_busy_warehouse_is_the_callers_to_retry(journal: Journal, warehouse: str) -> None:
    journal.append([{"email": "a@x.com"}], source="form", received_at=RECEIVED)
    with held_by_another_process(warehouse) as holder:
        with pytest.raises(WarehouseBusy):
            land_from_journal(journal, warehouse, now=NOW, lock_timeout_s=0.2)
        release(holder)
    assert land_from_journal(journal, warehouse, now=NOW).landed == 1


def test_a_lead_without_identity_is_quarantined_with_its_reason(
    journal: Journal, warehouse: str
) -> None:
    lead = {"City": "Boston", "Job Title": "CTO", "score": 7}
    journal.append([lead], source="form", received_at=RECEIVED)

    report = land_from_journal(journal, warehouse, now=NOW)

    assert (report.landed, report.quarantined) == (0, 1)
    assert query(
        warehouse, "SELECT stage, source, source_row, reason, original::VARCHAR FROM quarantine"
    ) == [("ingest", "form", 1, "no identifying value", json.dumps(lead))]


@pytest.mark.parametrize(
    ("lead", "problem"),
    [
        ({"Email": "a@x.com"}, None),
        ({"phone_number": 4155550134}, None),
        ({"Company Name": "Acme", "Create Date": "2026-08-03 14:22"}, None),
        ({"linkedin": "linkedin.com/in/x", "created_at": "08/03/2026", "x": None}, None),
        # Only the first filled date field counts, as in ingest.
        ({"email": "a@x.com", "received_at": "2026-08-03", "created_at": "never"}, None),
        (["a@x.com"], "a lead must be a JSON object"),
        ("a@x.com", "a lead must be a JSON object"),
        ({"City": "Boston", "score": 3}, "no identifying value"),
        ({"Email": " \u00a0", "Phone": None}, "no identifying value"),
        ({"Email": {"work": "a@x.com"}}, "'Email' must be a string, number or null"),
        ({"email": "a@x.com", "tags": ["a"]}, "'tags' must be a string, number or null"),
        ({"email": "a@x.com", "score": float("nan")}, "'score' must be a finite number"),
        ({"email": "a@x.com", "Create Date": "yesterday"}, "'Create Date' is not a date"),
        ({"email": "a@x.com", "signup_date": "31/12/2026"}, "'signup_date' is not a date"),
    ],
)
def test_lead_problem(lead: object, problem: str | None) -> None:
    found = lead_problem(lead)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem)


def test_lead_problem_names_the_identifying_fields() -> None:
    found = lead_problem({"city": "Oslo"}) or ""
    for field in ("email", "phone", "linkedin_url", "first_name", "last_name", "company_name"):
        assert field in found


def test_a_lead_of_control_characters_only_identifies_no_one() -> None:
    # Refused at the door as ingest would quarantine it: nothing is left once they are out.
    assert lead_problem({"Email": "\x00", "Phone": "\x07\t"}) is not None
    assert lead_problem({"Email": "ada@analytical-engines.io", "Last Name": "\x00"}) is None
    assert landing.landed_values({"Email": "a@b.io", "Last Name": "\x00", "City": "Oslo\n"}) == {
        **dict.fromkeys(landing.CONTACT_COLUMNS),
        "email": "a@b.io",
        "city": "Oslo",
    }
