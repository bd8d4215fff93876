"""``crm_contacts.csv`` (HubSpot import labels) and ``crm_contacts.parquet`` written from the
warehouse with DuckDB ``COPY``, each to a temporary file beside its target and renamed into place,
so a reader (or a crash mid-write) never leaves half a file where the previous one was.

CSV cells are escaped against spreadsheet formula injection (OWASP "CSV injection"): a cell that
starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading apostrophe, which
spreadsheets show as text and never evaluate. The exceptions: a plain number or phone number (an
optional sign, a digit, then only digits, spaces, dots, dashes and brackets, regex
``^[+-]?[0-9][0-9 ().-]*$``: ``+14155550134``, ``+1 (415) 555-0134``, ``-12.5``), which can name
no function, cell or command and which the import needs unaltered; and the email, which is the
record's key and is exported exactly as it is (an address that would run as a formula never gets
here: validation quarantines it). Parquet is not opened by spreadsheets: its values are written
as stored.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from enrich_pipeline.warehouse.suppression import crm_record_keys_sql, suppressed_sql

CSV_FILE_NAME = "crm_contacts.csv"
PARQUET_FILE_NAME = "crm_contacts.parquet"

# CSV header per CRM column: HubSpot's import labels (matched to contact properties by label),
# then ours, which need a custom contact property with the same label in HubSpot.
CSV_LABELS: dict[str, str] = {
    "email": "Email",
    "first_name": "First Name",
    "last_name": "Last Name",
    "phone": "Phone Number",
    "mobile_phone": "Mobile Phone Number",
    "job_title": "Job Title",
    "company_name": "Company Name",
    "website": "Website URL",
    "city": "City",
    "state": "State/Region",
    "country": "Country/Region",
    "industry": "Industry",
    "employee_count": "Number of Employees",
    "linkedin_url": "LinkedIn URL",
    "seniority": "Seniority",
    "job_function": "Job Function",
    "job_changed_at": "Job Change Date",
}
# Columns the CSV shows differently from how they are stored (Parquet keeps the stored value).
_CSV_VALUES: dict[str, str] = {"job_changed_at": 'CAST(c."job_changed_at" AS DATE)'}

FORMULA_START = r"^[=+\-@\t\r]"
PLAIN_NUMBER = r"^[+-]?[0-9][0-9 ().-]*$"


@dataclass(frozen=True)
class ExportedFiles:
    csv: Path
    parquet: Path
    rows: int


def export_paths(export_dir: str | Path) -> tuple[Path, Path]:
    directory = Path(export_dir)
    return directory / CSV_FILE_NAME, directory / PARQUET_FILE_NAME


def write_crm_files(
    con: duckdb.DuckDBPyConnection, export_dir: str | Path, columns: Sequence[str]
) -> ExportedFiles:
    """Write ``columns`` of every CRM record, in email order, to both files. Both are written in
    full before either replaces its predecessor; on any error the previous files stay as they
    were and no temporary file is left."""
    if not columns:
        raise ValueError("no columns to export")
    directory = Path(export_dir)
    directory.mkdir(parents=True, exist_ok=True)
    # A temporary file left by a process killed mid-write. Exports run on a write connection,
    # which DuckDB grants one process at a time, so none is being written now.
    for leftover in directory.glob(".crm_contacts.*.tmp"):
        leftover.unlink(missing_ok=True)
    csv_path, parquet_path = export_paths(directory)
    # Records merged before their person was suppressed stay in the warehouse, not the files.
    exported = f"crm_contacts c WHERE NOT {suppressed_sql(con, crm_record_keys_sql('c'))}"
    writes = (
        (csv_path, _csv_select(columns, exported), "FORMAT csv, HEADER true"),
        (parquet_path, _parquet_select(columns, exported), "FORMAT parquet"),
    )
    partials = [directory / f".{target.name}.{os.getpid()}.tmp" for target, _, _ in writes]
    try:
        for partial, (_, select, options) in zip(partials, writes, strict=True):
            con.execute(f"COPY ({select}) TO '{_sql_string(partial)}' ({options})")
        for partial, (target, _, _) in zip(partials, writes, strict=True):
            os.replace(partial, target)
    finally:
        for partial in partials:
            partial.unlink(missing_ok=True)
    rows = con.execute(f"SELECT count(*) FROM {exported}").fetchone()[0]  # type: ignore[index]
    return ExportedFiles(csv=csv_path, parquet=parquet_path, rows=rows)


def _csv_select(columns: Sequence[str], exported: str) -> str:
    cells = ", ".join(
        f"{_cell(column)} AS {_ident(CSV_LABELS.get(column, column))}" for column in columns
    )
    return f"SELECT {cells} FROM {exported} ORDER BY c.email"


def _parquet_select(columns: Sequence[str], exported: str) -> str:
    return (
        f"SELECT {', '.join(f'c.{_ident(column)}' for column in columns)} "
        f"FROM {exported} ORDER BY c.email"
    )


def _cell(column: str) -> str:
    value = _CSV_VALUES.get(column, f"c.{_ident(column)}")
    return value if column == "email" else _escaped(value)


def _escaped(expression: str) -> str:
    text = f"CAST({expression} AS VARCHAR)"
    return (
        f"CASE WHEN regexp_matches({text}, '{FORMULA_START}') "
        f"AND NOT regexp_matches({text}, '{PLAIN_NUMBER}') "
        f"THEN '''' || {text} ELSE {text} END"
    )


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_string(path: Path) -> str:
    return str(path).replace("'", "''")
