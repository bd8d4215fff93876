"""One CRM-ready record per normalised email: lead + person + company, merged in SQL by the
merge policy. Where the records go from here is ``enrich_pipeline.destinations``."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import duckdb

from enrich_pipeline.merge_policy import DEFAULT_POLICY, MergePolicy, provenance_sql, value_sql
from enrich_pipeline.provider.models import PERSON_FIELDS
from enrich_pipeline.warehouse.connection import transaction
from enrich_pipeline.warehouse.enrichment import COMPANY_DOMAIN_SQL


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


# The person profile columns the merge can read, as ``person_<column>`` in crm_leads: every
# stored field that can fill a CRM field (not the provider's id, the full name, the size band,
# nor the work email, which crm_email reads), and the match's confidence that gates them.
_PERSON_COLUMNS = (
    *(
        column
        for column in PERSON_FIELDS
        if column not in {"legion_id", "full_name", "company_size", "work_email"}
    ),
    "match_confidence",
)
_LEAD_COLUMNS = (
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

# Every clean contact, with its person answer and the email its CRM record is keyed by: the
# lead's own, else (for phone / LinkedIn / name leads) the work email the provider matched.
_LEADS = f"""
CREATE OR REPLACE TEMP TABLE crm_leads AS
SELECT
    c.*,
    p.status AS p_status,
    p.enriched_at AS p_enriched_at,
    {", ".join(f"p.{column} AS person_{column}" for column in _PERSON_COLUMNS)},
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
LEFT JOIN company_enrichment co ON co.domain = {COMPANY_DOMAIN_SQL}
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
WHERE k.email IS NULL
   OR l.changed_at > k.updated_at
   OR k.merge_policy IS DISTINCT FROM $policy
"""

# Per email: the latest non-empty lead value per field, the person answer (the email-keyed
# identity's first, then the most recent), and the matched company; then the merge policy.
_INPUTS = """
WITH grouped AS (
    SELECT
        l.crm_email AS email,
        bool_or(l.email IS NULL) AND NOT bool_or(l.email IS NOT NULL) AS email_from_enrichment,
        max(l.partition_date) AS partition_date,
        max(l.last_received_at) AS lead_received_at,
        {lead_values},
        {person_values},
        arg_max(l.p_status, (l.identity_type = 'email', l.p_enriched_at)) AS person_status,
        max(l.p_enriched_at) FILTER (WHERE l.p_status IS NOT NULL) AS person_enriched_at,
        max(l.job_changed_at) AS job_changed_at
    FROM crm_leads l
    SEMI JOIN dirty_emails d ON d.crm_email = l.crm_email
    GROUP BY l.crm_email
)
SELECT
    g.*,
    'https://' || g.lead_company_domain AS lead_company_website,
    'https://' || g.person_company_domain AS person_company_website,
    co.name AS co_name,
    co.industry AS co_industry,
    co.employee_count AS co_employee_count,
    co.enriched_at AS co_enriched_at
FROM grouped g
LEFT JOIN company_enrichment co
    ON co.domain = coalesce(g.person_company_domain, g.lead_company_domain)
    AND co.status = 'matched'
"""


def _inputs_sql() -> str:
    lead_values = ",\n        ".join(
        f"arg_max(l.{c}, l.last_received_at) FILTER (WHERE l.{c} IS NOT NULL) AS lead_{c}"
        for c in _LEAD_COLUMNS
    )
    person_values = ",\n        ".join(
        f"arg_max(l.person_{c}, (l.identity_type = 'email', l.p_enriched_at)) "
        f"FILTER (WHERE l.person_{c} IS NOT NULL AND l.p_status = 'matched') AS person_{c}"
        for c in _PERSON_COLUMNS
    )
    return _INPUTS.format(lead_values=lead_values, person_values=person_values)


def _merged_sql(policy: MergePolicy) -> str:
    values = ",\n    ".join(f"{value_sql(rule, policy)} AS {rule.field}" for rule in policy.rules)
    provenance = ", ".join(
        f"'{rule.field}': {provenance_sql(rule, policy)}" for rule in policy.rules
    )
    return f"""
CREATE OR REPLACE TEMP TABLE crm_merged AS
SELECT
    email,
    {values},
    to_json({{{provenance}}}) AS provenance,
    person_status,
    person_enriched_at,
    co_enriched_at AS company_enriched_at,
    partition_date,
    $now AS updated_at,
    job_changed_at,
    $policy AS merge_policy,
    email_from_enrichment
FROM ({_inputs_sql()})
"""


_CRM_COLUMNS = """
    email, first_name, last_name, phone, mobile_phone, job_title, company_name, website,
    city, state, country, industry, employee_count, linkedin_url, person_status,
    person_enriched_at, company_enriched_at, partition_date, updated_at, job_changed_at,
    seniority, job_function, provenance, merge_policy
"""


def merge_crm_contacts(
    con: duckdb.DuckDBPyConnection,
    start: date,
    end: date,
    now: datetime,
    policy: MergePolicy = DEFAULT_POLICY,
) -> MergeReport:
    """Rebuild the CRM record of every email the window touches whose inputs changed since
    it was merged, from all of that email's leads whichever partition they landed in:
    delete-then-insert by email. Records whose email no lead produces any more are removed."""
    window = {"start": start, "end": end}
    con.execute(_LEADS)
    con.execute(_WINDOW_EMAILS, window)
    con.execute(_DIRTY_EMAILS, {"policy": policy.fingerprint})
    con.execute(_merged_sql(policy), {"now": now, "policy": policy.fingerprint})
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
    with transaction(con):
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


def crm_records(
    con: duckdb.DuckDBPyConnection, emails: Collection[str]
) -> dict[str, dict[str, Any]]:
    """The merged CRM records of those ``emails`` that have one, as JSON-ready dicts (dates as
    ISO text) with their provenance, keyed by email."""
    if not emails:
        return {}
    found = con.execute(
        """
        SELECT * EXCLUDE (partition_date, merge_policy)
        FROM crm_contacts WHERE email IN (SELECT unnest($emails))
        """,
        {"emails": list(emails)},
    )
    columns = [column[0] for column in found.description]
    records = {}
    for row in found.fetchall():
        record = dict(zip(columns, row, strict=True))
        record["provenance"] = json.loads(record["provenance"] or "{}")
        records[record["email"]] = {
            key: value.isoformat() if hasattr(value, "isoformat") else value
            for key, value in record.items()
        }
    return records
