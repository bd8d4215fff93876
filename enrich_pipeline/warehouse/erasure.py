"""Erasing a person from the warehouse: every row under every identity that was theirs, the
audit row that says so without naming them, and a rewrite of the file so the bytes are gone.

A person is named by their email. Their other identities are the phone numbers, LinkedIn
profiles and name + company their leads and their profile carry, as long as no lead of another
email carries them too (an office's main line is not one person's), and any phone, LinkedIn or
name identity whose matched profile gives their email as its work email. Leads identified by
one of those (a phone-only lead, say) are theirs too. What is shared with someone else is
neither erased nor suppressed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from enrich_pipeline.warehouse import postgres
from enrich_pipeline.warehouse.connection import connect, is_held, swap_lock, sync_folder
from enrich_pipeline.warehouse.contacts import check_new_rows
from enrich_pipeline.warehouse.identities import (
    LINKEDIN_PROFILE_PREFIX,
    landed_name_sql,
    name_identity_sql,
    slug_sql,
    website_domain_sql,
)
from enrich_pipeline.warehouse.schema import SYNC_STATE_DDL
from enrich_pipeline.warehouse.suppression import add_to_list, keyed_hash, list_key

_RAW_NAME = name_identity_sql(
    landed_name_sql("r"), f"coalesce(r.company_name, {website_domain_sql('r.website')})"
)


def _landed_keys(rows: str) -> str:
    """The phone, LinkedIn and name + company identities landed rows (``rows``: a condition
    on ``r`` and its checks ``c``) can be known by; the name with each company a row gives
    (its company, its website's domain, its email's domain)."""
    landed = f"FROM raw_contacts r JOIN contact_checks c USING (ingest_id) WHERE {rows}"
    companies = (
        "r.company_name",
        website_domain_sql("r.website"),
        "nullif(split_part(c.email, '@', 2), '')",
    )
    names = "\n    ".join(
        f"UNION SELECT {name_identity_sql(landed_name_sql('r'), company)} {landed}"
        for company in companies
    )
    return f"""SELECT 'phone:' || c.phone AS identity {landed}
    UNION SELECT 'social:' || {slug_sql("r.linkedin_url")} {landed}
    {names}"""


_CLEAN_NAME = name_identity_sql("full_name", "coalesce(company_name, company_domain)")

# Their identities (as clean_contacts.identity spells them), with whether each is theirs
# alone: only those go on the suppression list.
_IDENTITIES = f"""
CREATE OR REPLACE TEMP TABLE __erase_identities AS
WITH profile AS (
    SELECT * FROM person_enrichment WHERE identity = $email
), candidates AS (
    {_landed_keys("c.email = $email")}
    UNION SELECT 'phone:' || phone FROM clean_contacts WHERE email = $email
    UNION SELECT 'social:' || {slug_sql("linkedin_url")} FROM clean_contacts WHERE email = $email
    UNION SELECT {_CLEAN_NAME} FROM clean_contacts WHERE email = $email
    UNION SELECT 'phone:' || mobile_phone FROM profile
    UNION SELECT 'social:' || {slug_sql("linkedin_url")} FROM profile
), wanted AS (
    SELECT
        coalesce(list(substr(identity, 7)) FILTER (WHERE identity ^@ 'phone:'), []) AS phones,
        coalesce(list(substr(identity, 8)) FILTER (WHERE identity ^@ 'social:'), []) AS slugs,
        coalesce(list(split_part(substr(identity, 6), '|', 1))
            FILTER (WHERE identity ^@ 'name:'), []) AS names
    FROM candidates
), others AS (
    -- What leads (phones: built or not) and profiles of other emails carry, looked for only
    -- where a candidate could be: a pass over every lead per person costs seconds at a million.
    SELECT 'phone:' || c.phone AS identity FROM contact_checks c, wanted w
        WHERE c.email IS NOT NULL AND c.email <> $email AND list_contains(w.phones, c.phone)
    UNION SELECT 'phone:' || phone FROM clean_contacts, wanted
        WHERE email IS NOT NULL AND email <> $email AND list_contains(phones, phone)
    UNION SELECT 'social:' || {slug_sql("linkedin_url")} FROM clean_contacts, wanted
        WHERE email IS NOT NULL AND email <> $email
          AND list_contains(slugs, replace(linkedin_url, '{LINKEDIN_PROFILE_PREFIX}', ''))
    UNION SELECT {_CLEAN_NAME} FROM clean_contacts, wanted
        WHERE email IS NOT NULL AND email <> $email AND list_contains(names, lower(full_name))
    UNION SELECT 'phone:' || mobile_phone FROM person_enrichment, wanted
        WHERE identity_type = 'email' AND identity <> $email
          AND list_contains(phones, mobile_phone)
    UNION SELECT 'social:' || {slug_sql("linkedin_url")} FROM person_enrichment, wanted
        WHERE identity_type = 'email' AND identity <> $email
          AND len(list_filter(slugs, lambda slug: contains(lower(linkedin_url), slug))) > 0
)
SELECT $email AS identity, true AS theirs_alone
UNION
SELECT identity, true FROM candidates
WHERE identity IS NOT NULL
  AND identity NOT IN (SELECT identity FROM others WHERE identity IS NOT NULL)
UNION
-- The provider tied these leads to them.
SELECT identity, false FROM person_enrichment
WHERE lower(trim(work_email)) = $email AND identity_type <> 'email'
"""

# Landed rows that are the person's: their email, valid or not (an address written
# "Jane <jane@acme.com>" is still theirs), or no valid email and one of their other
# identities (what validation identifies such a row by).
_ROWS = f"""
CREATE OR REPLACE TEMP TABLE __erase_rows AS
SELECT r.ingest_id
FROM raw_contacts r
JOIN contact_checks c USING (ingest_id)
WHERE c.email = $email
   OR (c.email IS NULL AND (
        regexp_matches(lower(r.email), $email_pattern)
        OR 'phone:' || c.phone IN (SELECT identity FROM __erase_identities)
        OR 'social:' || {slug_sql("r.linkedin_url")} IN (SELECT identity FROM __erase_identities)
        OR {_RAW_NAME} IN (SELECT identity FROM __erase_identities)))
"""

# Their CRM records: their email's, and those keyed by the work email a profile gave one of
# their other leads, when no other lead has that email (the record is made of their leads).
_CRM_EMAILS = """
CREATE OR REPLACE TEMP TABLE __erase_crm_emails AS
SELECT $email AS email
UNION
SELECT lower(trim(p.work_email)) FROM person_enrichment p
WHERE p.identity IN (SELECT identity FROM __erase_identities) AND p.identity_type <> 'email'
  AND lower(trim(p.work_email)) NOT IN (
      SELECT email FROM clean_contacts
      WHERE email IS NOT NULL AND identity NOT IN (SELECT identity FROM __erase_identities))
"""

_IS_THEIRS = "IN (SELECT identity FROM __erase_identities)"
# Each table and which of its rows are the person's.
_DELETES: dict[str, str] = {
    "raw_contacts": "ingest_id IN (SELECT ingest_id FROM __erase_rows)",
    "contact_checks": "ingest_id IN (SELECT ingest_id FROM __erase_rows)",
    # Rows that could not land keep the values as given: the address is in their text.
    "quarantine": "ingest_id IN (SELECT ingest_id FROM __erase_rows) "
    "OR regexp_matches(lower(CAST(original AS VARCHAR)), $email_pattern)",
    "clean_contacts": f"identity {_IS_THEIRS} OR email = $email",
    "person_enrichment": f"identity {_IS_THEIRS}",
    "job_changes": f"identity {_IS_THEIRS} OR lower(email) = $email",
    "crm_contacts": "email IN (SELECT email FROM __erase_crm_emails)",
    "crm_sync_state": "email IN (SELECT email FROM __erase_crm_emails)",
}
ERASED_TABLES = tuple(_DELETES)


@dataclass(frozen=True)
class SubjectErased:
    erasure_id: str
    rows_removed: dict[str, int]  # table -> rows
    # Theirs, as hashed texts; those that are theirs alone are now on the suppression list.
    identities: tuple[str, ...]


def erase_subject(
    con: duckdb.DuckDBPyConnection,
    email: str,
    *,
    requested_by: str,
    now: datetime,
) -> SubjectErased:
    """Delete every row of the person with this normalised email, put every identity of
    theirs on the suppression list and write the audit row: inside the caller's transaction,
    after ``check_all_rows``."""
    con.execute(SYNC_STATE_DDL)
    params = {"email": email, "email_pattern": email_pattern(email)}
    con.execute(_IDENTITIES, {"email": email})
    con.execute(_ROWS, params)
    con.execute(_CRM_EMAILS, {"email": email})
    rows_removed = {}
    for table, theirs in _DELETES.items():
        used = {k: v for k, v in params.items() if re.search(rf"\${k}\b", theirs)}
        deleted = con.execute(f"DELETE FROM {table} WHERE {theirs}", used).fetchone()
        rows_removed[table] = deleted[0] if deleted else 0
    found = con.execute(
        "SELECT identity, theirs_alone FROM __erase_identities ORDER BY identity"
    ).fetchall()
    identities = [identity for identity, _ in found]
    add_to_list(con, [i for i, alone in found if alone], reason="erased", now=now)
    erasure_id = uuid.uuid4().hex
    con.execute(
        "INSERT INTO erasures VALUES (?, ?, ?, ?, ?, NULL)",
        [erasure_id, keyed_hash(list_key(con), email), requested_by, now, json.dumps(rows_removed)],
    )
    for table in ("__erase_identities", "__erase_rows", "__erase_crm_emails"):
        con.execute(f"DROP TABLE {table}")
    return SubjectErased(erasure_id, rows_removed, tuple(identities))


def email_pattern(email: str) -> str:
    """A regular expression finding the address in a text, not inside a longer one
    (``jo@acme.com`` is not in ``mojo@acme.com`` or ``jo@acme.com.au``)."""
    return rf"(^|[^a-z0-9.!#$%&'*+/=?^_`{{|}}~-]){re.escape(email)}($|[^a-z0-9.-]|\.($|[^a-z0-9-]))"


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
    if postgres.is_postgres(warehouse_path):
        with connect(warehouse_path, lock_timeout_s=lock_timeout_s) as con:
            yield con
        # VACUUM FULL writes each table anew; it cannot run in the block's transaction.
        # The claims a run released are dead rows of in_flight_claims until vacuumed too.
        postgres.vacuum_full(warehouse_path, [*ERASED_TABLES, "in_flight_claims"])
        return
    path = Path(warehouse_path)
    if is_held(path):
        # This process's own open database would go on writing to the replaced file.
        raise RuntimeError(f"{path} is held open by this process: erase from a process of its own")
    fresh = path.with_name(f".{path.name}.rewrite-{os.getpid()}")
    try:
        # Unwinds in order: the connection closes, the copy takes the file's place, then
        # other processes may open it.
        with ExitStack() as swap:
            with connect(path, lock_timeout_s=lock_timeout_s) as con:
                # Holding the write lock, no other erasure is under way: any copy here is one
                # that a killed erasure left, and holds everyone's data.
                for leftover in path.parent.glob(f".{path.name}.rewrite-*"):
                    leftover.unlink(missing_ok=True)
                yield con
                con.execute("CHECKPOINT")
                (database,) = con.execute("SELECT current_database()").fetchone()  # type: ignore[misc]
                quoted = str(fresh).replace("'", "''")  # ATTACH takes no parameter
                con.execute(f"ATTACH '{quoted}' AS __rewritten")
                con.execute(f'COPY FROM DATABASE "{database}" TO __rewritten')
                con.execute("CHECKPOINT __rewritten")
                con.execute("DETACH __rewritten")
                _same_owner_and_mode(path, fresh)
                swap.enter_context(swap_lock(path, exclusive=True))
            os.replace(fresh, path)
            sync_folder(path.parent)
    finally:
        for partial in (fresh, fresh.with_name(fresh.name + ".wal")):
            partial.unlink(missing_ok=True)


def _same_owner_and_mode(original: Path, copy: Path) -> None:
    """The copy is as readable as the file it replaces, and by no one more."""
    status = original.stat()
    os.chmod(copy, stat.S_IMODE(status.st_mode))
    with contextlib.suppress(PermissionError):
        os.chown(copy, status.st_uid, status.st_gid)
