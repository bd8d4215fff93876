"""Erasing a person from the warehouse: every row under every identity that was theirs, the
audit row that says so without naming them, and a rewrite of the file so the bytes are gone.

A person is named by their email. Their identities are that email and what their own rows and
profile tie to it: the phone numbers, LinkedIn profiles and name + company of the leads that
carried it, the profile's mobile phone and LinkedIn, and any identity whose matched profile's
work email it is. Leads identified by one of those (a phone-only lead, say) are theirs too.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from enrich_pipeline.warehouse.connection import connect, swap_lock
from enrich_pipeline.warehouse.contacts import LINKEDIN_SLUG_PATTERN, check_new_rows
from enrich_pipeline.warehouse.crm_sync import SYNC_STATE_DDL
from enrich_pipeline.warehouse.suppression import add_to_list, keyed_hash

_SLUG = f"nullif(regexp_extract(lower({{url}}), '{LINKEDIN_SLUG_PATTERN}', 1), '')"

# The person's identities (hashed texts, as clean_contacts.identity holds them), one hop out
# from their email.
_IDENTITIES = f"""
CREATE OR REPLACE TEMP TABLE __erase_identities AS
WITH leads AS (
    SELECT * FROM clean_contacts WHERE email = $email OR identity = $email
), profiles AS (
    SELECT * FROM person_enrichment
    WHERE identity = $email OR lower(trim(work_email)) = $email
)
SELECT DISTINCT identity FROM (
    SELECT $email AS identity
    UNION ALL SELECT 'phone:' || phone FROM leads
    UNION ALL SELECT 'social:' || {_SLUG.format(url="linkedin_url")} FROM leads
    UNION ALL SELECT 'name:' || lower(full_name) || '|' || lower(coalesce(company_name,
                                                                          company_domain))
        FROM leads
    UNION ALL SELECT 'phone:' || c.phone
        FROM contact_checks c JOIN raw_contacts r USING (ingest_id) WHERE c.email = $email
    UNION ALL SELECT 'social:' || {_SLUG.format(url="r.linkedin_url")}
        FROM contact_checks c JOIN raw_contacts r USING (ingest_id) WHERE c.email = $email
    UNION ALL SELECT identity FROM profiles
    UNION ALL SELECT 'phone:' || mobile_phone FROM profiles
    UNION ALL SELECT 'social:' || {_SLUG.format(url="linkedin_url")} FROM profiles
)
WHERE identity IS NOT NULL
"""
# The work emails the provider gave any of those identities: the CRM records of a phone or
# LinkedIn lead are keyed by them.
_WORK_EMAILS = """
INSERT INTO __erase_identities
SELECT DISTINCT lower(trim(work_email)) FROM person_enrichment
WHERE identity IN (SELECT identity FROM __erase_identities)
  AND nullif(trim(work_email), '') IS NOT NULL
EXCEPT SELECT identity FROM __erase_identities
"""

# Landed rows that are the person's: one of their emails, or no valid email and one of their
# other identities (what validation would have identified the row by).
_ROWS = f"""
CREATE OR REPLACE TEMP TABLE __erase_rows AS
SELECT r.ingest_id
FROM raw_contacts r
JOIN contact_checks c USING (ingest_id)
WHERE c.email IN (SELECT identity FROM __erase_identities)
   OR (c.email IS NULL AND (
        'phone:' || c.phone IN (SELECT identity FROM __erase_identities)
        OR 'social:' || {_SLUG.format(url="r.linkedin_url")}
            IN (SELECT identity FROM __erase_identities)
        OR 'name:' || lower(trim(coalesce(r.full_name, concat_ws(' ', r.first_name,
                                                                 r.last_name))))
            || '|' || lower(r.company_name) IN (SELECT identity FROM __erase_identities)))
"""

_IS_THEIRS = "IN (SELECT identity FROM __erase_identities)"
# Each table and which of its rows are the person's.
_DELETES: dict[str, str] = {
    "raw_contacts": "ingest_id IN (SELECT ingest_id FROM __erase_rows)",
    "contact_checks": "ingest_id IN (SELECT ingest_id FROM __erase_rows)",
    # Rows that could not land keep the values as given: the address appears in their text.
    "quarantine": "ingest_id IN (SELECT ingest_id FROM __erase_rows) "
    "OR contains(lower(CAST(original AS VARCHAR)), $email)",
    "clean_contacts": f"identity {_IS_THEIRS} OR email {_IS_THEIRS}",
    "person_enrichment": f"identity {_IS_THEIRS}",
    "job_changes": f"identity {_IS_THEIRS} OR lower(email) {_IS_THEIRS}",
    "crm_contacts": f"email {_IS_THEIRS}",
    "crm_sync_state": f"email {_IS_THEIRS}",
}
ERASED_TABLES = tuple(_DELETES)


@dataclass(frozen=True)
class SubjectErased:
    erasure_id: str
    rows_removed: dict[str, int]  # table -> rows
    identities: tuple[str, ...]  # theirs, as hashed texts: now on the suppression list


def erase_subject(
    con: duckdb.DuckDBPyConnection,
    key: bytes,
    email: str,
    *,
    requested_by: str,
    now: datetime,
) -> SubjectErased:
    """Delete every row of the person with this normalised email, put every identity of
    theirs on the suppression list and write the audit row: inside the caller's transaction,
    after ``check_all_rows``."""
    con.execute(SYNC_STATE_DDL)
    params = {"email": email}
    con.execute(_IDENTITIES, params)
    con.execute(_WORK_EMAILS)
    con.execute(_ROWS)
    rows_removed = {}
    for table, theirs in _DELETES.items():
        used = {"email": email} if "$email" in theirs else {}
        rows_removed[table] = con.execute(f"DELETE FROM {table} WHERE {theirs}", used).fetchone()[0]  # type: ignore[index]
    identities = [
        row[0] for row in con.execute("SELECT identity FROM __erase_identities").fetchall()
    ]
    add_to_list(con, key, identities, reason="erased", now=now)
    erasure_id = uuid.uuid4().hex
    con.execute(
        "INSERT INTO erasures VALUES (?, ?, ?, ?, ?, NULL)",
        [erasure_id, keyed_hash(key, email), requested_by, now, json.dumps(rows_removed)],
    )
    con.execute("DROP TABLE __erase_identities")
    con.execute("DROP TABLE __erase_rows")
    return SubjectErased(erasure_id, rows_removed, tuple(identities))


def check_all_rows(con: duckdb.DuckDBPyConnection, now: datetime) -> None:
    """Run the library checks on every landed row not checked yet, so each row's normalised
    email is known to the erasure, landed today or in a day never built."""
    first, last = con.execute(
        "SELECT min(received_at), max(received_at) FROM raw_contacts "
        "ANTI JOIN contact_checks USING (ingest_id)"
    ).fetchone()  # type: ignore[misc]
    if first is not None:
        check_new_rows(con, first, last + timedelta(microseconds=1), now)


def record_crm_answers(con: duckdb.DuckDBPyConnection, answers: dict[str, dict[str, str]]) -> None:
    """``answers``: erasure id -> destination -> what it answered."""
    for erasure_id, by_destination in answers.items():
        con.execute(
            "UPDATE erasures SET crm_answers = ? WHERE erasure_id = ?",
            [json.dumps(by_destination), erasure_id],
        )


@dataclass(frozen=True)
class ErasureRecord:
    erasure_id: str
    erased_at: datetime
    requested_by: str
    rows_removed: dict[str, int]
    crm_answers: dict[str, str] | None


def erasure_records(con: duckdb.DuckDBPyConnection) -> list[ErasureRecord]:
    rows = con.execute(
        "SELECT erasure_id, erased_at, requested_by, rows_removed, crm_answers FROM erasures "
        "ORDER BY erased_at, erasure_id"
    ).fetchall()
    return [
        ErasureRecord(i, at, by, json.loads(removed), None if crm is None else json.loads(crm))
        for i, at, by, removed, crm in rows
    ]


@contextmanager
def rewritten(
    warehouse_path: str | Path, *, lock_timeout_s: float
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A write connection whose database is copied to a new file when the block ends, which
    then replaces the old one, so that nothing deleted in the block survives in the file's
    free blocks (DuckDB reuses them, but never clears them).

    Other processes cannot open the file between the moment this one lets it go and the
    moment the copy takes its place: each ``connect`` opens under a shared ``swap_lock``,
    held exclusively across the swap."""
    path = Path(warehouse_path)
    fresh = path.with_name(f".{path.name}.rewrite-{os.getpid()}")
    for leftover in (fresh, fresh.with_name(fresh.name + ".wal")):
        leftover.unlink(missing_ok=True)
    try:
        # Unwinds in order: the connection closes, the copy takes the file's place, then
        # other processes may open it.
        with ExitStack() as swap:
            with connect(path, lock_timeout_s=lock_timeout_s) as con:
                yield con
                con.execute("CHECKPOINT")
                (database,) = con.execute("SELECT current_database()").fetchone()  # type: ignore[misc]
                con.execute("ATTACH ? AS __rewritten", [str(fresh)])
                con.execute(f'COPY FROM DATABASE "{database}" TO __rewritten')
                con.execute("CHECKPOINT __rewritten")
                con.execute("DETACH __rewritten")
                swap.enter_context(swap_lock(path, exclusive=True))
            os.replace(fresh, path)
            _sync_folder(path.parent)
    finally:
        fresh.unlink(missing_ok=True)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
