"""Landed rows to clean contacts: normalisation, dedupe, quarantine and idempotent re-runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from enrich_pipeline.ingest import ingest_file
from enrich_pipeline.warehouse.connection import connect
from enrich_pipeline.warehouse.contacts import rebuild_clean_contacts
from enrich_pipeline_tests.helpers import write_small_csv

NOW = datetime(2026, 9, 10, 12, 0)
START = date(2026, 9, 1)
END = date(2026, 9, 4)

CLEAN_COLUMNS = (
    "identity, identity_type, email, phone, first_name, last_name, full_name, company_name, "
    "company_domain, website, linkedin_url, job_title, city, state, country, sources, row_count"
)


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    return tmp_path / "warehouse.duckdb"


@pytest.fixture
def con(warehouse: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    with connect(warehouse) as connection:
        yield connection


def land(
    con: duckdb.DuckDBPyConnection, received_at: str, *, source: str = "web", **values: str
) -> int:
    """Insert one landed row as ingest would store it (blank values are NULL)."""
    columns = ["source", "received_at", "landed_at", *values]
    params: list[Any] = [source, received_at, NOW, *values.values()]
    placeholders = ", ".join("?" for _ in columns)
    row = con.execute(
        f"INSERT INTO raw_contacts ({', '.join(columns)}) VALUES ({placeholders}) "
        "RETURNING ingest_id",
        params,
    ).fetchone()
    assert row is not None
    return row[0]


def clean_rows(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, Any]]:
    cursor = con.execute(
        f"SELECT partition_date, {CLEAN_COLUMNS}, first_received_at, last_received_at "
        "FROM clean_contacts ORDER BY partition_date, identity"
    )
    names = [d[0] for d in cursor.description]
    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    return {f"{row['partition_date']}/{row['identity']}": row for row in rows}


def only_clean_row(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    rows = clean_rows(con)
    assert len(rows) == 1, rows
    return next(iter(rows.values()))


def quarantine_rows(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    cursor = con.execute(
        "SELECT stage, ingest_id, source, partition_date, field, reason, original "
        "FROM quarantine ORDER BY ingest_id"
    )
    names = [d[0] for d in cursor.description]
    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    for row in rows:
        row["original"] = json.loads(row["original"])
    return rows


def test_email_from_a_landed_csv_is_trimmed_and_lower_cased(
    warehouse: Path, tmp_path: Path
) -> None:
    csv_path = tmp_path / "leads.csv"
    csv_path.write_text(
        "Email,First Name,Create Date\n Ada.Lovelace@Analytical-Engines.IO ,Ada,2026-09-01\n",
        encoding="utf-8",
    )
    ingest_file(warehouse, csv_path, now=NOW)
    with connect(warehouse) as fresh:
        rebuild_clean_contacts(fresh, START, END, NOW)
        row = only_clean_row(fresh)

    assert row["email"] == "ada.lovelace@analytical-engines.io"
    assert row["identity"] == "ada.lovelace@analytical-engines.io"
    assert row["identity_type"] == "email"


def test_same_person_twice_in_a_partition_becomes_one_row_with_latest_values(
    con: duckdb.DuckDBPyConnection,
) -> None:
    # The later-received row lands first: recency is by received_at, not landing order.
    land(
        con,
        "2026-09-01 15:00",
        source="partner",
        email=" ADA@Analytical-Engines.io",
        first_name="Augusta",
        city="Paris",
    )
    land(
        con,
        "2026-09-01 09:00",
        source="web",
        email="ada@analytical-engines.io",
        first_name="Ada",
        last_name="Lovelace",
        phone="(650) 253-0000",
        job_title="Analyst",
        city="London",
    )

    report = rebuild_clean_contacts(con, START, END, NOW)

    row = only_clean_row(con)
    assert row["identity"] == "ada@analytical-engines.io"
    assert row["first_name"] == "Augusta"
    assert row["city"] == "Paris"
    # Fields the latest row left empty keep the earlier row's value.
    assert row["last_name"] == "Lovelace"
    assert row["job_title"] == "Analyst"
    assert row["phone"] == "+16502530000"
    assert row["sources"] == "partner, web"
    assert row["row_count"] == 2
    assert row["first_received_at"] == datetime(2026, 9, 1, 9, 0)
    assert row["last_received_at"] == datetime(2026, 9, 1, 15, 0)
    assert (report.rows_in, report.clean_contacts, report.duplicates_merged) == (2, 1, 1)


def test_invalid_email_is_quarantined_with_its_original_values(
    con: duckdb.DuckDBPyConnection,
) -> None:
    ingest_id = land(
        con,
        "2026-09-03 09:00",
        source="web",
        email="not-an-email",
        first_name="Bad",
        last_name="Row",
        phone="(650) 253-0000",
    )

    report = rebuild_clean_contacts(con, START, END, NOW)

    assert clean_rows(con) == {}
    [row] = quarantine_rows(con)
    assert row["stage"] == "validate"
    assert row["ingest_id"] == ingest_id
    assert row["source"] == "web"
    assert row["partition_date"] == date(2026, 9, 3)
    assert row["field"] == "email"
    assert "not-an-email" in row["reason"]
    assert row["original"]["email"] == "not-an-email"
    assert row["original"]["first_name"] == "Bad"
    assert row["original"]["last_name"] == "Row"
    assert row["original"]["phone"] == "(650) 253-0000"
    assert report.quarantined == 1
    assert report.quarantine_reasons == {"email": 1}


def test_phone_only_row_with_garbage_phone_is_quarantined_on_phone(
    con: duckdb.DuckDBPyConnection,
) -> None:
    land(con, "2026-09-02 10:00", phone="call me maybe", first_name="Jo")

    report = rebuild_clean_contacts(con, START, END, NOW)

    assert clean_rows(con) == {}
    [row] = quarantine_rows(con)
    assert row["field"] == "phone"
    assert "call me maybe" in row["reason"]
    assert row["original"]["phone"] == "call me maybe"
    assert report.quarantine_reasons == {"phone": 1}


def test_name_without_company_is_quarantined_as_no_identifier(
    con: duckdb.DuckDBPyConnection,
) -> None:
    land(con, "2026-09-03 09:30", first_name="Only", last_name="Name", city="Oslo")

    report = rebuild_clean_contacts(con, START, END, NOW)

    assert clean_rows(con) == {}
    [row] = quarantine_rows(con)
    assert row["field"] == "identifier"
    assert row["original"]["first_name"] == "Only"
    assert row["original"]["city"] == "Oslo"
    assert report.quarantine_reasons == {"identifier": 1}


def test_invalid_phone_next_to_a_valid_email_is_dropped_not_quarantined(
    con: duckdb.DuckDBPyConnection,
) -> None:
    land(con, "2026-09-01 10:00", email="grace@navy.mil", phone="12")

    report = rebuild_clean_contacts(con, START, END, NOW)

    row = only_clean_row(con)
    assert row["email"] == "grace@navy.mil"
    assert row["phone"] is None
    assert quarantine_rows(con) == []
    assert report.phones_dropped == 1
    assert report.quarantined == 0


def test_identity_forms_and_their_precedence(con: duckdb.DuckDBPyConnection) -> None:
    day = "2026-09-02 10:00"
    land(con, day, email="Grace@Navy.mil", phone="(650) 253-0000")
    land(
        con,
        day,
        phone="+44 20 7946 0958",
        linkedin_url="https://www.linkedin.com/in/alan-turing",
    )
    land(con, day, linkedin_url="https://www.LinkedIn.com/in/Edsger-Dijkstra/?trk=abc")
    land(con, day, first_name="Katherine", last_name="Johnson", company_name="NASA Langley")
    land(con, day, full_name="Dorothy Vaughan", website="https://www.langley.example.org/")

    rebuild_clean_contacts(con, START, END, NOW)

    rows = {row["identity"]: row for row in clean_rows(con).values()}
    assert {identity: row["identity_type"] for identity, row in rows.items()} == {
        "grace@navy.mil": "email",
        "phone:+442079460958": "phone",
        "social:edsger-dijkstra": "social_url",
        "name:katherine johnson|nasa langley": "name_company",
        "name:dorothy vaughan|langley.example.org": "name_company",
    }
    assert rows["social:edsger-dijkstra"]["linkedin_url"] == (
        "https://www.linkedin.com/in/edsger-dijkstra"
    )
    assert rows["name:katherine johnson|nasa langley"]["full_name"] == "Katherine Johnson"


def test_company_domain_comes_from_website_else_work_email_never_free_mail(
    con: duckdb.DuckDBPyConnection,
) -> None:
    day = "2026-09-01 10:00"
    land(con, day, email="a@other-corp.io", website="https://www.Acme.com/about")
    land(con, day, email="b@initech.com")
    land(con, day, email="c@gmail.com")
    land(con, day, email="d@hooli.com", website="gmail.com")
    land(con, day, email="e@yahoo.co.uk", website="http://globex.example.net")

    rebuild_clean_contacts(con, START, END, NOW)

    domains = {row["identity"]: row["company_domain"] for row in clean_rows(con).values()}
    assert domains == {
        "a@other-corp.io": "acme.com",
        "b@initech.com": "initech.com",
        "c@gmail.com": None,
        "d@hooli.com": "hooli.com",
        "e@yahoo.co.uk": "globex.example.net",
    }


def land_mixed_window(con: duckdb.DuckDBPyConnection) -> int:
    rows = [
        ("2026-09-01 09:00", {"email": "ada@ae.io", "first_name": "Ada"}),
        ("2026-09-01 10:00", {"email": "ADA@ae.io", "city": "London"}),
        ("2026-09-02 09:00", {"phone": "+44 20 7946 0958", "first_name": "Alan"}),
        ("2026-09-02 10:00", {"email": "nope@", "first_name": "Bad"}),
        ("2026-09-03 08:00", {"first_name": "Only", "last_name": "Name"}),
        ("2026-09-03 09:00", {"phone": "garbage"}),
        ("2026-09-03 10:00", {"email": "grace@navy.mil", "phone": "12"}),
    ]
    for received_at, values in rows:
        land(con, received_at, **values)
    return len(rows)


def test_rerunning_a_window_is_idempotent_and_checks_each_row_once(
    con: duckdb.DuckDBPyConnection,
) -> None:
    landed = land_mixed_window(con)
    quarantine_state = (
        "SELECT stage, ingest_id, source, source_file, source_row, partition_date, field, "
        "reason, original FROM quarantine ORDER BY ingest_id"
    )

    first = rebuild_clean_contacts(con, START, END, NOW)
    clean_after_first = con.execute("SELECT * FROM clean_contacts ORDER BY ALL").fetchall()
    quarantine_after_first = con.execute(quarantine_state).fetchall()
    second = rebuild_clean_contacts(con, START, END, datetime(2026, 9, 11))

    assert first.rows_checked == landed
    assert second.rows_checked == 0
    assert con.execute("SELECT count(*) FROM contact_checks").fetchone() == (landed,)
    assert con.execute("SELECT * FROM clean_contacts ORDER BY ALL").fetchall() == (
        clean_after_first
    )
    assert con.execute(quarantine_state).fetchall() == quarantine_after_first
    assert len(quarantine_after_first) == 3
    assert (second.rows_in, second.clean_contacts, second.quarantined) == (
        first.rows_in,
        first.clean_contacts,
        first.quarantined,
    )
    assert second.quarantine_reasons == first.quarantine_reasons
    assert second.phones_dropped == first.phones_dropped == 1


def test_rows_outside_the_window_are_untouched(con: duckdb.DuckDBPyConnection) -> None:
    land_mixed_window(con)
    rebuild_clean_contacts(con, START, END, NOW)
    before = clean_rows(con)
    quarantine_before = quarantine_rows(con)
    day_one = {k: v for k, v in before.items() if k.startswith("2026-09-01")}
    day_three = {k: v for k, v in before.items() if k.startswith("2026-09-03")}
    assert day_one and day_three

    # A late row for 2 September, and one received exactly at the window's end.
    land(con, "2026-09-02 23:59", email="late@ae.io")
    land(con, "2026-09-03 00:00", email="boundary@ae.io")
    report = rebuild_clean_contacts(con, date(2026, 9, 2), date(2026, 9, 3), NOW)

    after = clean_rows(con)
    assert report.rows_checked == 1
    assert report.rows_in == 3
    assert {k: v for k, v in after.items() if k.startswith("2026-09-01")} == day_one
    assert {k: v for k, v in after.items() if k.startswith("2026-09-03")} == day_three
    assert "2026-09-02/late@ae.io" in after
    assert not any(key.endswith("/boundary@ae.io") for key in after)
    assert quarantine_rows(con) == quarantine_before


def test_every_landed_row_is_either_clean_or_quarantined(warehouse: Path, tmp_path: Path) -> None:
    landed = ingest_file(warehouse, write_small_csv(tmp_path), now=NOW)
    with connect(warehouse) as fresh:
        report = rebuild_clean_contacts(fresh, START, END, NOW)
        total_rows = fresh.execute("SELECT sum(row_count) FROM clean_contacts").fetchone()
        quarantined = fresh.execute(
            "SELECT count(*) FROM quarantine WHERE stage = 'validate'"
        ).fetchone()
        identities = {row["identity"] for row in clean_rows(fresh).values()}

    assert report.rows_in == landed.accepted == 8
    assert total_rows is not None and quarantined is not None
    assert total_rows[0] + quarantined[0] == report.rows_in
    assert report.quarantined == quarantined[0] == 2
    assert report.quarantine_reasons == {"email": 1, "identifier": 1}
    # Ada's two rows are in different partitions, so each partition keeps its own row.
    assert report.clean_contacts == 6
    assert identities == {
        "ada.lovelace@analytical-engines.io",
        "grace@gmail.com",
        "phone:+442079460958",
        "name:katherine johnson|nasa langley",
        "social:edsger-dijkstra",
    }


def test_only_days_with_newly_landed_rows_are_rebuilt(con: duckdb.DuckDBPyConnection) -> None:
    land_mixed_window(con)
    first = rebuild_clean_contacts(con, START, END, NOW)
    untouched_day = con.execute(
        "SELECT * FROM clean_contacts WHERE partition_date = '2026-09-01'"
    ).fetchall()

    nothing_new = rebuild_clean_contacts(con, START, END, NOW)
    land(con, "2026-09-02 18:00", email="late@ae.io")
    one_new = rebuild_clean_contacts(con, START, END, NOW)

    assert first.days_rebuilt == 3
    assert nothing_new.days_rebuilt == 0 and nothing_new.rows_checked == 0
    # The report is about the whole window, however little was rebuilt.
    assert (nothing_new.rows_in, nothing_new.clean_contacts, nothing_new.quarantined) == (
        first.rows_in,
        first.clean_contacts,
        first.quarantined,
    )
    assert one_new.days_rebuilt == 1
    assert one_new.clean_contacts == first.clean_contacts + 1
    assert "2026-09-02/late@ae.io" in clean_rows(con)
    assert (
        con.execute("SELECT * FROM clean_contacts WHERE partition_date = '2026-09-01'").fetchall()
        == untouched_day
    )
