"""One CRM-ready record per normalised email: lead + person + company, merged in SQL by the
merge policy. Where the records go from here is ``enrich_pipeline.destinations``."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import duckdb

from enrich_pipeline.merge_policy import (
    DEFAULT_POLICY,
    MergePolicy,
    merge_one,
    provenance_sql,
    value_sql,
)
from enrich_pipeline.provider.models import PERSON_FIELDS
from enrich_pipeline.warehouse.connection import transaction
from enrich_pipeline.warehouse.enrichment import COMPANY_DOMAIN_SQL, placeholders
from enrich_pipeline.warehouse.suppression import (
    clean_contact_keys_sql,
    crm_record_keys_sql,
    suppressed_sql,
)


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
# A suppressed person makes no record, so no destination is sent one: every lead of an email
# one of whose leads is suppressed (by its phone, say) is left out.
_LEADS = f"""
CREATE OR REPLACE TEMP TABLE crm_leads AS
WITH leads AS (
SELECT
    c.*,
    p.status AS p_status,
    p.enriched_at AS p_enriched_at,
    {", ".join(f"p.{column} AS person_{column}" for column in _PERSON_COLUMNS)},
    coalesce(c.email, CASE WHEN p.status = 'matched' THEN lower(trim(p.work_email)) END)
        AS crm_email,
    jc.job_changed_at,
    -- A job change is stored with the profile that revealed it, so p.enriched_at covers it.
    greatest(c.built_at, p.enriched_at, co.enriched_at) AS inputs_changed_at,
    {{suppressed}} AS suppressed
FROM clean_contacts c
LEFT JOIN person_enrichment p USING (identity)
LEFT JOIN (
    SELECT identity, max(detected_at) AS job_changed_at FROM job_changes GROUP BY identity
) jc USING (identity)
LEFT JOIN company_enrichment co ON co.domain = {COMPANY_DOMAIN_SQL}
)
SELECT * EXCLUDE (suppressed) FROM leads {{unsuppressed}}
"""
_UNSUPPRESSED = """
WHERE NOT suppressed
  AND (crm_email IS NULL
       OR crm_email NOT IN (SELECT crm_email FROM leads WHERE suppressed AND crm_email IS NOT NULL))
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
# identity's first, then the most recent, then by identity: answers stored together tie on
# time), and the matched company; then the merge policy.
_INPUTS = """
WITH grouped AS (
    SELECT
        l.crm_email AS email,
        bool_or(l.email IS NULL) AND NOT bool_or(l.email IS NOT NULL) AS email_from_enrichment,
        max(l.partition_date) AS partition_date,
        max(l.last_received_at) AS lead_received_at,
        {lead_values},
        {person_values},
        arg_max(l.p_status, (l.identity_type = 'email', l.p_enriched_at, l.identity))
            AS person_status,
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
        f"arg_max(l.person_{c}, (l.identity_type = 'email', l.p_enriched_at, l.identity)) "
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
    keys = [*clean_contact_keys_sql("c"), "lower(trim(p.work_email))"]
    suppressed = suppressed_sql(con, keys)
    # With nobody suppressed, no filter: the leads are then not materialised twice.
    filtered = "" if suppressed == "false" else _UNSUPPRESSED
    con.execute(_LEADS.format(suppressed=suppressed, unsuppressed=filtered))
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
    # A record merged before its person was suppressed is not given out.
    found = con.execute(
        f"""
        SELECT * EXCLUDE (partition_date, merge_policy)
        FROM crm_contacts c WHERE email IN (SELECT unnest($emails))
          AND NOT {suppressed_sql(con, crm_record_keys_sql("c"))}
        """,
        {"emails": list(emails)},
    )
    columns = [column[0] for column in found.description]
    records = {}
    for row in found.fetchall():
        record = dict(zip(columns, row, strict=True))
        record["provenance"] = json.loads(record["provenance"] or "{}")
        records[record["email"]] = _json_ready(record)
    return records


def _json_ready(record: Mapping[str, Any]) -> dict[str, Any]:
    """Dates and timestamps as ISO text, the rest as it is."""
    return {
        key: value.isoformat() if hasattr(value, "isoformat") else value
        for key, value in record.items()
    }


# What the merge reads of each email's leads, persons and companies, for
# ``preview_crm_records``: read by key, each planned in well under a millisecond.
_PREVIEW_LEAD_COLUMNS = (
    "partition_date",
    "identity",
    "identity_type",
    "last_received_at",
    *_LEAD_COLUMNS,
)
_PREVIEW_PERSON_COLUMNS = ("identity", "status", "enriched_at", *_PERSON_COLUMNS)


def preview_crm_records(
    con: duckdb.DuckDBPyConnection,
    contacts: Sequence[Mapping[str, Any]],
    now: datetime,
    policy: MergePolicy = DEFAULT_POLICY,
) -> dict[str, dict[str, Any]]:
    """The CRM records, as ``crm_records`` gives them, that the merge will make once the leads
    of ``contacts`` (``clean_contact`` rows, email identities, not landed yet) are landed,
    rebuilt and merged: the set-based merge done in Python for these emails, from a few point
    reads. For an answer that cannot wait for a pass (tens of milliseconds of query planning
    each); a test holds the two to the same records."""
    emails = list(dict.fromkeys(contact["email"] for contact in contacts))
    leads: dict[tuple[date, str], dict[str, Any]] = {}
    # Email leads by their address; phone, LinkedIn and name leads by the work email their
    # matched person names.
    for lead in _rows(con, "clean_contacts", _PREVIEW_LEAD_COLUMNS, "email", emails):
        leads[lead["partition_date"], lead["identity"]] = lead | {"crm_email": lead["identity"]}
    joined = dict(
        _by_keys(
            con,
            "SELECT identity, lower(trim(work_email)) FROM person_enrichment "
            "WHERE status = 'matched' AND identity_type <> 'email' "
            "AND lower(trim(work_email)) IN ({keys})",
            emails,
        )
    )
    for lead in _rows(con, "clean_contacts", _PREVIEW_LEAD_COLUMNS, "identity", list(joined)):
        leads[lead["partition_date"], lead["identity"]] = lead | {
            "crm_email": joined[lead["identity"]]
        }
    for contact in contacts:
        # Rebuilt into its day's row of that identity, if there is one, as the latest lead.
        key = (contact["partition_date"], contact["identity"])
        old = leads.get(key, {})
        leads[key] = {
            **old,
            **{k: v for k, v in contact.items() if v is not None},
            "crm_email": contact["email"],
        }
    identities = sorted({lead["identity"] for lead in leads.values()})
    persons = {
        person["identity"]: person
        for person in _rows(
            con, "person_enrichment", _PREVIEW_PERSON_COLUMNS, "identity", identities
        )
    }
    job_changes = dict(
        _by_keys(
            con,
            "SELECT identity, max(detected_at) FROM job_changes "
            "WHERE identity IN ({keys}) GROUP BY identity",
            identities,
        )
    )
    inputs = {
        email: _merge_inputs(
            [lead for lead in leads.values() if lead["crm_email"] == email], persons, job_changes
        )
        for email in emails
    }
    domains = list(
        {
            d
            for i in inputs.values()
            if (d := i["person_company_domain"] or i["lead_company_domain"])
        }
    )
    companies = {
        domain: values
        for domain, *values in _by_keys(
            con,
            "SELECT domain, name, industry, employee_count, enriched_at FROM company_enrichment "
            "WHERE status = 'matched' AND domain IN ({keys})",
            domains,
        )
    }
    return {
        email: _preview_record(email, inputs[email], companies, now, policy) for email in emails
    }


def _rows(
    con: duckdb.DuckDBPyConnection,
    table: str,
    columns: Sequence[str],
    key: str,
    values: Sequence[str],
) -> list[dict[str, Any]]:
    found = _by_keys(
        con, f"SELECT {', '.join(columns)} FROM {table} WHERE {key} IN ({{keys}})", values
    )
    return [dict(zip(columns, row, strict=True)) for row in found]


def _by_keys(
    con: duckdb.DuckDBPyConnection, sql: str, keys: Sequence[str]
) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` with ``{keys}`` standing for the keys; none (and no query) for none."""
    if not keys:
        return []
    return con.execute(sql.format(keys=placeholders(keys)), list(keys)).fetchall()


def _merge_inputs(
    leads: list[dict[str, Any]],
    persons: Mapping[str, dict[str, Any]],
    job_changes: Mapping[str, datetime],
) -> dict[str, Any]:
    """``_INPUTS``'s ``grouped`` row for one email's leads."""
    # Latest lead first; for persons, the email identity's profile first, then the newest.
    by_received = sorted(leads, key=lambda lead: lead["last_received_at"], reverse=True)
    answered = [
        (lead["identity_type"] == "email", person["enriched_at"], lead["identity"], person)
        for lead in leads
        if (person := persons.get(lead["identity"])) is not None and person["status"] is not None
    ]
    answered.sort(key=lambda found: found[:3], reverse=True)
    matched = [person for *_, person in answered if person["status"] == "matched"]
    inputs: dict[str, Any] = {
        f"lead_{column}": next(
            (lead[column] for lead in by_received if lead.get(column) is not None), None
        )
        for column in _LEAD_COLUMNS
    }
    inputs |= {
        f"person_{column}": next(
            (person[column] for person in matched if person[column] is not None), None
        )
        for column in _PERSON_COLUMNS
    }
    changed = [job_changes[lead["identity"]] for lead in leads if lead["identity"] in job_changes]
    return inputs | {
        "lead_received_at": by_received[0]["last_received_at"],
        "person_status": answered[0][3]["status"] if answered else None,
        "person_enriched_at": max((found[1] for found in answered), default=None),
        "job_changed_at": max(changed, default=None),
        "lead_company_website": _website(inputs["lead_company_domain"]),
        "person_company_website": _website(inputs["person_company_domain"]),
    }


def _website(domain: str | None) -> str | None:
    return None if domain is None else f"https://{domain}"


def _preview_record(
    email: str,
    inputs: dict[str, Any],
    companies: Mapping[str, list[Any]],
    now: datetime,
    policy: MergePolicy,
) -> dict[str, Any]:
    name, industry, employee_count, enriched_at = companies.get(
        inputs["person_company_domain"] or inputs["lead_company_domain"], [None] * 4
    )
    inputs |= {
        "co_name": name,
        "co_industry": industry,
        "co_employee_count": employee_count,
        "co_enriched_at": enriched_at,
    }
    values, provenance = merge_one(policy, inputs)
    if values.get("employee_count") is not None:
        values["employee_count"] = int(values["employee_count"])  # a BIGINT column
    record = {
        "email": email,
        **values,
        "person_status": inputs["person_status"],
        "person_enriched_at": inputs["person_enriched_at"],
        "company_enriched_at": enriched_at,
        "updated_at": now,
        "job_changed_at": inputs["job_changed_at"],
        "provenance": {
            field: None
            if origin is None
            else origin | {"enriched_at": _json_time(origin["enriched_at"])}
            for field, origin in provenance.items()
        },
    }
    return _json_ready(record)


def _json_time(moment: datetime | None) -> str | None:
    """A timestamp as DuckDB's ``to_json`` writes it: no 'T', fraction without trailing zeros."""
    if moment is None:
        return None
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    return text + f".{moment.microsecond:06d}".rstrip("0") if moment.microsecond else text
