from __future__ import annotations

import csv
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path

import duckdb
import pytest

from enrich_pipeline.ingest import ingest_file

DATA = Path(__file__).resolve().parents[1] / "data"
SAMPLE = DATA / "sample_contacts.csv"


@pytest.mark.slow
def test_committed_sample_is_exactly_what_the_script_generates(tmp_path: Path) -> None:
    regenerated = tmp_path / "sample_contacts.csv"
    run = subprocess.run(
        [sys.executable, str(DATA / "make_sample_contacts.py"), "--out", str(regenerated)],
        capture_output=True,
        text=True,
        check=True,
    )

    assert regenerated.read_bytes() == SAMPLE.read_bytes()
    assert "2,400 synthetic contacts" in run.stdout


def test_sample_is_a_hubspot_export_of_thousands_of_rows() -> None:
    with SAMPLE.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))

    assert rows[0][:3] == ["Record ID", "Email", "First Name"]
    assert rows[0][-1] == "Create Date"
    assert len(rows) - 1 >= 2000


def test_sample_lands_across_the_ninety_days_with_only_the_planted_ingest_failures(
    tmp_path: Path,
) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    report = ingest_file(warehouse, SAMPLE, now=datetime(2026, 10, 30))

    assert report.quarantine_reasons == {"no identifying value": 1, "unparseable date": 2}
    with duckdb.connect(str(warehouse), read_only=True) as con:
        days, first, last = con.execute(
            "SELECT count(DISTINCT received_at::DATE), min(received_at)::DATE, "
            "max(received_at)::DATE FROM raw_contacts"
        ).fetchone() or (0, None, None)
    assert days >= 60
    assert (first, last) == (date(2026, 8, 1), date(2026, 10, 29))
