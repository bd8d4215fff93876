"""The figures the data-quality checks judge, each one query over the whole warehouse.

Shares are ``None`` when there is nothing to divide by (an empty warehouse is not a failure).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb

from enrich_pipeline.provider.models import Kind
from enrich_pipeline.warehouse.enrichment import Freshness, stale_condition


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@dataclass(frozen=True)
class DuplicateEmails:
    records: int
    duplicated_emails: int  # emails held by more than one record
    extra_records: int  # records beyond the first for those emails


def duplicate_crm_emails(con: duckdb.DuckDBPyConnection) -> DuplicateEmails:
    records, emails, extra = con.execute(
        """
        SELECT coalesce(sum(n), 0), count(*) FILTER (WHERE n > 1),
               coalesce(sum(n - 1) FILTER (WHERE n > 1), 0)
        FROM (SELECT count(*) AS n FROM crm_contacts GROUP BY email)
        """
    ).fetchone()  # type: ignore[misc]
    return DuplicateEmails(
        records=int(records), duplicated_emails=int(emails), extra_records=int(extra)
    )


@dataclass(frozen=True)
class PersonCoverage:
    identities: int  # distinct identities in clean_contacts
    without_status: int  # of those, never answered (no person_enrichment row)


def person_coverage(con: duckdb.DuckDBPyConnection) -> PersonCoverage:
    identities, missing = con.execute(
        """
        SELECT count(*), count(*) FILTER (WHERE p.identity IS NULL)
        FROM (SELECT DISTINCT identity FROM clean_contacts) c
        LEFT JOIN (SELECT DISTINCT identity FROM person_enrichment) p USING (identity)
        """
    ).fetchone()  # type: ignore[misc]
    return PersonCoverage(identities=identities, without_status=missing)


@dataclass(frozen=True)
class MatchRate:
    matched: int
    no_match: int

    @property
    def rate(self) -> float | None:
        """Matched among definite answers; errors are no answer and left out."""
        return _share(self.matched, self.matched + self.no_match)


def person_match_rate(con: duckdb.DuckDBPyConnection) -> MatchRate:
    matched, no_match = con.execute(
        """
        SELECT count(*) FILTER (WHERE status = 'matched'),
               count(*) FILTER (WHERE status = 'no_match')
        FROM person_enrichment
        """
    ).fetchone()  # type: ignore[misc]
    return MatchRate(matched=matched, no_match=no_match)


@dataclass(frozen=True)
class Staleness:
    """Stored answers and those past their TTL by status (the rule the enrichment assets use
    to decide what to ask again: matched past the TTL, no_match past the retry window, every
    error)."""

    records: int
    matched_past_ttl: int
    no_match_past_retry: int
    errors: int

    @property
    def stale(self) -> int:
        return self.matched_past_ttl + self.no_match_past_retry + self.errors

    @property
    def share(self) -> float | None:
        return _share(self.stale, self.records)


def _staleness(
    con: duckdb.DuckDBPyConnection, table: str, kind: Kind, now: datetime, freshness: Freshness
) -> Staleness:
    stale = stale_condition("t", freshness, kind)
    rows = con.execute(
        f"SELECT status, count(*), count(*) FILTER (WHERE {stale}) FROM {table} t GROUP BY ALL",
        {"now": now},
    ).fetchall()
    past = {status: n for status, _, n in rows}
    return Staleness(
        records=sum(total for _, total, _ in rows),
        matched_past_ttl=past.get("matched", 0),
        no_match_past_retry=past.get("no_match", 0),
        errors=past.get("error", 0),
    )


def person_staleness(
    con: duckdb.DuckDBPyConnection, now: datetime, freshness: Freshness
) -> Staleness:
    return _staleness(con, "person_enrichment", "person", now, freshness)


def company_staleness(
    con: duckdb.DuckDBPyConnection, now: datetime, freshness: Freshness
) -> Staleness:
    return _staleness(con, "company_enrichment", "company", now, freshness)


@dataclass(frozen=True)
class QuarantineShare:
    """Rows checked so far: every row refused at landing, and every landed row of a received
    day that ``raw_contacts`` has built (a day not built yet has not been validated)."""

    refused_at_ingest: int
    validated: int  # landed rows of built days
    quarantined_at_validation: int

    @property
    def checked(self) -> int:
        return self.refused_at_ingest + self.validated

    @property
    def quarantined(self) -> int:
        return self.refused_at_ingest + self.quarantined_at_validation

    @property
    def share(self) -> float | None:
        return _share(self.quarantined, self.checked)


def quarantine_share(con: duckdb.DuckDBPyConnection) -> QuarantineShare:
    refused, at_validation, validated = con.execute(
        """
        SELECT
            (SELECT count(*) FROM quarantine WHERE stage = 'ingest'),
            (SELECT count(*) FROM quarantine WHERE stage = 'validate'),
            (SELECT coalesce(sum(landed_rows), 0) FROM contact_builds)
        """
    ).fetchone()  # type: ignore[misc]
    return QuarantineShare(
        refused_at_ingest=refused,
        validated=int(validated),
        quarantined_at_validation=at_validation,
    )
