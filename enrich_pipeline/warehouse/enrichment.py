"""What needs enriching (missing or past its TTL) and storing what the provider answered.

Stale selection is one SQL query per window; results are written per chunk, delete-then-insert
by key, so a crash loses at most one chunk and a re-run picks up where the last one stopped.
A refreshed person profile naming another employer or title than the one it replaces is kept
in ``job_changes``, in the same transaction. Of each answer only the fields asked for are kept;
its raw JSON is kept for a retention period, then cleared (``clear_expired_raw``).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Generic, TypeVar

import duckdb
import pandas as pd

from enrich_pipeline.display_case import Style, display_case
from enrich_pipeline.field_profiles import COMPANY_FIELDS
from enrich_pipeline.normalise import FREE_MAIL_DOMAINS, is_free_mail
from enrich_pipeline.provider.models import (
    PERSON_FIELDS,
    CompanyQuery,
    EnrichmentResult,
    Kind,
    PersonQuery,
)
from enrich_pipeline.warehouse.connection import transaction
from enrich_pipeline.warehouse.suppression import clean_contact_keys_sql, suppressed_sql


@dataclass(frozen=True)
class Freshness:
    """How long an answer stays good. Errors are always retried on the next run."""

    person_ttl_days: int
    company_ttl_days: int
    no_match_retry_days: int

    def ttl_days(self, kind: Kind) -> int:
        return self.person_ttl_days if kind == "person" else self.company_ttl_days

    def is_stale(
        self, kind: Kind, status: str | None, enriched_at: datetime | None, now: datetime
    ) -> bool:
        """``stale_condition`` for one record (a test holds the two to the same answers)."""
        if status is None or status == "error" or enriched_at is None:
            return True
        if status == "matched":
            return enriched_at < now - timedelta(days=self.ttl_days(kind))
        if status == "no_match":
            return enriched_at < now - timedelta(days=self.no_match_retry_days)
        return False


Q = TypeVar("Q", PersonQuery, CompanyQuery)


@dataclass(frozen=True)
class StaleSelection(Generic[Q]):
    queries: list[Q]
    total: int

    @property
    def fresh(self) -> int:
        return self.total - len(self.queries)


def stale_condition(alias: str, freshness: Freshness, kind: Kind) -> str:
    """Whether the ``kind`` record aliased ``alias`` is missing or past its TTL at ``$now``."""
    return f"""(
        {alias}.status IS NULL
        OR {alias}.status = 'error'
        OR ({alias}.status = 'matched'
            AND {alias}.enriched_at < $now - to_days({int(freshness.ttl_days(kind))}))
        OR ({alias}.status = 'no_match'
            AND {alias}.enriched_at < $now - to_days({int(freshness.no_match_retry_days)}))
    )"""


# The domain a contact's company is enriched and merged under, over ``clean_contacts c`` and
# its ``person_enrichment p``: the matched person's company domain, else the lead's own
# (website or work email). Both are stored lower-case; lower() only guards against one that
# is not.
COMPANY_DOMAIN_SQL = (
    "lower(coalesce(CASE WHEN p.status = 'matched' THEN p.company_domain END, c.company_domain))"
)


def stale_persons(
    con: duckdb.DuckDBPyConnection, start: date, end: date, now: datetime, freshness: Freshness
) -> StaleSelection[PersonQuery]:
    """Every identity in the window, once, and the look-ups needed for those not fresh (a
    suppressed person is never looked up)."""
    suppressed = suppressed_sql(con, clean_contact_keys_sql("c"))
    # Staleness first, on identities alone; the look-up fields only for the stale few.
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE stale_persons AS
        SELECT identity, {stale_condition("p", freshness, "person")} AND NOT w.suppressed AS stale
        FROM (
            SELECT identity, bool_or({suppressed}) AS suppressed FROM clean_contacts c
            WHERE partition_date >= $start AND partition_date < $end
            GROUP BY identity
        ) w
        LEFT JOIN person_enrichment p USING (identity)
        """,
        {"start": start, "end": end, "now": now},
    )
    total = con.execute("SELECT count(*) FROM stale_persons").fetchone()[0]  # type: ignore[index]
    rows = con.execute(
        """
        SELECT
            identity,
            any_value(identity_type),
            any_value(email),
            arg_max(phone, last_received_at) FILTER (WHERE phone IS NOT NULL),
            arg_max(linkedin_url, last_received_at) FILTER (WHERE linkedin_url IS NOT NULL),
            arg_max(full_name, last_received_at) FILTER (WHERE full_name IS NOT NULL),
            arg_max(coalesce(company_name, company_domain), last_received_at)
                FILTER (WHERE coalesce(company_name, company_domain) IS NOT NULL)
        FROM clean_contacts
        SEMI JOIN stale_persons s ON s.identity = clean_contacts.identity AND s.stale
        WHERE partition_date >= $start AND partition_date < $end
        GROUP BY identity
        ORDER BY identity
        """,
        {"start": start, "end": end},
    ).fetchall()
    con.execute("DROP TABLE stale_persons")
    return StaleSelection(queries=[_person_query(*row) for row in rows], total=total)


def stale_for_leads(
    con: duckdb.DuckDBPyConnection,
    identities: Sequence[str],
    domains: Sequence[str],
    now: datetime,
    freshness: Freshness,
) -> set[tuple[Kind, str]]:
    """Of these persons and companies, and of the employers of those persons already matched,
    the records missing or past their TTL, as ``(kind, key)``: the windows' rule for records
    named one by one, read by key (a query planned in well under a millisecond)."""
    persons = con.execute(
        "SELECT identity, status, enriched_at, company_domain FROM person_enrichment "
        f"WHERE identity IN ({placeholders(identities)})",
        list(identities),
    ).fetchall()
    employers = {domain for _, status, _, domain in persons if status == "matched" and domain}
    wanted = sorted(set(domains) | employers)
    companies = con.execute(
        "SELECT domain, status, enriched_at FROM company_enrichment "
        f"WHERE domain IN ({placeholders(wanted)})",
        wanted,
    ).fetchall()
    found: dict[tuple[Kind, str], tuple[str, datetime]] = {
        **{("person", key): (status, at) for key, status, at, _ in persons},
        **{("company", key): (status, at) for key, status, at in companies},
    }
    wanted_keys: list[tuple[Kind, str]] = [("person", i) for i in identities]
    wanted_keys += [("company", d) for d in wanted]
    return {
        (kind, key)
        for kind, key in wanted_keys
        if freshness.is_stale(kind, *found.get((kind, key), (None, None)), now)
    }


def placeholders(values: Sequence[object]) -> str:
    """``?`` for each value, for ``IN (...)``; a list that is empty matches nothing."""
    return ", ".join("?" * len(values)) or "NULL"


def _person_query(
    identity: str,
    kind: str,
    email: str | None,
    phone: str | None,
    social_url: str | None,
    full_name: str | None,
    company: str | None,
) -> PersonQuery:
    # One identifier per look-up: each distinct identifier sent is billable.
    if kind == "email":
        return PersonQuery(key=identity, email=email)
    if kind == "phone":
        return PersonQuery(key=identity, phone=phone)
    if kind == "social_url":
        return PersonQuery(key=identity, social_url=social_url)
    return PersonQuery(key=identity, full_name=full_name, company=company)


def stale_companies(
    con: duckdb.DuckDBPyConnection, start: date, end: date, now: datetime, freshness: Freshness
) -> StaleSelection[CompanyQuery]:
    """Domains of the window's contacts: the matched person's company domain, else the lead's
    own (website or work email). Free-mail domains are never companies, nor suppressed ones,
    nor the domains only suppressed people name."""
    rows = con.execute(
        f"""
        WITH domains AS (
            SELECT DISTINCT {COMPANY_DOMAIN_SQL} AS domain
            FROM clean_contacts c
            LEFT JOIN person_enrichment p USING (identity)
            WHERE c.partition_date >= $start AND c.partition_date < $end
              AND NOT {suppressed_sql(con, clean_contact_keys_sql("c"))}
        )
        SELECT d.domain, {stale_condition("e", freshness, "company")} AS stale
        FROM domains d
        LEFT JOIN company_enrichment e USING (domain)
        WHERE d.domain IS NOT NULL AND NOT list_contains($free_mail, d.domain)
          AND NOT {suppressed_sql(con, ["'domain:' || d.domain"])}
        ORDER BY d.domain
        """,
        {"start": start, "end": end, "now": now, "free_mail": sorted(FREE_MAIL_DOMAINS)},
    ).fetchall()
    queries = [CompanyQuery(key=domain, domain=domain) for domain, stale in rows if stale]
    return StaleSelection(queries=queries, total=len(rows))


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        return _text(value.get("cleaned"))
    return str(value)


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def identity_type(identity: str) -> str:
    """Identities carry their kind as a prefix (see ``clean_contacts``); bare ones are emails."""
    prefix = identity.split(":", 1)[0] if ":" in identity else ""
    return {"phone": "phone", "social": "social_url", "name": "name_company"}.get(prefix, "email")


# How the provider's lower-case answers are cased for display, per profile column (``raw``
# keeps them as answered).
_PERSON_DISPLAY: dict[str, Style] = {
    "full_name": "name",
    "first_name": "name",
    "last_name": "name",
    "job_title": "title",
    "company_name": "words",
    "company_industry": "words",
    "city": "place",
    "state": "place",
    "country": "place",
}


def _kept(record: Mapping[str, Any], fields: Collection[str]) -> dict[str, Any]:
    """Only ``fields`` of an answer: a provider may answer with more than was asked for (lists
    of every email, phone and past job), and what nobody asked for is not stored."""
    return {name: value for name, value in record.items() if name in fields}


def _raw(result: EnrichmentResult, record: dict[str, Any], keep_raw: bool) -> str | None:
    return json.dumps(record) if keep_raw and result.record is not None else None


def person_rows(
    results: Sequence[EnrichmentResult],
    now: datetime,
    *,
    fields: Collection[str] = PERSON_FIELDS,
    keep_raw: bool = True,
) -> pd.DataFrame:
    """One ``person_enrichment`` row per answer, from its ``fields`` alone; ``raw`` holds those
    fields as answered, or nothing unless ``keep_raw``."""
    rows = []
    for r in results:
        rec = _kept(r.record or {}, fields)
        row: dict[str, Any] = {
            "identity": r.key,
            "identity_type": identity_type(r.key),
            "status": r.status.value,
            "enriched_at": now,
            "error": r.error,
            "match_confidence": (r.match_metadata or {}).get("match_confidence"),
            **{
                name: display_case(_text(rec.get(name)), _PERSON_DISPLAY[name])
                if name in _PERSON_DISPLAY
                else _text(rec.get(name))
                for name in PERSON_FIELDS
            },
            "raw": _raw(r, rec, keep_raw),
        }
        # A free-mail domain is nobody's employer: drop it so the lead's own domain is used.
        domain = row["company_domain"].lower() if row["company_domain"] else None
        row["company_domain"] = None if is_free_mail(domain) else domain
        rows.append(row)
    return pd.DataFrame(rows)


def company_rows(
    results: Sequence[EnrichmentResult],
    now: datetime,
    *,
    fields: Collection[str] = COMPANY_FIELDS,
    keep_raw: bool = True,
) -> pd.DataFrame:
    """One ``company_enrichment`` row per answer, kept as ``person_rows`` keeps persons'."""
    rows = []
    for r in results:
        rec = _kept(r.record or {}, fields)
        rows.append(
            {
                "domain": r.key,
                "status": r.status.value,
                "enriched_at": now,
                "error": r.error,
                "legion_id": _text(rec.get("legion_id")),
                "name": display_case(_text(rec.get("name")), "words"),
                "industry": display_case(_text(rec.get("industry")), "words"),
                "company_type": _text(rec.get("type")),
                "size": _text(rec.get("size")),
                "founded": _int(rec.get("founded")),
                "linkedin_url": _text(rec.get("linkedin_url")),
                "employee_count": _int(rec.get("legion_employee_count")),
                "raw": _raw(r, rec, keep_raw),
            }
        )
    return pd.DataFrame(rows)


def _upsert(
    con: duckdb.DuckDBPyConnection,
    table: str,
    key: str,
    frame: pd.DataFrame,
    record_changes: str | None = None,
) -> int:
    """Replace rows by key, except that an error never overwrites a matched record: the old
    profile stays (and stays stale, so the next run asks again). ``record_changes`` runs in the
    same transaction while both the old rows and the ``accepted`` new ones are visible; the
    rows it inserts are counted and returned."""
    changes = 0
    with transaction(con):
        con.register("incoming", frame)
        # Typed as the table: a column the frame has only None in is no type of its own.
        con.execute(f"CREATE OR REPLACE TEMP TABLE accepted AS FROM {table} LIMIT 0")
        con.execute(
            f"""
            INSERT INTO accepted BY NAME
            SELECT i.* FROM incoming i
            LEFT JOIN {table} t ON t.{key} = i.{key} AND t.status = 'matched'
            WHERE NOT (i.status = 'error' AND t.{key} IS NOT NULL)
            """
        )
        if record_changes:
            changes = con.execute(record_changes).fetchone()[0]  # type: ignore[index]
        con.execute(f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM accepted)")
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM accepted")
        con.execute("DROP TABLE accepted")
        con.unregister("incoming")
    return changes


def _same(old: str, new: str) -> str:
    """Case- and space-insensitive equality where an empty new value counts as different."""
    return f"lower(trim({old})) IS NOT DISTINCT FROM nullif(lower(trim({new})), '')"


_OLD_COMPANY = "coalesce(t.company_name, t.company_domain)"
_NEW_COMPANY = "coalesce(a.company_name, a.company_domain)"

# A matched answer replacing a matched answer, with a different employer or title. Employers
# compare by domain when both answers have one, else by name (else domain): a profile that
# only gained or lost its domain is not a move. Nothing is recorded when the old value was
# empty (a profile filling a gap is not a change).
_RECORD_JOB_CHANGES = f"""
INSERT INTO job_changes (identity, email, old_company, new_company, old_company_domain,
                         new_company_domain, old_title, new_title, detected_at)
SELECT
    a.identity,
    CASE WHEN a.identity_type = 'email' THEN a.identity
         ELSE lower(trim(coalesce(a.work_email, t.work_email))) END,
    {_OLD_COMPANY},
    {_NEW_COMPANY},
    t.company_domain,
    a.company_domain,
    t.job_title,
    a.job_title,
    a.enriched_at
FROM accepted a
JOIN person_enrichment t ON t.identity = a.identity AND t.status = 'matched'
WHERE a.status = 'matched' AND (
    (nullif(trim({_OLD_COMPANY}), '') IS NOT NULL AND NOT (
        CASE WHEN t.company_domain IS NOT NULL AND a.company_domain IS NOT NULL
            THEN {_same("t.company_domain", "a.company_domain")}
            ELSE {_same(_OLD_COMPANY, _NEW_COMPANY)}
        END))
    OR (nullif(trim(t.job_title), '') IS NOT NULL AND NOT {_same("t.job_title", "a.job_title")})
)
"""


def store_persons(
    con: duckdb.DuckDBPyConnection,
    results: Sequence[EnrichmentResult],
    now: datetime,
    *,
    fields: Collection[str] = PERSON_FIELDS,
    keep_raw: bool = True,
) -> int:
    """Store the answers' ``fields`` (their raw JSON only if ``keep_raw``); returns how many job
    changes (see ``job_changes``) they revealed."""
    if not results:
        return 0
    return _upsert(
        con,
        "person_enrichment",
        "identity",
        person_rows(results, now, fields=fields, keep_raw=keep_raw),
        record_changes=_RECORD_JOB_CHANGES,
    )


def store_companies(
    con: duckdb.DuckDBPyConnection,
    results: Sequence[EnrichmentResult],
    now: datetime,
    *,
    fields: Collection[str] = COMPANY_FIELDS,
    keep_raw: bool = True,
) -> None:
    """Store the answers' ``fields`` (their raw JSON only if ``keep_raw``)."""
    if results:
        rows = company_rows(results, now, fields=fields, keep_raw=keep_raw)
        _upsert(con, "company_enrichment", "domain", rows)


_TABLES: dict[Kind, str] = {"person": "person_enrichment", "company": "company_enrichment"}


# A raw answer kept past its retention ($now, $days): what the retention pass clears.
EXPIRED_RAW = "raw IS NOT NULL AND enriched_at < $now - to_days($days)"


def clear_expired_raw(
    con: duckdb.DuckDBPyConnection, kind: Kind, now: datetime, retention_days: int
) -> int:
    """Clear the raw answer of every ``kind`` record enriched more than ``retention_days``
    before ``now`` (at 0, of every record), across the whole table; the profile's columns stay.
    Returns how many were cleared."""
    cleared = con.execute(
        f"UPDATE {_TABLES[kind]} SET raw = NULL WHERE {EXPIRED_RAW}",
        {"now": now, "days": retention_days},
    ).fetchone()
    return cleared[0] if cleared else 0
