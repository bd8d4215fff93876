"""Move journal entries into ``raw_contacts``, in sequence order and exactly once.

Each batch lands through the same mapping, trimming, date parsing and quarantine SQL as CSV
ingest, and what records the batch as landed (the file journal's watermark in
``intake_progress``, the Postgres journal's marks: ``Journal.mark_landed``) is written in the
same warehouse transaction as the rows: a crash before the commit leaves the batch to the next
call, a crash after it has already recorded the batch.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import duckdb

from enrich_pipeline.column_mapping import ColumnMapping, map_columns
from enrich_pipeline.ingest import (
    CONTACT_COLUMNS,
    CONTROLS_TO_SPACES,
    PADDING,
    ROW_IDENTIFYING,
    StagedRows,
    check_staged,
    land_checked,
    prepare_session,
    quote_ident,
    utc_naive,
)
from enrich_pipeline.intake.journal import Journal, JournalEntry
from enrich_pipeline.warehouse.connection import connect, transaction
from enrich_pipeline.warehouse.suppression import SUPPRESSED

log = logging.getLogger(__name__)

# Staged next to the leads' own columns. Their header forms ("intakeseq", ...) are no alias,
# so a lead key can never be mapped onto them.
_INTAKE_ROWS = StagedRows(
    source_row="s.__intake_seq",
    fallback_source="s.__intake_source",
    fallback_received="s.__intake_received",
    original="CAST(s.__intake_lead AS JSON)",
)

_NO_IDENTITY = (
    "no identifying value: give one of "
    + ", ".join(ROW_IDENTIFYING)
    + " (or a CSV header spelling of one, such as 'Email' or 'Phone Number')"
)

# lead_problems is called from the HTTP app's threads; a DuckDB connection is not safe to share.
_date_checker = threading.local()


@dataclass(frozen=True)
class LandingReport:
    entries: int  # journal entries moved in this call
    landed: int  # rows appended to raw_contacts
    quarantined: int  # rows that went to quarantine instead (with reason)
    last_seq: int  # the journal is landed through this position after this call


def lead_problem(lead: object) -> str | None:
    """Why CSV ingest would quarantine this lead (a short message naming the field), or None
    when it can land."""
    return lead_problems([lead])[0]


def lead_problems(leads: Sequence[object]) -> list[str | None]:
    """``lead_problem`` of each lead, with the dates of all of them read in one DuckDB query
    (a query costs as much for one date as for a thousand)."""
    problems: list[str | None] = []
    dated: list[tuple[int, str, str]] = []  # lead index, date key, date text
    for index, lead in enumerate(leads):
        problem, date = _shape_problem(lead)
        problems.append(problem)
        if date is not None:
            dated.append((index, *date))
    if dated:
        for (index, key, _), readable in zip(
            dated, _are_dates([text for _, _, text in dated]), strict=True
        ):
            if not readable:
                problems[index] = f"{key!r} is not a date we can read"
    return problems


def _shape_problem(lead: object) -> tuple[str | None, tuple[str, str] | None]:
    """A problem found without DuckDB, else the date field (key, text) still to be read."""
    if not isinstance(lead, Mapping):
        return "a lead must be a JSON object", None
    for key, value in lead.items():
        if value is None or type(value) is str:  # nearly every value: skip the checks below
            continue
        if isinstance(value, Mapping | list):
            return f"{key!r} must be a string, number or null, not an object or list", None
        if isinstance(value, float) and not math.isfinite(value):
            return f"{key!r} must be a finite number", None
    identity, dates = _lead_fields(tuple(lead))
    if not any(_filled(_text(lead[key])) for key in identity):
        return _NO_IDENTITY, None
    # Like ingest, only the first filled date field in priority order decides received_at.
    for key in dates:
        if text := _filled(_text(lead[key])):
            return None, (key, text)
    return None, None


@lru_cache(maxsize=1024)
def _lead_fields(keys: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """For a lead's keys: those that identify it, and its date keys in priority order. Leads
    of one source share their keys, so this is worked out once per shape, not per lead."""
    mapping = map_columns(keys, require_identity=False)
    identity = tuple(h for col in ROW_IDENTIFYING for h in mapping.columns.get(col, ()))
    return identity, mapping.columns.get("received_at", ())


def landed_values(lead: Mapping[str, Any]) -> dict[str, str | None]:
    """The values a lead lands with in ``raw_contacts``, by column: the first filled of its
    keys mapped to each, padding trimmed, the email as given."""
    mapping = map_columns(list(lead), require_identity=False)
    values: dict[str, str | None] = {}
    for column in CONTACT_COLUMNS:
        filled = (
            _text(lead[key]) if column == "email" else value
            for key in mapping.columns.get(column, ())
            if (value := _filled(_text(lead[key])))
        )
        values[column] = next(filled, None)
    return values


def land_from_journal(
    journal: Journal,
    warehouse_path: str | Path,
    *,
    limit: int = 5000,
    now: datetime | None = None,
    lock_timeout_s: float = 30.0,
) -> LandingReport:
    """Land up to ``limit`` entries not landed yet and record them as landed, in one
    transaction. Raises ``WarehouseBusy`` when another process holds the warehouse."""
    landed_at = utc_naive(now or datetime.now(UTC))
    source_file = f"intake:{journal.journal_id}"
    with connect(warehouse_path, lock_timeout_s=lock_timeout_s) as con:
        prepare_session(con)
        # What is landed is read in the transaction that records more: a second mover working
        # at the same time fails to record the batch instead of landing it again.
        with transaction(con):
            entries = journal.unlanded(con, limit)
            if not entries:
                return LandingReport(
                    entries=0, landed=0, quarantined=0, last_seq=journal.landed_through(con)
                )
            check_staged(con, _stage(con, entries), _INTAKE_ROWS)
            report = land_checked(con, source_file, landed_at, _INTAKE_ROWS)
            suppressed = con.execute(
                "SELECT source_row FROM __checked WHERE reason = ?", [SUPPRESSED]
            ).fetchall()
            journal.mark_landed(con, entries, landed_at)
            landed_through = journal.landed_through(con)
    # A suppressed person's lead keeps no values here either, once its refusal is committed.
    journal.erase_entries([seq for (seq,) in suppressed])
    log.info(
        "landed journal entries %d..%d: %d to raw_contacts, %d quarantined",
        entries[0].seq,
        entries[-1].seq,
        report.accepted,
        report.quarantined,
    )
    return LandingReport(
        entries=len(entries),
        landed=report.accepted,
        quarantined=report.quarantined,
        last_seq=landed_through,
    )


def _stage(con: duckdb.DuckDBPyConnection, entries: Sequence[JournalEntry]) -> ColumnMapping:
    """Create ``__src``: per entry its seq, fallbacks, lead JSON and one text column per lead
    key that feeds a warehouse column. Returns the keys' mapping."""
    # DuckDB column names ignore case, so keys that differ only in case share a column.
    spelling: dict[str, str] = {}
    for entry in entries:
        for key in entry.lead:
            spelling.setdefault(key.casefold(), key)
    mapping = map_columns(list(spelling.values()), require_identity=False)
    columns: dict[str, list[str | None]] = {
        header: [] for headers in mapping.columns.values() for header in headers
    }
    for entry in entries:
        values: dict[str, str | None] = {}
        for key, value in entry.lead.items():
            header = spelling[key.casefold()]
            if header in columns and not _filled(values.get(header)):
                values[header] = _text(value)
        for header, column in columns.items():
            column.append(values.get(header))
    params: dict[str, object] = {
        "seq": [entry.seq for entry in entries],
        "source": [entry.source for entry in entries],
        "received": [entry.received_at for entry in entries],
        "lead": [json.dumps(entry.lead, ensure_ascii=False) for entry in entries],
    }
    selects = [
        "unnest(CAST($seq AS BIGINT[])) AS __intake_seq",
        "unnest(CAST($source AS VARCHAR[])) AS __intake_source",
        "unnest(CAST($received AS TIMESTAMP[])) AS __intake_received",
        "unnest(CAST($lead AS VARCHAR[])) AS __intake_lead",
    ]
    for i, (header, column) in enumerate(columns.items()):
        params[f"c{i}"] = column
        selects.append(f"unnest(CAST($c{i} AS VARCHAR[])) AS {quote_ident(header)}")
    con.execute(f"CREATE TEMP TABLE __src AS SELECT {', '.join(selects)}", params)
    return mapping


def _text(value: object) -> str | None:
    """A lead value as the text a CSV cell would hold: numbers and booleans in JSON form."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _filled(text: str | None) -> str | None:
    """The value ingest would land (control characters out, padding trimmed), or None when
    that leaves nothing."""
    return (text or "").translate(CONTROLS_TO_SPACES).strip(PADDING) or None


def _are_dates(texts: Sequence[str]) -> list[bool]:
    """Parsed by ingest's own date macro, so the app refuses exactly what would quarantine."""
    con: duckdb.DuckDBPyConnection | None = getattr(_date_checker, "con", None)
    if con is None:
        con = _date_checker.con = duckdb.connect()
        prepare_session(con)
    row = con.execute(
        "SELECT list_transform(CAST(? AS VARCHAR[]), lambda v: __parse_received(v) IS NOT NULL)",
        [list(texts)],
    ).fetchone()
    assert row is not None
    return list(row[0])
