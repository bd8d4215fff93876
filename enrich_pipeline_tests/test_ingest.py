from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from enrich_pipeline.cli import main
from enrich_pipeline.column_mapping import ColumnMappingError, map_columns
from enrich_pipeline.ingest import IngestError, IngestReport, ingest_file
from enrich_pipeline_tests.helpers import read_warehouse, write_small_csv

NOW = datetime(2026, 9, 1, 12, 0, 0)

HUBSPOT = [
    "Record ID",
    "Email",
    "First Name",
    "Last Name",
    "Phone Number",
    "Mobile Phone Number",
    "Company Name",
    "Website URL",
    "LinkedIn URL",
    "Job Title",
    "City",
    "State/Region",
    "Country/Region",
    "Lead Source",
    "Create Date",
]


def write_csv(path: Path, headers: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(headers)
        writer.writerows(rows)
    return path


def hubspot_row(**values: str) -> list[str]:
    return [values.get(h, "") for h in HUBSPOT]


def query(warehouse: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with read_warehouse(str(warehouse)) as con:
        return con.execute(sql, params or []).fetchall()


def table_state(warehouse: Path) -> tuple[Any, ...]:
    return (
        query(warehouse, "SELECT * FROM raw_contacts ORDER BY ingest_id"),
        query(warehouse, "SELECT * FROM quarantine ORDER BY quarantine_id"),
    )


def assert_all_rows_accounted_for(warehouse: Path, report: IngestReport) -> None:
    assert report.rows_read == report.accepted + report.quarantined
    [(landed,)] = query(
        warehouse,
        "SELECT count(*) FROM raw_contacts WHERE ingest_id BETWEEN ? AND ?",
        [report.first_ingest_id or 0, report.last_ingest_id or 0],
    )
    assert landed == report.accepted
    assert sum(report.quarantine_reasons.values()) == report.quarantined


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    return tmp_path / "warehouse.duckdb"


@pytest.fixture
def messy_hubspot(tmp_path: Path) -> Path:
    rows = [
        hubspot_row(
            **{
                "Record ID": "101",
                "Email": "  JANE.DOE@Acme.COM ",
                "First Name": " Jane ",
                "Last Name": "Doe\u00a0",
                "Phone Number": "(415) 555-0134",
                "Company Name": "Acme",
                "Website URL": "https://www.acme.com",
                "Job Title": "\tCTO",
                "Lead Source": "Web Form",
                "Create Date": "2026-08-03 14:22:05",
            }
        ),
        hubspot_row(**{"Record ID": "102", "Mobile Phone Number": " 415.555.0199 "}),
        hubspot_row(**{"Record ID": "103", "LinkedIn URL": "linkedin.com/in/someone-1a2b3c"}),
        hubspot_row(**{"Record ID": "104", "Email": "jane@@acme.com", "Create Date": "yesterday"}),
        hubspot_row(**{"Record ID": "105", "City": "Boston", "Job Title": "CTO"}),
        hubspot_row(),
        hubspot_row(**{"Record ID": "107", "Company Name": "Globex", "Create Date": "   "}),
        hubspot_row(**{"Record ID": "108", "Email": "not-an-email"}),
    ]
    return write_csv(tmp_path / "hubspot_export.csv", HUBSPOT, rows)


def test_every_row_of_a_messy_hubspot_export_is_landed_or_quarantined(
    warehouse: Path, messy_hubspot: Path
) -> None:
    report = ingest_file(warehouse, messy_hubspot, now=NOW)

    assert report.rows_read == 8
    assert report.accepted == 5
    assert report.quarantined == 3
    assert report.quarantine_reasons == {"no identifying value": 2, "unparseable date": 1}
    assert report.source_file == "hubspot_export.csv"
    assert_all_rows_accounted_for(warehouse, report)
    landed_rows = query(warehouse, "SELECT source_row FROM raw_contacts ORDER BY source_row")
    quarantined_rows = query(warehouse, "SELECT source_row FROM quarantine ORDER BY source_row")
    assert sorted(r for (r,) in landed_rows + quarantined_rows) == list(range(1, 9))


def test_landed_values_are_trimmed_except_email_and_blanks_are_null(
    warehouse: Path, messy_hubspot: Path
) -> None:
    ingest_file(warehouse, messy_hubspot, now=NOW)

    [jane] = query(
        warehouse,
        "SELECT email, first_name, last_name, phone, company_name, website, job_title, "
        "linkedin_url, city, source, received_at, landed_at FROM raw_contacts "
        "WHERE source_row = 1",
    )
    assert jane == (
        "  JANE.DOE@Acme.COM ",
        "Jane",
        "Doe",
        "(415) 555-0134",
        "Acme",
        "https://www.acme.com",
        "CTO",
        None,
        None,
        "Web Form",
        datetime(2026, 8, 3, 14, 22, 5),
        NOW,
    )
    # Mobile fills in when Phone Number is blank; a blank date cell means "received now".
    assert query(warehouse, "SELECT phone, received_at FROM raw_contacts WHERE source_row = 2") == [
        ("415.555.0199", NOW)
    ]
    assert query(warehouse, "SELECT received_at FROM raw_contacts WHERE source_row = 7") == [(NOW,)]
    # Email validity is the pipeline's job: an invalid address still lands, as given.
    assert query(warehouse, "SELECT email FROM raw_contacts WHERE source_row = 8") == [
        ("not-an-email",)
    ]


def test_quarantine_rows_carry_reason_field_and_original_values(
    warehouse: Path, messy_hubspot: Path
) -> None:
    ingest_file(warehouse, messy_hubspot, source="hubspot", now=NOW)

    rows = query(
        warehouse,
        "SELECT stage, source, source_file, source_row, partition_date, field, reason, "
        "original, quarantined_at, ingest_id FROM quarantine ORDER BY source_row",
    )
    assert [r[:7] for r in rows] == [
        ("ingest", "hubspot", "hubspot_export.csv", 4, None, "Create Date", "unparseable date"),
        ("ingest", "hubspot", "hubspot_export.csv", 5, None, None, "no identifying value"),
        ("ingest", "hubspot", "hubspot_export.csv", 6, None, None, "no identifying value"),
    ]
    assert all(r[8] == NOW and r[9] is None for r in rows)
    bad_date = json.loads(rows[0][7])
    assert list(bad_date) == HUBSPOT
    assert bad_date["Record ID"] == "104"
    assert bad_date["Email"] == "jane@@acme.com"
    assert bad_date["Create Date"] == "yesterday"
    assert json.loads(rows[1][7])["City"] == "Boston"


def test_snake_case_headers_map_to_the_same_columns(warehouse: Path, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "form.csv",
        [
            "email",
            "full_name",
            "phone_number",
            "company",
            "website",
            "linkedin",
            "title",
            "city",
            "state",
            "country",
            "submitted_at",
            "utm_campaign",
        ],
        [
            [
                "Bob@Example.com",
                " Bob Stone ",
                "+44 20 7946 0958",
                "Initech",
                "initech.com",
                "https://www.linkedin.com/in/bob-stone",
                "Head of Data",
                "London",
                "Greater London",
                "United Kingdom",
                "2026-08-10T09:30:00Z",
                "spring",
            ],
            ["", "", "", "", "", "", "Intern", "", "", "", "2026-08-11", ""],
        ],
    )
    report = ingest_file(warehouse, path, now=NOW)

    assert (report.rows_read, report.accepted, report.quarantined) == (2, 1, 1)
    assert query(
        warehouse,
        "SELECT email, full_name, first_name, phone, company_name, website, linkedin_url, "
        "job_title, city, state, country, received_at, source FROM raw_contacts",
    ) == [
        (
            "Bob@Example.com",
            "Bob Stone",
            None,
            "+44 20 7946 0958",
            "Initech",
            "initech.com",
            "https://www.linkedin.com/in/bob-stone",
            "Head of Data",
            "London",
            "Greater London",
            "United Kingdom",
            datetime(2026, 8, 10, 9, 30),
            "form",
        )
    ]
    assert_all_rows_accounted_for(warehouse, report)


def test_ingest_ids_increase_across_ingests_in_file_order(
    warehouse: Path, messy_hubspot: Path, tmp_path: Path
) -> None:
    first = ingest_file(warehouse, messy_hubspot, now=NOW)
    second = ingest_file(warehouse, messy_hubspot, now=NOW + timedelta(hours=1))

    assert first.first_ingest_id is not None and first.last_ingest_id is not None
    assert second.first_ingest_id is not None and second.last_ingest_id is not None
    assert first.last_ingest_id - first.first_ingest_id + 1 == first.accepted
    assert second.first_ingest_id > first.last_ingest_id
    assert second.last_ingest_id - second.first_ingest_id + 1 == second.accepted
    ids_by_row = query(
        warehouse,
        "SELECT source_row FROM raw_contacts WHERE ingest_id >= ? ORDER BY ingest_id",
        [second.first_ingest_id],
    )
    assert [r for (r,) in ids_by_row] == [1, 2, 3, 7, 8]
    assert query(warehouse, "SELECT count(*) FROM quarantine") == [(6,)]


def test_skip_if_landed_lands_a_file_once_and_reports_the_earlier_landing(
    warehouse: Path, messy_hubspot: Path
) -> None:
    first = ingest_file(warehouse, messy_hubspot, now=NOW, skip_if_landed=True)
    before = table_state(warehouse)
    again = ingest_file(warehouse, messy_hubspot, now=NOW + timedelta(days=1), skip_if_landed=True)

    assert not first.already_landed
    assert again.already_landed
    assert table_state(warehouse) == before
    assert (again.rows_read, again.accepted, again.quarantined) == (8, 5, 3)
    assert (again.first_ingest_id, again.last_ingest_id) == (
        first.first_ingest_id,
        first.last_ingest_id,
    )
    assert again.quarantine_reasons == first.quarantine_reasons


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-08-03 14:22:05", datetime(2026, 8, 3, 14, 22, 5)),
        ("2026-08-03 14:22", datetime(2026, 8, 3, 14, 22)),
        ("2026-08-03", datetime(2026, 8, 3)),
        ("2026-08-03T14:22:05", datetime(2026, 8, 3, 14, 22, 5)),
        ("2026-08-03T14:22:05Z", datetime(2026, 8, 3, 14, 22, 5)),
        ("2026-08-03T14:22:05.250Z", datetime(2026, 8, 3, 14, 22, 5, 250000)),
        ("2026-08-03T14:22:05+02:00", datetime(2026, 8, 3, 12, 22, 5)),
        ("2026-08-03T22:30:00-04:00", datetime(2026, 8, 4, 2, 30)),
        ("08/03/2026 14:22", datetime(2026, 8, 3, 14, 22)),
        ("08/03/2026 14:22:05", datetime(2026, 8, 3, 14, 22, 5)),
        ("8/3/2026", datetime(2026, 8, 3)),
        ("1785766925", datetime(2026, 8, 3, 14, 22, 5)),
        ("1785766925123", datetime(2026, 8, 3, 14, 22, 5, 123000)),
    ],
)
def test_received_at_is_parsed_from_each_supported_format_as_utc(
    warehouse: Path, tmp_path: Path, text: str, expected: datetime
) -> None:
    path = write_csv(tmp_path / "dates.csv", ["Email", "Create Date"], [["a@acme.com", text]])
    report = ingest_file(warehouse, path, now=NOW)

    assert report.accepted == 1
    assert query(warehouse, "SELECT received_at FROM raw_contacts") == [(expected,)]


@pytest.mark.parametrize("text", ["31/31/2026", "yesterday", "2026-02-30", "20260803", "infinity"])
def test_unparseable_received_date_is_quarantined_with_its_column(
    warehouse: Path, tmp_path: Path, text: str
) -> None:
    path = write_csv(tmp_path / "dates.csv", ["email", "signup_date"], [["a@acme.com", text]])
    report = ingest_file(warehouse, path, now=NOW)

    assert (report.accepted, report.quarantined) == (0, 1)
    [(field, reason, original)] = query(warehouse, "SELECT field, reason, original FROM quarantine")
    assert (field, reason) == ("signup_date", "unparseable date")
    assert json.loads(original) == {"email": "a@acme.com", "signup_date": text}


def test_aware_now_is_stored_as_naive_utc(warehouse: Path, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "n.csv", ["Email"], [["a@acme.com"]])
    eight_am_eastern = datetime(2026, 9, 1, 8, 0, tzinfo=timezone(timedelta(hours=-4)))
    ingest_file(warehouse, path, now=eight_am_eastern)

    assert query(warehouse, "SELECT received_at, landed_at FROM raw_contacts") == [(NOW, NOW)]


def test_source_comes_from_row_then_option_then_file_stem(warehouse: Path, tmp_path: Path) -> None:
    with_column = write_csv(
        tmp_path / "mixed_leads.csv",
        ["Email", "Lead Source"],
        [["a@acme.com", " Event Scan "], ["b@acme.com", ""]],
    )
    without_column = write_csv(tmp_path / "partner_feed.csv", ["Email"], [["c@acme.com"]])

    ingest_file(warehouse, with_column, source="Partner Sync", now=NOW)
    ingest_file(warehouse, with_column, now=NOW)
    ingest_file(warehouse, without_column, source="CSV Import", now=NOW)
    ingest_file(warehouse, without_column, now=NOW)

    assert query(warehouse, "SELECT email, source FROM raw_contacts ORDER BY ingest_id") == [
        ("a@acme.com", "Event Scan"),
        ("b@acme.com", "Partner Sync"),
        ("a@acme.com", "Event Scan"),
        ("b@acme.com", "mixed_leads"),
        ("c@acme.com", "CSV Import"),
        ("c@acme.com", "partner_feed"),
    ]


def _ragged_after_sniffing() -> bytes:
    """Well-formed for longer than DuckDB's sniffing sample, then a row with an extra field,
    so the failure comes from the full read inside the warehouse connection."""
    body = "".join(f"user{i}@acme.com,User\n" for i in range(25_000))
    return f"Email,First Name\n{body}late@acme.com,Late,surprise\n".encode()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"", "the file is empty"),
        (bytes(range(256)) * 8, "could not be read as CSV"),
        (b"Record ID,City\n1,Boston\n", "no column identifies a contact"),
        (b"Email,Name\na@b.com,x,y\nc@d.com\n", "could not be read as CSV"),
        (_ragged_after_sniffing(), "line 25002 has 3 fields where the header has 2"),
    ],
    ids=["missing", "empty", "binary", "no-identifying-column", "ragged", "ragged-late"],
)
def test_unreadable_file_raises_and_changes_nothing(
    warehouse: Path, messy_hubspot: Path, tmp_path: Path, content: bytes | None, message: str
) -> None:
    ingest_file(warehouse, messy_hubspot, now=NOW)
    before = table_state(warehouse)
    bad = tmp_path / "bad.csv"
    if content is not None:
        bad.write_bytes(content)

    with pytest.raises(IngestError) as caught:
        ingest_file(warehouse, bad, now=NOW)

    assert str(bad) in str(caught.value)
    assert message in str(caught.value)
    assert table_state(warehouse) == before
    # The next file's ids continue straight on from the first file's.
    again = ingest_file(warehouse, messy_hubspot, now=NOW)
    assert again.first_ingest_id == 6


def test_header_only_file_lands_nothing(warehouse: Path, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "empty_export.csv", HUBSPOT, [])
    report = ingest_file(warehouse, path, now=NOW)

    assert report == IngestReport(
        rows_read=0,
        accepted=0,
        quarantined=0,
        first_ingest_id=None,
        last_ingest_id=None,
        quarantine_reasons={},
        source_file="empty_export.csv",
    )


def test_default_now_is_the_current_utc_time(warehouse: Path, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "n.csv", ["Email"], [["a@acme.com"]])
    before = datetime.now(UTC).replace(tzinfo=None)
    ingest_file(warehouse, path)
    after = datetime.now(UTC).replace(tzinfo=None)

    [(received_at, landed_at)] = query(warehouse, "SELECT received_at, landed_at FROM raw_contacts")
    assert before <= received_at == landed_at <= after


def test_mapping_matches_headers_loosely_and_prefers_primary_spellings() -> None:
    mapping = map_columns(
        ["Mobile Phone Number", "E-Mail", "phone_number", "STATE/REGION", "Record ID", "utm"]
    )
    assert mapping.columns == {
        "email": ("E-Mail",),
        "phone": ("phone_number", "Mobile Phone Number"),
        "state": ("STATE/REGION",),
    }
    assert mapping.unrecognised == ("utm",)


def test_mapping_rejects_headers_with_nothing_identifying() -> None:
    with pytest.raises(ColumnMappingError, match="no column identifies a contact"):
        map_columns(["Company Name", "Website URL", "Create Date"])


def test_control_characters_never_land_and_a_nul_value_is_blank(
    warehouse: Path, tmp_path: Path
) -> None:
    path = write_csv(
        tmp_path / "controls.csv",
        ["Email", "First Name", "Last Name", "Company Name", "Job Title"],
        [["ada@analytical-engines.io", "Ada\tMae", "\x00", "Analytical\x07 Engines", "CTO\r\n"]],
    )
    ingest_file(warehouse, path, now=NOW)
    assert query(
        warehouse, "SELECT first_name, last_name, company_name, job_title FROM raw_contacts"
    ) == [("Ada Mae", None, "Analytical Engines", "CTO")]


def test_a_second_column_for_one_field_refuses_the_file_naming_it(
    warehouse: Path, tmp_path: Path
) -> None:
    # DuckDB reads the second 'Email' as 'Email_1'; its addresses must not vanish silently.
    path = write_csv(
        tmp_path / "two-emails.csv",
        ["Email", "First Name", "Email"],
        [["ada@analytical-engines.io", "Ada", "ada.lovelace@home.example"]],
    )
    with pytest.raises(IngestError, match="column 'Email' appears more than once"):
        ingest_file(warehouse, path, now=NOW)
    assert not warehouse.exists() or query(warehouse, "SELECT count(*) FROM raw_contacts") == [(0,)]


def test_a_work_email_column_is_the_email(warehouse: Path, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "work.csv", ["Work Email", "Name"], [["ada@ae.io", "Ada L"]])
    ingest_file(warehouse, path, now=NOW)
    assert query(warehouse, "SELECT email, full_name FROM raw_contacts") == [("ada@ae.io", "Ada L")]


def test_the_cli_always_says_which_columns_it_ignored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENRICH_WAREHOUSE_URL", str(tmp_path / "warehouse.duckdb"))
    path = write_csv(
        tmp_path / "extra.csv", ["Email", "Favourite Colour", "Shoe Size"], [["a@b.io", "red", "9"]]
    )
    assert main(["ingest", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "1 accepted" in printed
    assert "ignored columns (no field takes them): Favourite Colour, Shoe Size" in printed


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"Email,First Name\na@b.io,Ada\nc@d.io,Bo,extra,more\n",
            "line 3 has 4 fields where the header has 2: quote any value that contains ','",
        ),
        (b'Email,First Name\na@b.io,"Ada\nc@d.io,Bo\n', 'line 2 opens a quote (") that is never'),
        (
            "Email,First Name\na@b.io,José\n".encode("latin-1"),
            "line 2 is not utf-8 text: pass --encoding with the file's encoding",
        ),
    ],
    ids=["ragged", "unclosed-quote", "latin-1"],
)
def test_an_unreadable_file_is_refused_naming_the_line_and_the_fix(
    warehouse: Path, tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "broken.csv"
    path.write_bytes(content)
    with pytest.raises(IngestError, match="could not be read as CSV") as refused:
        ingest_file(warehouse, path, now=NOW)
    assert message in str(refused.value)
    assert "sniffing" not in str(refused.value)


@pytest.mark.parametrize(
    ("content", "encoding"),
    [
        ("Email;First Name;City\nada@ae.io;José;Oslo\n".encode(), None),
        ("Email\tFirst Name\tCity\nada@ae.io\tJosé\tOslo\n".encode(), None),
        ("Email,First Name,City\nada@ae.io,José,Oslo\n".encode("utf-16"), None),
        ("Email,First Name,City\nada@ae.io,José,Oslo\n".encode("latin-1"), "latin-1"),
    ],
    ids=["semicolons", "tabs", "utf-16", "latin-1-given"],
)
def test_other_delimiters_and_encodings_land(
    warehouse: Path, tmp_path: Path, content: bytes, encoding: str | None
) -> None:
    path = tmp_path / "other.csv"
    path.write_bytes(content)
    ingest_file(warehouse, path, now=NOW, encoding=encoding)
    assert query(warehouse, "SELECT email, first_name, city FROM raw_contacts") == [
        ("ada@ae.io", "José", "Oslo")
    ]


def test_the_cli_lands_a_file_under_the_ingest_memory_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from enrich_pipeline import cli

    caps: list[str | None] = []
    real_ingest = cli.ingest_file

    def spy(*args: Any, memory_limit: str | None = None, **kwargs: Any) -> IngestReport:
        caps.append(memory_limit)
        return real_ingest(*args, memory_limit=memory_limit, **kwargs)

    monkeypatch.setattr(cli, "ingest_file", spy)
    monkeypatch.setenv("ENRICH_INGEST_MEMORY_LIMIT", "300MB")
    assert cli.main(["ingest", str(write_small_csv(tmp_path))]) == 0
    assert caps == ["300MB"]
