"""The file destination: crm_contacts.csv (HubSpot labels, formula cells escaped) and
crm_contacts.parquet, replaced atomically and rewritten only when something changed."""

from __future__ import annotations

import csv
import logging
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from enrich_pipeline.dagster_layer.destinations import DestinationReport, FileDestination
from enrich_pipeline.dagster_layer.resources import WarehouseResource
from enrich_pipeline.destinations.files import (
    CSV_FILE_NAME,
    PARQUET_FILE_NAME,
    write_crm_files,
)
from enrich_pipeline.field_profiles import field_profile
from enrich_pipeline.settings import Settings

MERGED = datetime(2026, 9, 10, 12, 0)
COLUMNS = ("email", "first_name", "phone", "company_name", "employee_count", "job_changed_at")
LOG = logging.getLogger("test")


@pytest.fixture
def warehouse(tmp_path: Path) -> WarehouseResource:
    return WarehouseResource.from_settings(Settings())


def add(warehouse: WarehouseResource, email: str, **values: Any) -> None:
    row = {"partition_date": MERGED.date(), "updated_at": MERGED, **values, "email": email}
    with warehouse.connect() as con:
        con.execute(
            f"INSERT INTO crm_contacts ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
            list(row.values()),
        )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def read_parquet(path: Path) -> list[dict[str, Any]]:
    cursor = duckdb.connect().execute("SELECT * FROM read_parquet(?)", [str(path)])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def write(warehouse: WarehouseResource, export_dir: Path, columns: tuple[str, ...] = COLUMNS):
    with warehouse.connect() as con:
        return write_crm_files(con, export_dir, columns)


def test_csv_has_hubspot_labels_and_parquet_the_stored_values(
    warehouse: WarehouseResource, tmp_path: Path
) -> None:
    add(warehouse, "grace@navy.mil", first_name="Grace")
    add(
        warehouse,
        "ada@ae.io",
        first_name="Ada",
        employee_count=42,
        job_changed_at=datetime(2026, 9, 9, 15, 30),
    )
    # A quote in the directory name must not break the COPY statement.
    export_dir = tmp_path / "O'Brien's exports"

    exported = write(warehouse, export_dir)

    assert exported.rows == 2
    with exported.csv.open(newline="", encoding="utf-8") as fh:
        assert next(csv.reader(fh)) == [
            "Email",
            "First Name",
            "Phone Number",
            "Company Name",
            "Number of Employees",
            "Job Change Date",
        ]
    rows = read_csv(exported.csv)
    assert [r["Email"] for r in rows] == ["ada@ae.io", "grace@navy.mil"]
    assert rows[0]["Number of Employees"] == "42"
    assert rows[0]["Job Change Date"] == "2026-09-09"
    assert rows[1]["Job Change Date"] == ""
    parquet = read_parquet(exported.parquet)
    assert list(parquet[0]) == list(COLUMNS)
    assert parquet[0]["employee_count"] == 42
    assert parquet[0]["job_changed_at"] == datetime(2026, 9, 9, 15, 30)
    assert sorted(os.listdir(export_dir)) == [CSV_FILE_NAME, PARQUET_FILE_NAME]


@pytest.mark.parametrize(
    "value, in_csv",
    [
        ('=HYPERLINK("http://evil.example","x")', '\'=HYPERLINK("http://evil.example","x")'),
        ("+SUM(1+1)*cmd|' /C calc'!A0", "'+SUM(1+1)*cmd|' /C calc'!A0"),
        ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1+1", "'\t=1+1"),
        ("\r=1+1", "'\r=1+1"),
        ("+14155550134", "+14155550134"),
        ("+1 (415) 555-0134", "+1 (415) 555-0134"),
        ("-12.5", "-12.5"),
        ("Acme = Best", "Acme = Best"),
    ],
    ids=["equals", "plus", "minus", "at", "tab", "carriage-return", "e164", "phone", "num", "mid"],
)
def test_a_formula_looking_cell_is_escaped_in_the_csv_and_intact_in_parquet(
    warehouse: WarehouseResource, tmp_path: Path, value: str, in_csv: str
) -> None:
    add(warehouse, "ada@ae.io", company_name=value, phone="+14155550134")

    exported = write(warehouse, tmp_path / "exports")

    (row,) = read_csv(exported.csv)
    assert row["Company Name"] == in_csv
    assert row["Phone Number"] == "+14155550134"
    (stored,) = read_parquet(exported.parquet)
    assert stored["company_name"] == value


def test_a_failed_rename_leaves_the_previous_files_and_no_temporary_file(
    warehouse: WarehouseResource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export_dir = tmp_path / "exports"
    add(warehouse, "grace@navy.mil")
    first = write(warehouse, export_dir)
    previous = first.csv.read_bytes(), first.parquet.read_bytes()
    add(warehouse, "ada@ae.io")

    def fail_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(OSError, match="disk full"):
        write(warehouse, export_dir)

    assert (first.csv.read_bytes(), first.parquet.read_bytes()) == previous
    assert sorted(os.listdir(export_dir)) == [CSV_FILE_NAME, PARQUET_FILE_NAME]


class FailingParquetCopy:
    """A connection whose Parquet COPY dies part-way, after the CSV was written in full."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con

    def execute(self, sql: str, *args: Any) -> duckdb.DuckDBPyConnection:
        if sql.startswith("COPY") and "parquet" in sql:
            raise duckdb.IOException("write failed: no space left on device")
        return self._con.execute(sql, *args)


def test_a_write_that_dies_mid_copy_leaves_the_previous_files_and_no_temporary_file(
    warehouse: WarehouseResource, tmp_path: Path
) -> None:
    export_dir = tmp_path / "exports"
    add(warehouse, "grace@navy.mil")
    first = write(warehouse, export_dir)
    previous = first.csv.read_bytes(), first.parquet.read_bytes()
    add(warehouse, "ada@ae.io")

    with warehouse.connect() as con, pytest.raises(duckdb.IOException, match="no space"):
        write_crm_files(FailingParquetCopy(con), export_dir, COLUMNS)  # type: ignore[arg-type]

    # Neither file moved: the new CSV was complete, but is not published without its Parquet.
    assert (first.csv.read_bytes(), first.parquet.read_bytes()) == previous
    assert sorted(os.listdir(export_dir)) == [CSV_FILE_NAME, PARQUET_FILE_NAME]


def test_a_temporary_file_left_by_a_killed_run_is_cleared(
    warehouse: WarehouseResource, tmp_path: Path
) -> None:
    export_dir = tmp_path / "exports"
    export_dir.mkdir()
    (export_dir / ".crm_contacts.csv.4242.tmp").write_text("Email\nhalf-writ")
    add(warehouse, "ada@ae.io")

    write(warehouse, export_dir)

    assert sorted(os.listdir(export_dir)) == [CSV_FILE_NAME, PARQUET_FILE_NAME]


# --- the destination resource -----------------------------------------------------------------


def deliver(
    warehouse: WarehouseResource, export_dir: Path, columns: tuple[str, ...] = COLUMNS
) -> DestinationReport:
    return FileDestination(export_dir=str(export_dir)).deliver(warehouse, columns, LOG)


def test_files_are_rewritten_only_when_a_record_was_created_changed_or_removed(
    warehouse: WarehouseResource, tmp_path: Path
) -> None:
    export_dir = tmp_path / "exports"
    csv_path = export_dir / CSV_FILE_NAME
    for email in ("ada@ae.io", "grace@navy.mil", "alan@bletchley.org"):
        add(warehouse, email, first_name=email.split("@")[0].title())

    first = deliver(warehouse, export_dir)
    assert (first.created, first.updated, first.unchanged, first.failed) == (3, 0, 0, 0)
    assert first.extra["rewritten"] is True
    os.utime(csv_path, (0, 0))

    again = deliver(warehouse, export_dir)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 3)
    assert again.extra["rewritten"] is False
    assert csv_path.stat().st_mtime == 0

    with warehouse.connect() as con:
        con.execute(
            "UPDATE crm_contacts SET first_name = 'Augusta', updated_at = ? "
            "WHERE email = 'ada@ae.io'",
            [MERGED + timedelta(days=1)],
        )
        con.execute("DELETE FROM crm_contacts WHERE email = 'alan@bletchley.org'")
    changed = deliver(warehouse, export_dir)

    assert (changed.created, changed.updated, changed.unchanged) == (0, 1, 1)
    assert changed.extra["removed"] == 1
    assert changed.extra["rewritten"] is True
    assert {r["Email"]: r["First Name"] for r in read_csv(csv_path)} == {
        "ada@ae.io": "Augusta",
        "grace@navy.mil": "Grace",
    }


def test_a_missing_file_is_written_again_even_with_nothing_new(
    warehouse: WarehouseResource, tmp_path: Path
) -> None:
    export_dir = tmp_path / "exports"
    add(warehouse, "ada@ae.io")
    deliver(warehouse, export_dir)
    (export_dir / PARQUET_FILE_NAME).unlink()

    report = deliver(warehouse, export_dir)

    assert report.extra["rewritten"] is True
    assert report.unchanged == 1
    assert [r["email"] for r in read_parquet(export_dir / PARQUET_FILE_NAME)] == ["ada@ae.io"]


def test_another_field_profile_rewrites_the_files_with_its_columns(
    warehouse: WarehouseResource, tmp_path: Path
) -> None:
    export_dir = tmp_path / "exports"
    add(warehouse, "ada@ae.io", seniority="cxo", phone="+14155550134")
    deliver(warehouse, export_dir, field_profile("sales_prospecting").crm_columns)

    report = deliver(warehouse, export_dir, field_profile("lead_scoring").crm_columns)

    assert report.updated == 1 and report.extra["rewritten"] is True
    (row,) = read_csv(export_dir / CSV_FILE_NAME)
    assert row["Seniority"] == "cxo"
    assert "Phone Number" not in row


def test_metadata_is_prefixed_with_the_destination(
    warehouse: WarehouseResource, tmp_path: Path
) -> None:
    add(warehouse, "ada@ae.io")

    metadata = deliver(warehouse, tmp_path / "exports").metadata("file")

    assert {"file/created", "file/updated", "file/unchanged", "file/failed"} <= set(metadata)
    assert metadata["file/created"] == 1
    assert "file/failures" not in metadata


def test_an_email_is_exported_exactly_as_it_is(
    warehouse: WarehouseResource, tmp_path: Path
) -> None:
    # A sign before a plain name is a real address: an apostrophe would make a HubSpot import
    # create a contact nobody has.
    add(warehouse, "+tag@acme.com")
    add(warehouse, "-list@acme.com")

    exported = write(warehouse, tmp_path / "exports")

    assert [row["Email"] for row in read_csv(exported.csv)] == ["+tag@acme.com", "-list@acme.com"]
