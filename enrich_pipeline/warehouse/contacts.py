"""From landed rows to clean contacts: per-row library checks (once per row, ever), then
validation, normalisation and deduplication for a partition window as set-based SQL."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

import duckdb
import pandas as pd

from enrich_pipeline.normalise import FREE_MAIL_DOMAINS, normalise_email, normalise_phone


@dataclass(frozen=True)
class CleanReport:
    rows_in: int
    rows_checked: int
    clean_contacts: int
    duplicates_merged: int
    quarantined: int
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    phones_dropped: int = 0


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
_WINDOW_ROWS = r"""
CREATE OR REPLACE TEMP TABLE window_rows AS
WITH derived AS (
    SELECT
        r.*,
        CAST(r.received_at AS DATE) AS partition_date,
        c.email AS email_norm,
        c.email_error,
        c.phone AS phone_e164,
        c.phone_error,
        nullif(regexp_extract(lower(r.linkedin_url), 'linkedin\.com/in/([^/?#\s]+)', 1), '')
            AS linkedin_slug,
        nullif(trim(coalesce(r.full_name, concat_ws(' ', r.first_name, r.last_name))), '')
            AS name_norm,
        nullif(regexp_extract(lower(trim(r.website)),
            '^(?:[a-z][a-z0-9+.-]*://)?(?:www\.)?([a-z0-9-]+(?:\.[a-z0-9-]+)+)', 1), '')
            AS website_domain
    FROM raw_contacts r
    JOIN contact_checks c USING (ingest_id)
    WHERE r.received_at >= $start AND r.received_at < $end
), shaped AS (
    SELECT
        *,
        CASE WHEN linkedin_slug IS NOT NULL
            THEN 'https://www.linkedin.com/in/' || linkedin_slug END AS linkedin_norm,
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

# Most recent non-empty value wins per field; ties broken by landing order.
_CLEAN = """
INSERT INTO clean_contacts
SELECT
    partition_date,
    identity,
    any_value(identity_type),
    any_value(email_norm),
    arg_max(phone_e164, (received_at, ingest_id)) FILTER (WHERE phone_e164 IS NOT NULL),
    arg_max(first_name, (received_at, ingest_id)) FILTER (WHERE first_name IS NOT NULL),
    arg_max(last_name, (received_at, ingest_id)) FILTER (WHERE last_name IS NOT NULL),
    arg_max(name_norm, (received_at, ingest_id)) FILTER (WHERE name_norm IS NOT NULL),
    arg_max(company_name, (received_at, ingest_id)) FILTER (WHERE company_name IS NOT NULL),
    arg_max(company_domain, (received_at, ingest_id)) FILTER (WHERE company_domain IS NOT NULL),
    arg_max(website, (received_at, ingest_id)) FILTER (WHERE website IS NOT NULL),
    arg_max(linkedin_norm, (received_at, ingest_id)) FILTER (WHERE linkedin_norm IS NOT NULL),
    arg_max(job_title, (received_at, ingest_id)) FILTER (WHERE job_title IS NOT NULL),
    arg_max(city, (received_at, ingest_id)) FILTER (WHERE city IS NOT NULL),
    arg_max(state, (received_at, ingest_id)) FILTER (WHERE state IS NOT NULL),
    arg_max(country, (received_at, ingest_id)) FILTER (WHERE country IS NOT NULL),
    string_agg(DISTINCT source, ', ' ORDER BY source),
    count(*),
    min(received_at),
    max(received_at)
FROM (
    SELECT
        *,
        CASE identity_type
            WHEN 'email' THEN email_norm
            WHEN 'phone' THEN 'phone:' || phone_e164
            WHEN 'social_url' THEN 'social:' || linkedin_slug
            ELSE 'name:' || lower(name_norm) || '|' || lower(coalesce(company_name, company_domain))
        END AS identity
    FROM window_rows
    WHERE bad_field IS NULL
)
GROUP BY partition_date, identity
"""


def rebuild_clean_contacts(
    con: duckdb.DuckDBPyConnection, start: date, end: date, now: datetime
) -> CleanReport:
    """Validate, normalise and dedupe the window's rows into ``clean_contacts``, quarantining
    unusable rows. Delete-then-insert per window, in one transaction: re-running is idempotent."""
    rows_checked = check_new_rows(con, start, end, now)
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            _WINDOW_ROWS, {"start": start, "end": end, "free_mail": sorted(FREE_MAIL_DOMAINS)}
        )
        con.execute(
            "DELETE FROM quarantine WHERE stage = 'validate' "
            "AND partition_date >= ? AND partition_date < ?",
            [start, end],
        )
        con.execute(_QUARANTINE, {"no_identifier": _NO_IDENTIFIER, "now": now})
        con.execute(
            "DELETE FROM clean_contacts WHERE partition_date >= ? AND partition_date < ?",
            [start, end],
        )
        con.execute(_CLEAN)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    rows_in, quarantined, phones_dropped = con.execute(
        """
        SELECT count(*), count(bad_field),
               count(*) FILTER (WHERE bad_field IS NULL AND phone_error IS NOT NULL)
        FROM window_rows
        """
    ).fetchone()  # type: ignore[misc]
    reasons = dict(
        con.execute(
            "SELECT bad_field, count(*) FROM window_rows WHERE bad_field IS NOT NULL "
            "GROUP BY ALL ORDER BY ALL"
        ).fetchall()
    )
    clean = con.execute(
        "SELECT count(*) FROM clean_contacts WHERE partition_date >= ? AND partition_date < ?",
        [start, end],
    ).fetchone()[0]  # type: ignore[index]
    con.execute("DROP TABLE window_rows")
    return CleanReport(
        rows_in=rows_in,
        rows_checked=rows_checked,
        clean_contacts=clean,
        duplicates_merged=rows_in - quarantined - clean,
        quarantined=quarantined,
        quarantine_reasons=reasons,
        phones_dropped=phones_dropped,
    )
