"""One CRM-ready record per normalised email: lead + person + company, merged in SQL, and the
import-ready CSV written from it atomically."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb

EXPORT_FILE_NAME = "crm_contacts.csv"

# HubSpot import labels (matched to contact properties by label), in export order.
HUBSPOT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("email", "Email"),
    ("first_name", "First Name"),
    ("last_name", "Last Name"),
    ("phone", "Phone Number"),
    ("mobile_phone", "Mobile Phone Number"),
    ("job_title", "Job Title"),
    ("company_name", "Company Name"),
    ("website", "Website URL"),
    ("city", "City"),
    ("state", "State/Region"),
    ("country", "Country/Region"),
    ("industry", "Industry"),
    ("employee_count", "Number of Employees"),
    ("linkedin_url", "LinkedIn URL"),
)
# Ours, after HubSpot's: in HubSpot this needs a custom contact property (date picker) with the
# same label before the import can map it.
CUSTOM_COLUMNS: tuple[tuple[str, str], ...] = (("CAST(job_changed_at AS DATE)", "Job Change Date"),)
# (SQL expression over crm_contacts, CSV header), in export order.
EXPORT_COLUMNS = HUBSPOT_COLUMNS + CUSTOM_COLUMNS


@dataclass(frozen=True)
class MergeReport:
    """About the emails the window touches. Only records whose inputs changed since they were
    last merged (a lead rebuilt, a person or company enriched since) are rebuilt."""

    records: int
    created: int
    updated: int
    unchanged: int
    removed: int
    from_enrichment_email: int

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.removed)


# Every clean contact, with its person answer and the email its CRM record is keyed by: the
# lead's own, else (for phone / LinkedIn / name leads) the work email the provider matched.
_LEADS = """
CREATE OR REPLACE TEMP TABLE crm_leads AS
SELECT
    c.*,
    p.status AS p_status,
    p.enriched_at AS p_enriched_at,
    p.first_name AS p_first_name,
    p.last_name AS p_last_name,
    p.job_title AS p_job_title,
    p.company_name AS p_company_name,
    p.company_domain AS p_company_domain,
    p.company_industry AS p_company_industry,
    p.city AS p_city,
    p.state AS p_state,
    p.country AS p_country,
    p.linkedin_url AS p_linkedin_url,
    p.mobile_phone AS p_mobile_phone,
    coalesce(c.email, CASE WHEN p.status = 'matched' THEN lower(trim(p.work_email)) END)
        AS crm_email,
    jc.job_changed_at,
    -- A job change is stored with the profile that revealed it, so p.enriched_at covers it.
    greatest(c.built_at, p.enriched_at, co.enriched_at) AS inputs_changed_at
FROM clean_contacts c
LEFT JOIN person_enrichment p USING (identity)
LEFT JOIN (
    SELECT identity, max(detected_at) AS job_changed_at FROM job_changes GROUP BY identity
) jc USING (identity)
LEFT JOIN company_enrichment co
    ON co.domain = coalesce(CASE WHEN p.status = 'matched' THEN p.company_domain END,
                            c.company_domain)
"""

_WINDOW_EMAILS = """
CREATE OR REPLACE TEMP TABLE window_emails AS
SELECT DISTINCT crm_email FROM crm_leads
WHERE partition_date >= $start AND partition_date < $end AND crm_email IS NOT NULL
"""

_DIRTY_EMAILS = """
CREATE OR REPLACE TEMP TABLE dirty_emails AS
SELECT w.crm_email
FROM window_emails w
LEFT JOIN crm_contacts k ON k.email = w.crm_email
LEFT JOIN (
    SELECT crm_email, max(inputs_changed_at) AS changed_at
    FROM crm_leads SEMI JOIN window_emails USING (crm_email)
    GROUP BY ALL
) l USING (crm_email)
WHERE k.email IS NULL OR l.changed_at > k.updated_at
"""

# The lead keeps what a person typed (name, phone) and fills what enrichment lacks;
# enrichment wins for the rest. The person answer preferred is the email-keyed one.
_MERGED = """
CREATE OR REPLACE TEMP TABLE crm_merged AS
WITH grouped AS (
    SELECT
        l.crm_email AS email,
        bool_or(l.email IS NULL) AND NOT bool_or(l.email IS NOT NULL) AS email_from_enrichment,
        max(l.partition_date) AS partition_date,
        {lead_fields},
        {person_fields},
        arg_max(l.p_status, (l.identity_type = 'email', l.p_enriched_at)) AS person_status,
        max(l.p_enriched_at) FILTER (WHERE l.p_status IS NOT NULL) AS person_enriched_at,
        max(l.job_changed_at) AS job_changed_at
    FROM crm_leads l
    SEMI JOIN dirty_emails d ON d.crm_email = l.crm_email
    GROUP BY l.crm_email
)
SELECT
    g.email,
    coalesce(g.first_name, g.p_first_name) AS first_name,
    coalesce(g.last_name, g.p_last_name) AS last_name,
    g.phone AS phone,
    g.p_mobile_phone AS mobile_phone,
    coalesce(g.p_job_title, g.job_title) AS job_title,
    coalesce(co.name, g.p_company_name, g.company_name) AS company_name,
    coalesce(g.website, 'https://' || coalesce(g.p_company_domain, g.company_domain)) AS website,
    coalesce(g.p_city, g.city) AS city,
    coalesce(g.p_state, g.state) AS state,
    coalesce(g.p_country, g.country) AS country,
    coalesce(co.industry, g.p_company_industry) AS industry,
    co.employee_count,
    coalesce(g.p_linkedin_url, g.linkedin_url) AS linkedin_url,
    g.person_status,
    g.person_enriched_at,
    co.enriched_at AS company_enriched_at,
    g.partition_date,
    $now AS updated_at,
    g.job_changed_at,
    g.email_from_enrichment
FROM grouped g
LEFT JOIN company_enrichment co
    ON co.domain = coalesce(g.p_company_domain, g.company_domain) AND co.status = 'matched'
"""

_LEAD_FIELDS = (
    "first_name",
    "last_name",
    "phone",
    "job_title",
    "company_name",
    "company_domain",
    "website",
    "city",
    "state",
    "country",
    "linkedin_url",
)
_PERSON_FIELDS = (
    "p_first_name",
    "p_last_name",
    "p_job_title",
    "p_company_name",
    "p_company_domain",
    "p_company_industry",
    "p_city",
    "p_state",
    "p_country",
    "p_linkedin_url",
    "p_mobile_phone",
)


def _latest(fields: tuple[str, ...], order: str, condition: str) -> str:
    return ",\n        ".join(
        f"arg_max(l.{f}, {order}) FILTER (WHERE l.{f} IS NOT NULL{condition}) AS {f}"
        for f in fields
    )


_MERGED_SQL = _MERGED.replace(
    "{lead_fields}", _latest(_LEAD_FIELDS, "l.last_received_at", "")
).replace(
    "{person_fields}",
    _latest(
        _PERSON_FIELDS,
        "(l.identity_type = 'email', l.p_enriched_at)",
        " AND l.p_status = 'matched'",
    ),
)

_CRM_COLUMNS = """
    email, first_name, last_name, phone, mobile_phone, job_title, company_name, website,
    city, state, country, industry, employee_count, linkedin_url, person_status,
    person_enriched_at, company_enriched_at, partition_date, updated_at, job_changed_at
"""


def merge_crm_contacts(
    con: duckdb.DuckDBPyConnection, start: date, end: date, now: datetime
) -> MergeReport:
    """Rebuild the CRM record of every email the window touches whose inputs changed since
    it was merged, from all of that email's leads whichever partition they landed in:
    delete-then-insert by email. Records whose email no lead produces any more are removed."""
    window = {"start": start, "end": end}
    con.execute(_LEADS)
    con.execute(_WINDOW_EMAILS, window)
    con.execute(_DIRTY_EMAILS)
    con.execute(_MERGED_SQL, {"now": now})
    records, dirty, existing, from_enrichment = con.execute(
        """
        SELECT
            (SELECT count(*) FROM window_emails),
            (SELECT count(*) FROM crm_merged),
            (SELECT count(*) FROM crm_merged SEMI JOIN crm_contacts USING (email)),
            (SELECT count(*) FROM (
                SELECT crm_email FROM crm_leads SEMI JOIN window_emails USING (crm_email)
                GROUP BY ALL HAVING bool_and(email IS NULL)))
        """
    ).fetchone()  # type: ignore[misc]
    con.execute("BEGIN TRANSACTION")
    try:
        removed = con.execute(
            """
            DELETE FROM crm_contacts
            WHERE partition_date >= $start AND partition_date < $end
              AND email NOT IN (SELECT crm_email FROM crm_leads WHERE crm_email IS NOT NULL)
            """,
            window,
        ).fetchone()[0]  # type: ignore[index]
        con.execute("DELETE FROM crm_contacts WHERE email IN (SELECT email FROM crm_merged)")
        con.execute(
            f"INSERT INTO crm_contacts ({_CRM_COLUMNS}) SELECT {_CRM_COLUMNS} FROM crm_merged"
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    for table in ("crm_leads", "window_emails", "dirty_emails", "crm_merged"):
        con.execute(f"DROP TABLE {table}")
    return MergeReport(
        records=records,
        created=dirty - existing,
        updated=existing,
        unchanged=records - dirty,
        removed=removed,
        from_enrichment_email=from_enrichment,
    )


def export_is_current(con: duckdb.DuckDBPyConnection, export_dir: str | Path) -> bool:
    """The file exists and nothing in ``crm_contacts`` was merged after it was written."""
    target = Path(export_dir) / EXPORT_FILE_NAME
    if not target.exists():
        return False
    written = datetime.fromtimestamp(target.stat().st_mtime, UTC).replace(tzinfo=None)
    last_merge = con.execute("SELECT max(updated_at) FROM crm_contacts").fetchone()[0]  # type: ignore[index]
    return last_merge is not None and last_merge < written


def export_crm_csv(con: duckdb.DuckDBPyConnection, export_dir: str | Path) -> tuple[Path, int]:
    """Write every CRM record to ``crm_contacts.csv`` with HubSpot import labels (then our own
    columns). Written to a temporary file and renamed into place, so a reader never sees half a
    file."""
    directory = Path(export_dir)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / EXPORT_FILE_NAME
    partial = directory / f".{EXPORT_FILE_NAME}.{os.getpid()}.tmp"
    select = ", ".join(f'{expression} AS "{label}"' for expression, label in EXPORT_COLUMNS)
    try:
        con.execute(
            f"COPY (SELECT {select} FROM crm_contacts ORDER BY email) "
            f"TO '{_sql_string(partial)}' (FORMAT csv, HEADER true)"
        )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    rows = con.execute("SELECT count(*) FROM crm_contacts").fetchone()[0]  # type: ignore[index]
    return target, rows


def _sql_string(path: Path) -> str:
    return str(path).replace("'", "''")
