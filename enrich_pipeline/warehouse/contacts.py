"""From landed rows to clean contacts: per-row library checks (once per row, ever), then
validation, normalisation and deduplication for a partition window as set-based SQL.

Only days whose landed rows changed since they were last built are rebuilt: raw_contacts is
append-only, so a day's row count and highest ingest id say whether anything arrived."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import duckdb
import pandas as pd

from enrich_pipeline.normalise import FREE_MAIL_DOMAINS, normalise_email, normalise_phone
from enrich_pipeline.warehouse.connection import transaction
from enrich_pipeline.warehouse.identities import (
    LINKEDIN_PROFILE_PREFIX,
    landed_name_sql,
    linkedin_slug,
    name_identity_sql,
    slug_sql,
    website_domain,
    website_domain_sql,
)
from enrich_pipeline.warehouse.suppression import SUPPRESSED, suppressed_sql

# Bump when the validation or normalisation rules change, so every day is rebuilt once.
RULES_VERSION = 1


@dataclass(frozen=True)
class CleanReport:
    rows_in: int
    rows_checked: int
    days_rebuilt: int
    clean_contacts: int
    duplicates_merged: int
    quarantined: int
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    phones_dropped: int = 0


def unbuilt_days_sql(where: str = "") -> str:
    """Received days (``partition_date, landed_rows, max_ingest_id``) that ``clean_contacts``
    does not reflect yet: raw_contacts is append-only, so a day whose row count and highest
    ingest id are those it was last built from, under the current rules, needs no rebuild.
    ``where`` narrows the landed rows looked at."""
    return f"""
SELECT landed.*
FROM (
    SELECT CAST(received_at AS DATE) AS partition_date,
           count(*) AS landed_rows,
           max(ingest_id) AS max_ingest_id
    FROM raw_contacts
    {where}
    GROUP BY ALL
) landed
ANTI JOIN contact_builds b
    ON b.partition_date = landed.partition_date
    AND b.landed_rows = landed.landed_rows
    AND b.max_ingest_id = landed.max_ingest_id
    AND b.rules_version = {RULES_VERSION}
"""


_CHANGED_DAYS = "CREATE OR REPLACE TEMP TABLE changed_days AS " + unbuilt_days_sql(
    "WHERE received_at >= $start AND received_at < $end"
)


def check_new_rows(con: duckdb.DuckDBPyConnection, start: date, end: date, now: datetime) -> int:
    """Run the library checks (email syntax, phone parsing) on the window's landed rows that
    have never been checked, each distinct value once. Returns how many rows were checked."""
    pending = con.execute(
        """
        SELECT r.ingest_id, r.email, r.phone
        FROM raw_contacts r
        ANTI JOIN contact_checks c ON c.ingest_id = r.ingest_id
        WHERE r.received_at >= ? AND r.received_at < ?
        """,
        [start, end],
    ).df()
    if pending.empty:
        return 0
    emails = {v: normalise_email(v) for v in pending["email"].dropna().unique()}
    phones = {v: normalise_phone(v) for v in pending["phone"].dropna().unique()}
    no_answer: tuple[None, None] = (None, None)
    email_answers = pending["email"].map(lambda v: emails.get(v, no_answer))
    phone_answers = pending["phone"].map(lambda v: phones.get(v, no_answer))
    checks = pd.DataFrame(
        {
            "ingest_id": pending["ingest_id"],
            "email": email_answers.str[0],
            "email_error": email_answers.str[1],
            "phone": phone_answers.str[0],
            "phone_error": phone_answers.str[1],
        }
    )
    con.execute(
        """
        INSERT INTO contact_checks (ingest_id, email, email_error, phone, phone_error, checked_at)
        SELECT ingest_id, email, email_error, phone, phone_error, ? FROM checks
        """,
        [now],
    )
    return len(checks)


_NO_IDENTIFIER = (
    "no usable identifier: needs a valid email, a valid phone, a LinkedIn profile URL, "
    "or a name with a company"
)


# Window rows with everything derived that validation and dedupe need. Identity is the
# normalised email, else the E.164 phone, else the LinkedIn profile, else name + company.
_WINDOW_ROWS = rf"""
CREATE OR REPLACE TEMP TABLE window_rows AS
WITH derived AS (
    SELECT
        r.*,
        CAST(r.received_at AS DATE) AS partition_date,
        c.email AS email_norm,
        c.email_error,
        c.phone AS phone_e164,
        c.phone_error,
        {slug_sql("r.linkedin_url")} AS linkedin_slug,
        {landed_name_sql("r")} AS name_norm,
        {website_domain_sql("r.website")} AS website_domain
    FROM raw_contacts r
    JOIN contact_checks c USING (ingest_id)
    SEMI JOIN changed_days d ON d.partition_date = CAST(r.received_at AS DATE)
    WHERE r.received_at >= $start AND r.received_at < $end
), shaped AS (
    SELECT
        *,
        CASE WHEN linkedin_slug IS NOT NULL
            THEN '{LINKEDIN_PROFILE_PREFIX}' || linkedin_slug END AS linkedin_norm,
        coalesce(
            CASE WHEN NOT list_contains($free_mail, website_domain) THEN website_domain END,
            CASE WHEN NOT list_contains($free_mail, split_part(email_norm, '@', 2))
                THEN split_part(email_norm, '@', 2) END
        ) AS company_domain
    FROM derived
)
SELECT
    *,
    CASE
        WHEN email_error IS NOT NULL THEN 'email'
        WHEN email_norm IS NULL AND phone_e164 IS NULL AND linkedin_norm IS NULL
             AND NOT (name_norm IS NOT NULL AND coalesce(company_name, company_domain) IS NOT NULL)
            THEN CASE
                WHEN phone_error IS NOT NULL THEN 'phone'
                WHEN linkedin_url IS NOT NULL THEN 'linkedin_url'
                ELSE 'identifier' END
    END AS bad_field,
    CASE
        WHEN email_norm IS NOT NULL THEN 'email'
        WHEN phone_e164 IS NOT NULL THEN 'phone'
        WHEN linkedin_norm IS NOT NULL THEN 'social_url'
        ELSE 'name_company'
    END AS identity_type
FROM shaped
"""

_QUARANTINE = """
INSERT INTO quarantine (stage, ingest_id, source, source_file, source_row, partition_date,
                        field, reason, original, quarantined_at)
SELECT
    'validate', ingest_id, source, source_file, source_row, partition_date, bad_field,
    CASE bad_field
        WHEN 'email' THEN email_error
        WHEN 'phone' THEN phone_error || '; no other usable identifier'
        WHEN 'linkedin_url' THEN 'LinkedIn URL is not a profile URL (linkedin.com/in/...); '
                                 || 'no other usable identifier'
        ELSE $no_identifier
    END,
    to_json({
        'email': email, 'first_name': first_name, 'last_name': last_name,
        'full_name': full_name, 'phone': phone, 'company_name': company_name,
        'website': website, 'linkedin_url': linkedin_url, 'job_title': job_title,
        'city': city, 'state': state, 'country': country,
        'received_at': received_at
    }),
    $now
FROM window_rows
WHERE bad_field IS NOT NULL
"""

# Most recent non-empty value wins per field; ties broken by landing order. The source of
# each clean_contacts column from phone to country, in column order:
_LATEST_VALUES = ",\n    ".join(
    f"arg_max({value}, (received_at, ingest_id)) FILTER (WHERE {value} IS NOT NULL)"
    for value in (
        "phone_e164",
        "first_name",
        "last_name",
        "name_norm",
        "company_name",
        "company_domain",
        "website",
        "linkedin_norm",
        "job_title",
        "city",
        "state",
        "country",
    )
)
_CLEAN = f"""
INSERT INTO clean_contacts
SELECT
    partition_date,
    identity,
    any_value(identity_type),
    any_value(email_norm),
    {_LATEST_VALUES},
    string_agg(DISTINCT source, ', ' ORDER BY source),
    count(*),
    min(received_at),
    max(received_at),
    $now
FROM (
    SELECT
        *,
        CASE identity_type
            WHEN 'email' THEN email_norm
            WHEN 'phone' THEN 'phone:' || phone_e164
            WHEN 'social_url' THEN 'social:' || linkedin_slug
            ELSE {name_identity_sql("name_norm", "coalesce(company_name, company_domain)")}
        END AS identity
    FROM window_rows
    WHERE bad_field IS NULL
)
GROUP BY partition_date, identity
"""


def clean_contact(landed: Mapping[str, str | None], received_at: datetime) -> dict[str, Any] | None:
    """The ``clean_contacts`` row one landed lead (its landed values, by column) makes on its
    own, for a lead with a valid email; None for any other. The window's SQL in Python, for an
    answer that cannot wait for a rebuild; a test holds the two to the same rows."""
    email = normalise_email(landed.get("email"))[0]
    if email is None:
        return None
    website = website_domain(landed.get("website"))
    slug = linkedin_slug(landed.get("linkedin_url"))
    email_domain = email.partition("@")[2]
    return {
        "partition_date": received_at.date(),
        "identity": email,
        "identity_type": "email",
        "email": email,
        "phone": normalise_phone(landed.get("phone"))[0],
        **{column: landed.get(column) for column in ("first_name", "last_name", "company_name")},
        "company_domain": next(
            (d for d in (website, email_domain) if d and d not in FREE_MAIL_DOMAINS), None
        ),
        "website": landed.get("website"),
        "linkedin_url": None if slug is None else LINKEDIN_PROFILE_PREFIX + slug,
        **{column: landed.get(column) for column in ("job_title", "city", "state", "country")},
        "last_received_at": received_at,
    }


def rebuild_clean_contacts(
    con: duckdb.DuckDBPyConnection, start: date, end: date, now: datetime
) -> CleanReport:
    """Validate, normalise and dedupe the window's changed days into ``clean_contacts``,
    quarantining unusable rows: delete-then-insert per day, in one transaction, so re-running
    is idempotent. The report describes the whole window."""
    con.execute(_CHANGED_DAYS, {"start": start, "end": end})
    days_rebuilt = con.execute("SELECT count(*) FROM changed_days").fetchone()[0]  # type: ignore[index]
    rows_checked = 0
    if days_rebuilt:
        rows_checked = check_new_rows(con, start, end, now)
        with transaction(con):
            con.execute(
                _WINDOW_ROWS, {"start": start, "end": end, "free_mail": sorted(FREE_MAIL_DOMAINS)}
            )
            _refuse_suppressed(con, start, end, now)
            for table in ("quarantine", "clean_contacts", "contact_builds"):
                stage = "stage = 'validate' AND " if table == "quarantine" else ""
                con.execute(
                    f"DELETE FROM {table} WHERE {stage}"
                    "partition_date IN (SELECT partition_date FROM changed_days)"
                )
            con.execute(_QUARANTINE, {"no_identifier": _NO_IDENTIFIER, "now": now})
            con.execute(_CLEAN, {"now": now})
            con.execute(
                "INSERT INTO contact_builds SELECT partition_date, landed_rows, max_ingest_id, "
                "$version, $now FROM changed_days",
                {"version": RULES_VERSION, "now": now},
            )
        con.execute("DROP TABLE window_rows")
    con.execute("DROP TABLE changed_days")
    return _window_report(con, start, end, rows_checked, days_rebuilt)


# A suppressed person's row that landing did not recognise (a phone written another way):
# refused as landing refuses, keeping no values, before anything is built from it.
_REFUSED = f"""
INSERT INTO quarantine (stage, source, source_file, source_row, partition_date, reason,
                        quarantined_at)
SELECT 'ingest', source, source_file, source_row, partition_date, '{SUPPRESSED}', $now
FROM window_rows WHERE refused
"""


def _refuse_suppressed(
    con: duckdb.DuckDBPyConnection, start: date, end: date, now: datetime
) -> None:
    """Take the window's rows of suppressed people out: quarantined with no values, deleted
    from ``raw_contacts``, and the days' landed counts taken again."""
    keys = [
        "email_norm",
        "'domain:' || split_part(email_norm, '@', 2)",
        "lower(nullif(regexp_extract(email, '<([^<>]+)>', 1), ''))",
        "'phone:' || phone_e164",
        "'social:' || linkedin_slug",
        name_identity_sql("name_norm", "coalesce(company_name, company_domain)"),
    ]
    suppressed = suppressed_sql(con, keys)
    if suppressed == "false":
        return
    con.execute("ALTER TABLE window_rows ADD COLUMN refused BOOLEAN DEFAULT false")
    con.execute(f"UPDATE window_rows SET refused = {suppressed}")
    if not con.execute("SELECT bool_or(refused) FROM window_rows").fetchone()[0]:  # type: ignore[index]
        return
    con.execute(_REFUSED, {"now": now})
    refused = "SELECT ingest_id FROM window_rows WHERE refused"
    for table in ("contact_checks", "raw_contacts"):
        con.execute(f"DELETE FROM {table} WHERE ingest_id IN ({refused})")
    con.execute("DELETE FROM window_rows WHERE refused")
    # What the day was built from is what is left of it.
    con.execute(
        """
        UPDATE changed_days d SET landed_rows = n, max_ingest_id = m
        FROM (
            SELECT CAST(received_at AS DATE) AS day, count(*) AS n, max(ingest_id) AS m
            FROM raw_contacts WHERE received_at >= $start AND received_at < $end GROUP BY ALL
        ) left_over
        WHERE left_over.day = d.partition_date
        """,
        {"start": start, "end": end},
    )


def _window_report(
    con: duckdb.DuckDBPyConnection, start: date, end: date, rows_checked: int, days_rebuilt: int
) -> CleanReport:
    window = {"start": start, "end": end}
    rows_in, phones_dropped = con.execute(
        """
        SELECT count(*),
               count(*) FILTER (WHERE c.phone_error IS NOT NULL AND q.ingest_id IS NULL)
        FROM raw_contacts r
        LEFT JOIN contact_checks c USING (ingest_id)
        LEFT JOIN quarantine q ON q.ingest_id = r.ingest_id AND q.stage = 'validate'
        WHERE r.received_at >= $start AND r.received_at < $end
        """,
        window,
    ).fetchone()  # type: ignore[misc]
    clean, clean_rows = con.execute(
        "SELECT count(*), coalesce(sum(row_count), 0) FROM clean_contacts "
        "WHERE partition_date >= $start AND partition_date < $end",
        window,
    ).fetchone()  # type: ignore[misc]
    reasons = dict(
        con.execute(
            "SELECT field, count(*) FROM quarantine WHERE stage = 'validate' "
            "AND partition_date >= $start AND partition_date < $end GROUP BY ALL ORDER BY ALL",
            window,
        ).fetchall()
    )
    return CleanReport(
        rows_in=rows_in,
        rows_checked=rows_checked,
        days_rebuilt=days_rebuilt,
        clean_contacts=clean,
        duplicates_merged=int(clean_rows) - clean,
        quarantined=sum(reasons.values()),
        quarantine_reasons=reasons,
        phones_dropped=phones_dropped,
    )
