"""What the new-contacts sensor and the daily refresh ask of the warehouse: which received days
hold rows landed after a cursor, and which hold work the enrichment job would do now (records
missing or past their TTL, landed rows not yet built). Days come back grouped into contiguous
ranges, since a range of daily partitions is one run."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import duckdb

from enrich_pipeline.normalise import FREE_MAIL_DOMAINS
from enrich_pipeline.warehouse.contacts import unbuilt_days_sql
from enrich_pipeline.warehouse.enrichment import (
    COMPANY_DOMAIN_SQL,
    EXPIRED_RAW,
    Freshness,
    stale_condition,
)
from enrich_pipeline.warehouse.suppression import clean_contact_keys_sql, suppressed_sql


@dataclass(frozen=True)
class DayRange:
    """Received days ``first`` to ``last``, both inclusive, as partition key ranges are."""

    first: date
    last: date

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    def __str__(self) -> str:
        return f"{self.first.isoformat()}..{self.last.isoformat()}"


def contiguous_ranges(days: Iterable[date]) -> list[DayRange]:
    """The days as the fewest ranges with no day in between left out, in date order."""
    ranges: list[DayRange] = []
    for day in sorted(set(days)):
        if ranges and day == ranges[-1].last + timedelta(days=1):
            ranges[-1] = DayRange(ranges[-1].first, day)
        else:
            ranges.append(DayRange(day, day))
    return ranges


@dataclass(frozen=True)
class LandedRows:
    """Rows landed after a cursor, at most a budget of them, oldest ingest id first."""

    rows_by_day: dict[date, int]
    first_ingest_id: int | None  # None when nothing landed after the cursor
    last_ingest_id: int | None  # the next cursor

    @property
    def rows(self) -> int:
        return sum(self.rows_by_day.values())


def rows_landed_after(con: duckdb.DuckDBPyConnection, cursor: int, max_rows: int) -> LandedRows:
    """The received days of the first ``max_rows`` rows with ``ingest_id > cursor``.

    Ids are safe as a cursor because a writer holds the file's lock until its transaction has
    committed: no reader can see a later id while an earlier one is still to come."""
    found = con.execute(
        """
        WITH taken AS (
            SELECT ingest_id, CAST(received_at AS DATE) AS day
            FROM raw_contacts
            WHERE ingest_id > $cursor
            ORDER BY ingest_id
            LIMIT $max_rows
        )
        SELECT day, count(*), min(ingest_id), max(ingest_id)
        FROM taken GROUP BY day ORDER BY day
        """,
        {"cursor": cursor, "max_rows": max_rows},
    ).fetchall()
    if not found:
        return LandedRows(rows_by_day={}, first_ingest_id=None, last_ingest_id=None)
    return LandedRows(
        rows_by_day={day: rows for day, rows, _, _ in found},
        first_ingest_id=min(first for _, _, first, _ in found),
        last_ingest_id=max(last for _, _, _, last in found),
    )


@dataclass(frozen=True)
class RefreshNeeds:
    """Days whose partitions the enrichment job has work in, and why."""

    person_days: frozenset[date]  # a contact's person record is missing or stale
    company_days: frozenset[date]  # a contact's company record is missing or stale
    unbuilt_days: frozenset[date]  # rows landed that clean_contacts does not reflect yet
    stale_persons: int
    stale_companies: int
    # Raw answers kept past their retention: any run clears them, so one day (the latest)
    # is asked for when nothing else is.
    expired_raw: int = 0
    raw_days: frozenset[date] = frozenset()

    @property
    def days(self) -> frozenset[date]:
        work = self.person_days | self.company_days | self.unbuilt_days
        return work or self.raw_days


# Same rule as stale_persons: every identity a partition holds, judged on its person record;
# a suppressed person is never looked up, so is no reason for a run.
_STALE_PERSONS = """
SELECT list(DISTINCT c.partition_date), count(DISTINCT c.identity)
FROM clean_contacts c
LEFT JOIN person_enrichment p USING (identity)
WHERE {stale} AND NOT {suppressed}
"""

# Same rule as stale_companies (never a free-mail domain); a company's staleness lands on every
# partition that references it.
_STALE_COMPANIES = """
WITH domains AS (
    SELECT c.partition_date, {domain} AS domain
    FROM clean_contacts c
    LEFT JOIN person_enrichment p USING (identity)
    WHERE NOT {suppressed}
)
SELECT list(DISTINCT d.partition_date), count(DISTINCT d.domain)
FROM domains d
LEFT JOIN company_enrichment e USING (domain)
WHERE d.domain IS NOT NULL AND NOT list_contains($free_mail, d.domain) AND {stale}
  AND NOT {suppressed_domain}
"""

# Raw answers past their retention (the enrichment assets' retention pass clears them), and
# the latest day with contacts, for a run to do it.
_EXPIRED_RAW = f"""
SELECT
    (SELECT count(*) FROM person_enrichment WHERE {EXPIRED_RAW})
    + (SELECT count(*) FROM company_enrichment WHERE {EXPIRED_RAW}),
    (SELECT max(partition_date) FROM clean_contacts)
"""

# The days the clean_contacts rebuild would rebuild.
_UNBUILT_DAYS = f"SELECT list(partition_date) FROM ({unbuilt_days_sql()})"


def refresh_needs(
    con: duckdb.DuckDBPyConnection, now: datetime, freshness: Freshness, raw_retention_days: int
) -> RefreshNeeds:
    """Every day the enrichment job would do work on as of ``now`` (naive UTC)."""
    suppressed = suppressed_sql(con, clean_contact_keys_sql("c"))
    person_days, persons = con.execute(
        _STALE_PERSONS.format(
            stale=stale_condition("p", freshness, "person"), suppressed=suppressed
        ),
        {"now": now},
    ).fetchone()  # type: ignore[misc]
    company_days, companies = con.execute(
        _STALE_COMPANIES.format(
            domain=COMPANY_DOMAIN_SQL,
            stale=stale_condition("e", freshness, "company"),
            suppressed=suppressed,
            suppressed_domain=suppressed_sql(con, ["'domain:' || d.domain"]),
        ),
        {"now": now, "free_mail": sorted(FREE_MAIL_DOMAINS)},
    ).fetchone()  # type: ignore[misc]
    (unbuilt_days,) = con.execute(_UNBUILT_DAYS).fetchone()  # type: ignore[misc]
    expired_raw, latest_day = con.execute(
        _EXPIRED_RAW, {"now": now, "days": raw_retention_days}
    ).fetchone()  # type: ignore[misc]
    return RefreshNeeds(
        person_days=frozenset(person_days or ()),
        company_days=frozenset(company_days or ()),
        unbuilt_days=frozenset(unbuilt_days or ()),
        stale_persons=persons,
        stale_companies=companies,
        expired_raw=expired_raw,
        raw_days=frozenset([latest_day] if expired_raw and latest_day else []),
    )
