"""Land a contacts CSV in ``raw_contacts``, set-based, in one transaction.

The whole file is parsed, mapped, trimmed and date-parsed in DuckDB SQL (a million rows land
in seconds). Rows that cannot land go to ``quarantine`` with the reason and the row exactly
as the file gave it, so ``rows_read == accepted + quarantined`` always holds. Email and phone
validity is not judged here: the pipeline checks those once per landed row.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from enrich_pipeline.column_mapping import (
    IDENTIFYING_COLUMNS,
    ColumnMapping,
    ColumnMappingError,
    map_columns,
)
from enrich_pipeline.warehouse import postgres
from enrich_pipeline.warehouse.connection import connect, transaction
from enrich_pipeline.warehouse.suppression import SUPPRESSED, landed_keys_sql, suppressed_sql

log = logging.getLogger(__name__)

REASON_NO_IDENTITY = "no identifying value"
REASON_BAD_DATE = "unparseable date"

# RFC 4180 pinned down rather than sniffed: a sniffed dialect can silently skip leading lines
# or treat '#...' rows as comments, and we never drop a row without saying so.
# Delimiters a header line is looked at for, in the order a tie is decided.
_DELIMITERS = (",", ";", "\t", "|")
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


@dataclass(frozen=True)
class CsvDialect:
    delimiter: str = ","
    encoding: str = "utf-8"

    @property
    def read_sql(self) -> str:
        """``read_csv`` of the file given as the one parameter, every value as text."""
        delimiter = "\\t" if self.delimiter == "\t" else self.delimiter
        return (
            f"read_csv(?, all_varchar = true, header = true, delim = '{delimiter}', "
            f"quote = '\"', escape = '\"', comment = '', skip = 0, "
            f"encoding = '{self.encoding}')"
        )


def _python_encoding(encoding: str) -> str:
    """The codec Python reads the file with: UTF-8 past a byte-order mark, as DuckDB does."""
    return {"utf-8": "utf-8-sig"}.get(encoding, encoding)


def _dialect(head: bytes, encoding: str | None) -> CsvDialect:
    """The file's delimiter (its header line's: a spreadsheet set to a European locale saves
    ';') and encoding (given, else UTF-16 when the file starts with its byte-order mark)."""
    if encoding is None:
        encoding = "utf-16" if head.startswith(_UTF16_BOMS) else "utf-8"
    first_line = head.decode(_python_encoding(encoding), errors="replace").splitlines()[0:1]
    header = first_line[0] if first_line else ""
    delimiter = next((d for d in _DELIMITERS if d in header), ",")
    return CsvDialect(delimiter=delimiter, encoding=encoding)


# Landed columns other than the ones ingest fills itself; all nullable strings.
CONTACT_COLUMNS: tuple[str, ...] = (
    "email",
    "first_name",
    "last_name",
    "full_name",
    "phone",
    "company_name",
    "website",
    "linkedin_url",
    "job_title",
    "city",
    "state",
    "country",
)
# A row with none of these identifies no one, so it cannot land. A company counts here, being
# half of a name + company identity; whether a row identifies someone is judged at validation.
ROW_IDENTIFYING = (*IDENTIFYING_COLUMNS, "company_name")

# Spreadsheet exports pad with tabs and non-breaking spaces as well as plain spaces. Trimming
# a character set is several times slower than looking at both ends first, and most values
# need no trimming at all.
PADDING = " \t\n\r\xa0"
_PADDING_SQL = " || ".join(f"chr({ord(character)})" for character in PADDING)
# Control characters never belong in a contact field (a NUL last name would beat the
# provider's): tabs and line breaks become spaces, the rest go, before trimming.
_SPACED_CONTROLS = "\t\n\r"
_DROPPED_CONTROLS = "".join(
    chr(code) for code in (*range(32), 127) if chr(code) not in _SPACED_CONTROLS
)
CONTROLS_TO_SPACES = str.maketrans(_SPACED_CONTROLS, " " * len(_SPACED_CONTROLS), _DROPPED_CONTROLS)
_CONTROLS_SQL = " || ".join(f"chr({ord(c)})" for c in _SPACED_CONTROLS + _DROPPED_CONTROLS)
_CLEAN_MACRO = f"""
CREATE OR REPLACE TEMP MACRO __trim_padding(v) AS nullif(
    CASE WHEN contains({_PADDING_SQL}, v[1]) OR contains({_PADDING_SQL}, v[-1])
        THEN trim(v, {_PADDING_SQL}) ELSE v END,
    '');
CREATE OR REPLACE TEMP MACRO __clean(v) AS __trim_padding(
    -- translate() is 20 times slower than the test, and nearly no value needs it.
    CASE WHEN regexp_matches(v, '[\\x00-\\x1f\\x7f]')
        THEN translate(v, {_CONTROLS_SQL}, '{" " * len(_SPACED_CONTROLS)}') ELSE v END)
"""
# Each branch is gated by a shape check: a bare cast would accept words like 'infinity', and
# a TIMESTAMP (not TIMESTAMPTZ) cast silently drops a '+02:00' offset.
_PARSE_MACRO = r"""
CREATE OR REPLACE TEMP MACRO __parse_received(v) AS CASE
    WHEN regexp_full_match(v, '\d{4}-\d{1,2}-\d{1,2}([Tt ].+)?')
        THEN timezone('UTC', try_cast(v AS TIMESTAMPTZ))
    WHEN regexp_full_match(v, '\d{1,2}/\d{1,2}/\d{4}( \d{1,2}:\d{2}(:\d{2})?)?')
        THEN try_strptime(v, ['%m/%d/%Y %H:%M:%S', '%m/%d/%Y %H:%M', '%m/%d/%Y'])
    WHEN regexp_full_match(v, '\d{9,11}(\.\d+)?')
        THEN make_timestamp(CAST(round(CAST(v AS DOUBLE) * 1000000) AS BIGINT))
    WHEN regexp_full_match(v, '\d{12,14}')
        THEN make_timestamp(CAST(v AS BIGINT) * 1000)
END
"""


@dataclass(frozen=True)
class StagedRows:
    """What each row of the staged table ``__src AS s`` carries besides its source-header
    columns, as SQL over ``s``; lets a CSV file and the intake journal share one landing."""

    source_row: str  # unique per row; stored as source_row, and lands rows in its order
    fallback_source: str  # source when the row's own source field is blank
    fallback_received: str  # received_at when the row has no date
    original: str  # JSON of the row as given, kept with a quarantined row


# CSV rows are numbered by file position; the fallbacks are the parameters of ``_stage``.
_CSV_ROWS = StagedRows(
    source_row="s.rowid + 1",
    fallback_source="$fallback_source",
    fallback_received="$now",
    original="to_json(s)",
)


class IngestError(RuntimeError):
    """The file could not be ingested at all; nothing was written."""


@dataclass(frozen=True)
class IngestReport:
    rows_read: int
    accepted: int
    quarantined: int
    first_ingest_id: int | None  # None when no row landed
    last_ingest_id: int | None
    quarantine_reasons: dict[str, int]  # reason -> rows
    source_file: str  # the file's name, as stored in raw_contacts/quarantine.source_file
    # True when skip_if_landed found an earlier landing of this file name; the counts and ids
    # then describe that earlier landing and nothing new was written.
    already_landed: bool = False
    # Headers that feed no field: their values are in no table.
    ignored_columns: tuple[str, ...] = ()


def ingest_file(
    warehouse_path: str | Path,
    csv_path: str | Path,
    *,
    source: str | None = None,
    now: datetime | None = None,
    skip_if_landed: bool = False,
    encoding: str | None = None,
    memory_limit: str | None = None,
) -> IngestReport:
    """Append every row of ``csv_path`` to the warehouse: to ``raw_contacts`` if it can land,
    else to ``quarantine``. ``encoding``: the file's (default UTF-8, or UTF-16 with its
    byte-order mark); the delimiter is the header line's (``,``, ``;``, tab or ``|``).
    ``memory_limit`` caps DuckDB's memory (``ENRICH_DUCKDB_MEMORY_LIMIT``); past it, it spills.

    A row's source is its own source column when the file has one and the cell is filled,
    else ``source``, else the file's stem. ``received_at`` comes from the file's
    received/created column when present, else ``now`` (default: the current UTC time).
    With ``skip_if_landed``, a file whose name already appears in the warehouse is not landed
    again (re-running a demo must not double its data).
    Raises ``IngestError`` (and writes nothing) when the file cannot be read as a contacts CSV.
    """
    csv_path = Path(csv_path)
    landed_at = utc_naive(now or datetime.now(UTC))
    mapping, dialect = _map_headers(csv_path, encoding)
    fallback_source = source.strip() if source and source.strip() else csv_path.stem

    with connect(warehouse_path, memory_limit=memory_limit) as con:
        prepare_session(con)
        # Staged before the transaction: a temp table's rowid is only its row position once
        # committed, and staging writes nothing to the warehouse's own tables.
        _stage(con, csv_path, dialect, mapping, fallback_source, landed_at)
        # One transaction from the "landed before?" check to the last insert, so a file is
        # either wholly landed or not at all.
        with transaction(con):
            earlier = _earlier_landing(con, csv_path.name) if skip_if_landed else None
            if earlier is not None:
                log.info("%s: already landed; not landing it again", csv_path)
                return earlier
            report = land_checked(con, csv_path.name, landed_at, _CSV_ROWS)

    report = replace(report, ignored_columns=mapping.unrecognised)
    log.info(
        "ingested %s: %d rows read, %d landed, %d quarantined",
        report.source_file,
        report.rows_read,
        report.accepted,
        report.quarantined,
    )
    return report


def prepare_session(con: duckdb.DuckDBPyConnection) -> None:
    """Define the cleaning and date macros the checking SQL uses."""
    # TIMESTAMPTZ casts of zone-less text use the session zone; pin it so a naive
    # '2026-08-03 14:22' means UTC whatever the machine's zone.
    con.execute("SET SESSION TimeZone = 'UTC'")
    con.execute(_CLEAN_MACRO)
    con.execute(_PARSE_MACRO)


def _map_headers(csv_path: Path, encoding: str | None) -> tuple[ColumnMapping, CsvDialect]:
    """Check the file is a readable CSV with usable headers before touching the warehouse."""
    if not csv_path.exists():
        raise IngestError(f"{csv_path}: no such file")
    if not csv_path.is_file():
        raise IngestError(f"{csv_path}: not a file")
    with csv_path.open("rb") as fh:
        head = fh.read(4096)
    if not head.strip(b" \t\r\n\xef\xbb\xbf") and len(head) < 4096:
        raise IngestError(f"{csv_path}: the file is empty")
    try:
        dialect = _dialect(head, encoding)
    except LookupError as exc:
        raise IngestError(f"{csv_path}: unknown encoding {encoding!r}") from exc
    try:
        with duckdb.connect() as probe:
            headers = [
                row[0]
                for row in probe.execute(
                    f"DESCRIBE SELECT * FROM {dialect.read_sql}", [str(csv_path)]
                ).fetchall()
            ]
    except duckdb.Error as exc:
        raise _unreadable(csv_path, dialect, exc) from exc
    try:
        mapping = map_columns(headers)
    except ColumnMappingError as exc:
        raise IngestError(f"{csv_path}: {exc}") from exc
    if duplicated := _duplicated_fields(headers, mapping):
        raise IngestError(
            f"{csv_path}: {duplicated}: a row can land one value per field, and the other "
            "column's values would be lost; keep one column, or land the other file "
            "separately"
        )
    if mapping.unrecognised:
        log.warning("%s: ignoring columns %s", csv_path, ", ".join(mapping.unrecognised))
    return mapping, dialect


# How DuckDB names the second and later columns that share a header: "Email", "Email_1".
_RENAMED_DUPLICATE = re.compile(r"^(?P<header>.+)_(?P<n>[0-9]+)$")


def _duplicated_fields(headers: Sequence[str], mapping: ColumnMapping) -> str | None:
    """The first header that appears more than once and feeds a field, described; None when
    there is none. Two different spellings of one field (``Email`` and ``Work Email``) are
    not duplicates: a row takes the first filled."""
    present = set(headers)
    mapped = {header for sources in mapping.columns.values() for header in sources}
    for header in headers:
        found = _RENAMED_DUPLICATE.match(header)
        if found and found["header"] in present and found["header"] in mapped:
            return f"column {found['header']!r} appears more than once (read as {header!r})"
    return None


def _earlier_landing(con: duckdb.DuckDBPyConnection, source_file: str) -> IngestReport | None:
    accepted, first_id, last_id = con.execute(
        "SELECT count(*), min(ingest_id), max(ingest_id) FROM raw_contacts WHERE source_file = ?",
        [source_file],
    ).fetchone() or (0, None, None)
    reasons = dict(
        con.execute(
            "SELECT reason, count(*) FROM quarantine WHERE stage = 'ingest' AND source_file = ? "
            "GROUP BY reason ORDER BY reason",
            [source_file],
        ).fetchall()
    )
    if not accepted and not reasons:
        return None
    return _report(source_file, accepted, first_id, last_id, reasons, already_landed=True)


def _stage(
    con: duckdb.DuckDBPyConnection,
    csv_path: Path,
    dialect: CsvDialect,
    mapping: ColumnMapping,
    fallback_source: str,
    landed_at: datetime,
) -> None:
    """Read the file into ``__src`` and derive ``__checked`` from it (temp tables)."""
    try:
        # Materialised so rowid is the row's position in the file (insertion order is kept).
        con.execute(f"CREATE TEMP TABLE __src AS SELECT * FROM {dialect.read_sql}", [str(csv_path)])
    except duckdb.Error as exc:
        raise _unreadable(csv_path, dialect, exc) from exc
    check_staged(con, mapping, _CSV_ROWS, {"fallback_source": fallback_source, "now": landed_at})


def check_staged(
    con: duckdb.DuckDBPyConnection,
    mapping: ColumnMapping,
    rows: StagedRows,
    params: dict[str, object] | None = None,
) -> None:
    """Build the temp table ``__checked`` from ``__src``: one row per source row with its
    landed values and, for rows that cannot land, the quarantine reason. ``params`` are the
    named parameters ``rows`` refers to. Needs ``prepare_session``."""
    con.execute(_checked_sql(mapping, rows, suppressed_sql(con, landed_keys_sql())), params)


def _checked_sql(mapping: ColumnMapping, rows: StagedRows, suppressed: str) -> str:
    """The ``CREATE TEMP TABLE __checked`` statement of ``check_staged``."""

    def first_filled(target: str, *, raw: bool = False) -> str:
        headers = mapping.columns.get(target, ())
        if not headers:
            return "CAST(NULL AS VARCHAR)"
        # Email lands as given (the pipeline's normalisation owns trimming/lower-casing);
        # only a blank one becomes NULL.
        values = [
            f"CASE WHEN __clean({quote_ident(h)}) IS NOT NULL THEN {quote_ident(h)} END"
            if raw
            else f"__clean({quote_ident(h)})"
            for h in headers
        ]
        return values[0] if len(values) == 1 else f"coalesce({', '.join(values)})"

    # Which date column supplied the value, so a bad date's quarantine row can name it.
    whens = " ".join(
        f"WHEN __clean({quote_ident(h)}) IS NOT NULL THEN {_literal(h)}"
        for h in mapping.columns.get("received_at", ())
    )
    received_field = f"CASE {whens} END" if whens else "CAST(NULL AS VARCHAR)"
    contact_values = ",\n        ".join(
        f"{first_filled(col, raw=col == 'email')} AS {col}" for col in CONTACT_COLUMNS
    )
    no_identity = " AND ".join(f"{col} IS NULL" for col in ROW_IDENTIFYING)
    return f"""
    CREATE TEMP TABLE __checked AS
    WITH mapped AS (
        SELECT
            {rows.source_row} AS source_row,
            coalesce({first_filled("source")}, {rows.fallback_source}) AS source,
            {first_filled("received_at")} AS received_raw,
            {rows.fallback_received} AS received_fallback,
            {received_field} AS received_field,
            {contact_values}
        FROM __src AS s
    ), parsed AS (
        SELECT *, __parse_received(received_raw) AS received_parsed FROM mapped
    )
    SELECT
        *,
        coalesce(received_parsed, received_fallback) AS received_at,
        CASE
            WHEN {suppressed} THEN '{SUPPRESSED}'
            WHEN {no_identity} THEN '{REASON_NO_IDENTITY}'
            WHEN received_raw IS NOT NULL AND received_parsed IS NULL THEN '{REASON_BAD_DATE}'
        END AS reason
    FROM parsed
    """


def land_checked(
    con: duckdb.DuckDBPyConnection, source_file: str, landed_at: datetime, rows: StagedRows
) -> IngestReport:
    """Write ``__checked`` out, ingest ids in ``source_row`` order; runs inside the caller's
    transaction."""
    contact_list = ", ".join(CONTACT_COLUMNS)
    # Ids are drawn from the table's own sequence in file order, into a staging table, so the
    # report can state exactly which ids this file got.
    next_id = "nextval('raw_contacts_ingest_id')"
    if postgres.in_use(con):
        (count,) = con.execute("SELECT count(*) FROM __checked WHERE reason IS NULL").fetchone()  # type: ignore[misc]
        first = postgres.draw_ids(con, "raw_contacts_ingest_id", count) if count else 1
        next_id = f"{first - 1} + row_number() OVER (ORDER BY source_row)"
    con.execute(
        f"""
        CREATE TEMP TABLE __landing AS
        SELECT {next_id} AS ingest_id, *
        FROM (SELECT * FROM __checked WHERE reason IS NULL ORDER BY source_row)
        """
    )
    con.execute(
        f"""
        INSERT INTO raw_contacts (ingest_id, source, source_file, source_row, received_at,
                                  landed_at, {contact_list})
        SELECT ingest_id, source, $source_file, source_row, received_at, $now, {contact_list}
        FROM __landing
        ORDER BY ingest_id
        """,
        {"source_file": source_file, "now": landed_at},
    )
    con.execute(
        f"""
        INSERT INTO quarantine (stage, source, source_file, source_row, partition_date, field,
                                reason, original, quarantined_at)
        SELECT 'ingest', c.source, $source_file, c.source_row, NULL,
               CASE WHEN c.reason = $bad_date THEN c.received_field END,
               -- A suppressed person's row keeps no values.
               c.reason, CASE WHEN c.reason <> $suppressed THEN {rows.original} END, $now
        FROM __checked AS c
        JOIN __src AS s ON {rows.source_row} = c.source_row
        WHERE c.reason IS NOT NULL
        ORDER BY c.source_row
        """,
        {
            "source_file": source_file,
            "now": landed_at,
            "bad_date": REASON_BAD_DATE,
            "suppressed": SUPPRESSED,
        },
    )
    accepted, first_id, last_id = con.execute(
        "SELECT count(*), min(ingest_id), max(ingest_id) FROM __landing"
    ).fetchone() or (0, None, None)
    reasons = dict(
        con.execute(
            "SELECT reason, count(*) FROM __checked WHERE reason IS NOT NULL "
            "GROUP BY reason ORDER BY reason"
        ).fetchall()
    )
    return _report(source_file, accepted, first_id, last_id, reasons)


def _report(
    source_file: str,
    accepted: int,
    first_id: int | None,
    last_id: int | None,
    reasons: dict[str, int],
    *,
    already_landed: bool = False,
) -> IngestReport:
    """Every row read either landed or was quarantined for one reason."""
    quarantined = sum(reasons.values())
    return IngestReport(
        rows_read=accepted + quarantined,
        accepted=accepted,
        quarantined=quarantined,
        first_ingest_id=first_id,
        last_ingest_id=last_id,
        quarantine_reasons=reasons,
        source_file=source_file,
        already_landed=already_landed,
    )


def utc_naive(moment: datetime) -> datetime:
    """Warehouse timestamps are naive UTC; a naive ``now`` is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _unreadable(csv_path: Path, dialect: CsvDialect, exc: duckdb.Error) -> IngestError:
    """DuckDB could not read the file: say which line is wrong and how to fix it, where the
    file itself shows it, else DuckDB's own words."""
    problem = _encoding_problem(exc, dialect) or _line_problem(csv_path, dialect)
    return IngestError(f"{csv_path}: could not be read as CSV: {problem or _short_error(exc)}")


def _encoding_problem(exc: duckdb.Error, dialect: CsvDialect) -> str | None:
    text = str(exc)
    if "not utf-8 encoded" not in text and "Invalid unicode" not in text:
        return None
    found = re.search(r"Line: (\d+)", text)
    where = f"line {found[1]}" if found else "a line"
    return (
        f"{where} is not {dialect.encoding} text: pass --encoding with the file's encoding "
        "(for example --encoding latin-1), or save the file as UTF-8"
    )


def _line_problem(csv_path: Path, dialect: CsvDialect) -> str | None:
    """The first row whose field count differs from the header's, or an unclosed quote."""
    encoding = _python_encoding(dialect.encoding)
    with csv_path.open(encoding=encoding, errors="replace", newline="") as fh:
        reader = csv.reader(fh, delimiter=dialect.delimiter, strict=True)
        started = 1
        try:
            header = next(reader, [])
            started = reader.line_num + 1
            for row in reader:
                if row and len(row) != len(header):
                    return (
                        f"line {started} has {len(row)} fields where the header has "
                        f"{len(header)}: quote any value that contains {dialect.delimiter!r}, "
                        "or remove the extra fields"
                    )
                started = reader.line_num + 1
        except csv.Error:
            return (
                f'line {started} opens a quote (") that is never closed: close it, or double '
                'any quote inside a quoted value ("")'
            )
    return None


def _short_error(exc: duckdb.Error) -> str:
    """DuckDB's CSV errors run to dozens of lines of hints; keep the lines that say what
    is wrong and where."""
    kept: list[str] = []
    for line in str(exc).splitlines():
        if not line.strip() or line.startswith(("Possible fixes", "The search space")):
            break
        kept.append(line.strip())
    return "; ".join(kept) or type(exc).__name__
