"""Per-destination sync state: what is pending, and what recording an outcome changes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from enrich_pipeline.warehouse.connection import connect
from enrich_pipeline.warehouse.crm_sync import (
    PendingCounts,
    SyncOutcome,
    SyncSpec,
    file_spec,
    hubspot_spec,
    prepare_pending,
    read_pending,
    record_full_export,
    record_outcomes,
)

MERGED = datetime(2026, 9, 10, 12, 0)
SENT = MERGED + timedelta(hours=1)
COLUMNS = ("email", "first_name", "job_title", "employee_count", "seniority")


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    with connect(tmp_path / "warehouse.duckdb") as connection:
        yield connection


def add(con: duckdb.DuckDBPyConnection, email: str, **values: Any) -> None:
    row = {"partition_date": MERGED.date(), "updated_at": MERGED, **values, "email": email}
    con.execute(
        f"INSERT INTO crm_contacts ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
        list(row.values()),
    )


def remerge(con: duckdb.DuckDBPyConnection, email: str, at: datetime, **values: Any) -> None:
    """What the merge does to a rebuilt record: new values (maybe none) and a new updated_at."""
    assignments = ", ".join(f"{name} = ?" for name in [*values, "updated_at"])
    con.execute(
        f"UPDATE crm_contacts SET {assignments} WHERE email = ?", [*values.values(), at, email]
    )


def send_all(
    con: duckdb.DuckDBPyConnection, spec: SyncSpec, failing: frozenset[str] = frozenset()
) -> list[str]:
    """Read every pending record and record it sent (or failed when in ``failing``)."""
    prepare_pending(con, spec)
    records = read_pending(con, spec, limit=1000)
    record_outcomes(
        con,
        spec,
        [
            SyncOutcome(
                r.email,
                r.fingerprint,
                r.record_updated_at,
                sent=r.email not in failing,
                remote_id=None if r.email in failing else f"id-{r.email}",
                error="rejected" if r.email in failing else None,
            )
            for r in records
        ],
        SENT,
    )
    return [r.email for r in records]


def state(con: duckdb.DuckDBPyConnection, email: str) -> dict[str, Any]:
    cursor = con.execute("SELECT * FROM crm_sync_state WHERE email = ?", [email])
    names = [d[0] for d in cursor.description]
    (row,) = cursor.fetchall()
    return dict(zip(names, row, strict=True))


def test_hubspot_receives_default_properties_only_email_always_first() -> None:
    spec = hubspot_spec(["first_name", "seniority", "employee_count", "job_changed_at"])

    assert spec.names == "email,firstname,numemployees"


def test_new_records_are_pending_then_nothing_once_sent(con: duckdb.DuckDBPyConnection) -> None:
    add(con, "ada@ae.io", first_name="Ada", employee_count=42, seniority="cxo")
    add(con, "grace@navy.mil", first_name="Grace")
    spec = hubspot_spec(COLUMNS)

    assert prepare_pending(con, spec) == PendingCounts(2, new=2, changed=0, retry=0, removed=0)
    records = read_pending(con, spec, limit=10)
    assert [r.email for r in records] == ["ada@ae.io", "grace@navy.mil"]
    assert records[0].values == {
        "email": "ada@ae.io",
        "firstname": "Ada",
        "jobtitle": None,
        "numemployees": "25-50",
    }

    send_all(con, spec)

    counts = prepare_pending(con, spec)
    assert (counts.pending, counts.unchanged) == (0, 2)
    assert read_pending(con, spec, limit=10) == []
    assert state(con, "ada@ae.io")["sent_at"] == SENT


def test_a_record_merged_again_with_the_same_values_is_not_pending(
    con: duckdb.DuckDBPyConnection,
) -> None:
    add(con, "ada@ae.io", first_name="Ada")
    spec = hubspot_spec(COLUMNS)
    send_all(con, spec)

    remerge(con, "ada@ae.io", MERGED + timedelta(days=1))
    # A column HubSpot does not receive changed: nothing to send either.
    remerge(con, "ada@ae.io", MERGED + timedelta(days=2), seniority="cxo")

    assert prepare_pending(con, spec).pending == 0
    assert read_pending(con, spec, limit=10) == []
    assert state(con, "ada@ae.io")["record_updated_at"] == MERGED + timedelta(days=2)


def test_a_changed_record_is_pending_with_its_new_values(con: duckdb.DuckDBPyConnection) -> None:
    add(con, "ada@ae.io", job_title="Analyst")
    add(con, "grace@navy.mil")
    spec = hubspot_spec(COLUMNS)
    send_all(con, spec)

    remerge(con, "ada@ae.io", MERGED + timedelta(days=1), job_title="CTO")

    assert prepare_pending(con, spec) == PendingCounts(2, new=0, changed=1, retry=0, removed=0)
    (record,) = read_pending(con, spec, limit=10)
    assert (record.email, record.values["jobtitle"]) == ("ada@ae.io", "CTO")


def test_a_failed_record_stays_pending_and_keeps_its_last_successful_send(
    con: duckdb.DuckDBPyConnection,
) -> None:
    add(con, "ada@ae.io", job_title="Analyst")
    spec = hubspot_spec(COLUMNS)
    send_all(con, spec)
    remerge(con, "ada@ae.io", MERGED + timedelta(days=1), job_title="CTO")

    send_all(con, spec, failing=frozenset({"ada@ae.io"}))

    assert prepare_pending(con, spec) == PendingCounts(1, new=0, changed=0, retry=1, removed=0)
    ada = state(con, "ada@ae.io")
    assert (ada["status"], ada["error"], ada["remote_id"]) == ("failed", "rejected", "id-ada@ae.io")
    assert ada["sent_at"] == SENT
    assert send_all(con, spec) == ["ada@ae.io"]
    assert prepare_pending(con, spec).pending == 0


def test_changing_the_properties_sent_makes_every_record_pending(
    con: duckdb.DuckDBPyConnection,
) -> None:
    add(con, "ada@ae.io", job_title="Analyst")
    add(con, "grace@navy.mil")
    send_all(con, hubspot_spec(["email", "first_name"]))

    wider = hubspot_spec(["email", "first_name", "job_title"])

    assert prepare_pending(con, wider).changed == 2
    assert {r.email: r.values["jobtitle"] for r in read_pending(con, wider, limit=10)} == {
        "ada@ae.io": "Analyst",
        "grace@navy.mil": None,
    }


def test_pending_records_are_read_in_pages_by_email(con: duckdb.DuckDBPyConnection) -> None:
    for i in range(5):
        add(con, f"p{i}@acme.com")
    spec = hubspot_spec(COLUMNS)
    prepare_pending(con, spec)

    pages, after = [], ""
    while page := read_pending(con, spec, after=after, limit=2):
        pages.append([r.email for r in page])
        after = page[-1].email

    assert pages == [
        ["p0@acme.com", "p1@acme.com"],
        ["p2@acme.com", "p3@acme.com"],
        ["p4@acme.com"],
    ]


def test_destinations_keep_separate_state(con: duckdb.DuckDBPyConnection) -> None:
    add(con, "ada@ae.io")
    send_all(con, hubspot_spec(COLUMNS))

    assert prepare_pending(con, file_spec(COLUMNS)).new == 1


def test_a_full_export_marks_everything_sent_and_forgets_removed_records(
    con: duckdb.DuckDBPyConnection,
) -> None:
    add(con, "ada@ae.io")
    add(con, "grace@navy.mil")
    spec = file_spec(COLUMNS)
    record_full_export(con, spec, SENT)
    con.execute("DELETE FROM crm_contacts WHERE email = 'grace@navy.mil'")
    add(con, "alan@bletchley.org")

    assert prepare_pending(con, spec) == PendingCounts(2, new=1, changed=0, retry=0, removed=1)

    record_full_export(con, spec, SENT)

    assert prepare_pending(con, spec) == PendingCounts(2, new=0, changed=0, retry=0, removed=0)
    assert con.execute("SELECT email FROM crm_sync_state ORDER BY email").fetchall() == [
        ("ada@ae.io",),
        ("alan@bletchley.org",),
    ]
