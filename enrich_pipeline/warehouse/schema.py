"""Warehouse tables. ``ensure_schema`` is idempotent and runs on every write connection.

No primary keys: DuckDB's ART indexes slow bulk loads and complicate delete-then-insert;
uniqueness is kept by the SQL that writes each table (and checked by tests).
"""

from __future__ import annotations

import re
from typing import Any

import duckdb

DDL = """
CREATE SEQUENCE IF NOT EXISTS raw_contacts_ingest_id START 1;
CREATE SEQUENCE IF NOT EXISTS quarantine_id START 1;

-- Landed rows, append-only, exactly as the source gave them (strings, untouched).
CREATE TABLE IF NOT EXISTS raw_contacts (
    ingest_id     BIGINT NOT NULL DEFAULT nextval('raw_contacts_ingest_id'),
    source        VARCHAR NOT NULL,
    source_file   VARCHAR,
    source_row    BIGINT,          -- 1-based data row in the source file
    received_at   TIMESTAMP NOT NULL,  -- UTC
    landed_at     TIMESTAMP NOT NULL,  -- UTC
    email         VARCHAR,
    first_name    VARCHAR,
    last_name     VARCHAR,
    full_name     VARCHAR,
    phone         VARCHAR,
    company_name  VARCHAR,
    website       VARCHAR,
    linkedin_url  VARCHAR,
    job_title     VARCHAR,
    city          VARCHAR,
    state         VARCHAR,
    country       VARCHAR
);

-- Every row we could not use, with the reason and the original values. Nothing is dropped.
CREATE TABLE IF NOT EXISTS quarantine (
    quarantine_id  BIGINT NOT NULL DEFAULT nextval('quarantine_id'),
    stage          VARCHAR NOT NULL,   -- 'ingest' (could not land) | 'validate' (asset)
    ingest_id      BIGINT,             -- set for stage 'validate'
    source         VARCHAR,
    source_file    VARCHAR,
    source_row     BIGINT,
    partition_date DATE,               -- received date (UTC) where known
    field          VARCHAR,
    reason         VARCHAR NOT NULL,
    original       JSON,
    quarantined_at TIMESTAMP NOT NULL
);

-- Library checks (email syntax, phone parsing) are per row; a landed row never changes, so
-- each is checked once and the answer kept here.
CREATE TABLE IF NOT EXISTS contact_checks (
    ingest_id     BIGINT NOT NULL,
    email         VARCHAR,   -- normalised, NULL when absent or invalid
    email_error   VARCHAR,
    phone         VARCHAR,   -- E.164, NULL when absent or unparseable
    phone_error   VARCHAR,
    checked_at    TIMESTAMP NOT NULL
);

-- One row per identity per partition: the validated, normalised, deduplicated lead.
CREATE TABLE IF NOT EXISTS clean_contacts (
    partition_date   DATE NOT NULL,
    identity         VARCHAR NOT NULL,  -- email, else 'phone:+E164', 'social:slug', 'name:...'
    identity_type    VARCHAR NOT NULL,  -- email | phone | social_url | name_company
    email            VARCHAR,
    phone            VARCHAR,
    first_name       VARCHAR,
    last_name        VARCHAR,
    full_name        VARCHAR,
    company_name     VARCHAR,
    company_domain   VARCHAR,
    website          VARCHAR,
    linkedin_url     VARCHAR,
    job_title        VARCHAR,
    city             VARCHAR,
    state            VARCHAR,
    country          VARCHAR,
    sources          VARCHAR,
    row_count        INTEGER NOT NULL,
    first_received_at TIMESTAMP NOT NULL,
    last_received_at  TIMESTAMP NOT NULL,
    built_at          TIMESTAMP NOT NULL
);

-- What each day of clean_contacts was built from. raw_contacts is append-only, so a day whose
-- landed row count and highest ingest id are unchanged needs no rebuild.
CREATE TABLE IF NOT EXISTS contact_builds (
    partition_date DATE NOT NULL,
    landed_rows    BIGINT NOT NULL,
    max_ingest_id  BIGINT NOT NULL,
    rules_version  INTEGER NOT NULL,
    built_at       TIMESTAMP NOT NULL
);

-- One row per identity. status: matched | no_match | error. Freshness is enriched_at.
CREATE TABLE IF NOT EXISTS person_enrichment (
    identity          VARCHAR NOT NULL,
    identity_type     VARCHAR NOT NULL,
    status            VARCHAR NOT NULL,
    enriched_at       TIMESTAMP NOT NULL,
    error             VARCHAR,
    match_confidence  VARCHAR,
    legion_id         VARCHAR,
    full_name         VARCHAR,
    first_name        VARCHAR,
    last_name         VARCHAR,
    job_title         VARCHAR,
    company_name      VARCHAR,
    company_domain    VARCHAR,
    company_industry  VARCHAR,
    company_size      VARCHAR,
    seniority_level   VARCHAR,
    job_function      VARCHAR,
    city              VARCHAR,
    state             VARCHAR,
    country           VARCHAR,
    linkedin_url      VARCHAR,
    work_email        VARCHAR,
    mobile_phone      VARCHAR,
    raw               JSON
);

-- One row per company domain, same pattern.
CREATE TABLE IF NOT EXISTS company_enrichment (
    domain            VARCHAR NOT NULL,
    status            VARCHAR NOT NULL,
    enriched_at       TIMESTAMP NOT NULL,
    error             VARCHAR,
    legion_id         VARCHAR,
    name              VARCHAR,
    industry          VARCHAR,
    company_type      VARCHAR,
    size              VARCHAR,
    founded           INTEGER,
    linkedin_url      VARCHAR,
    employee_count    BIGINT,
    raw               JSON
);

-- One CRM-ready record per normalised email.
CREATE TABLE IF NOT EXISTS crm_contacts (
    email               VARCHAR NOT NULL,
    first_name          VARCHAR,
    last_name           VARCHAR,
    phone               VARCHAR,
    mobile_phone        VARCHAR,
    job_title           VARCHAR,
    company_name        VARCHAR,
    website             VARCHAR,
    city                VARCHAR,
    state               VARCHAR,
    country             VARCHAR,
    industry            VARCHAR,
    employee_count      BIGINT,
    linkedin_url        VARCHAR,
    person_status       VARCHAR,
    person_enriched_at  TIMESTAMP,
    company_enriched_at TIMESTAMP,
    partition_date      DATE NOT NULL,  -- the latest partition that carried this email
    updated_at          TIMESTAMP NOT NULL,
    job_changed_at      TIMESTAMP,      -- latest job change detected for any of its identities
    seniority           VARCHAR,
    job_function        VARCHAR,
    provenance          JSON,           -- per field: source (lead/person/company), confidence, when
    merge_policy        VARCHAR         -- fingerprint of the merge policy that built the record
);

-- A refreshed profile that names a different employer or title than the matched profile it
-- replaces: one row per change, kept for good (the person row itself only holds the latest).
CREATE TABLE IF NOT EXISTS job_changes (
    identity            VARCHAR NOT NULL,
    email               VARCHAR,   -- the identity when it is an email, else the work email
    old_company         VARCHAR,   -- company name, else domain
    new_company         VARCHAR,
    old_company_domain  VARCHAR,
    new_company_domain  VARCHAR,
    old_title           VARCHAR,
    new_title           VARCHAR,
    detected_at         TIMESTAMP NOT NULL  -- when the refreshed profile was stored
);

-- People and domains never landed, looked up or pushed again: keyed hashes, never in clear
-- (warehouse/suppression.py).
CREATE TABLE IF NOT EXISTS suppression_list (
    key_hash  VARCHAR NOT NULL,  -- HMAC-SHA256 (hex) of the identifier's normalised text
    kind      VARCHAR NOT NULL,  -- email | phone | social | name | domain
    reason    VARCHAR NOT NULL,  -- erased | suppressed
    added_at  TIMESTAMP NOT NULL
);

-- One row per person erased (enrich-pipeline forget): what was removed where, and what each
-- CRM answered. No personal data: the person is their email's keyed hash.
CREATE TABLE IF NOT EXISTS erasures (
    erasure_id    VARCHAR NOT NULL,
    subject_hash  VARCHAR NOT NULL,  -- keyed hash of the normalised email
    requested_by  VARCHAR NOT NULL,  -- cli | hubspot privacy deletion
    erased_at     TIMESTAMP NOT NULL,
    rows_removed  JSON NOT NULL,     -- table -> rows
    crm_answers   JSON               -- destination -> erased | not_found | failed: ...
);

-- How far each intake journal has been landed: its entries up to last_seq are in raw_contacts
-- or quarantine. Written in the same transaction as those rows, so each entry lands once. The
-- key makes a second mover landing the same journal at the same time fail instead of doubling.
CREATE TABLE IF NOT EXISTS intake_progress (
    journal_id  VARCHAR PRIMARY KEY,
    last_seq    BIGINT NOT NULL,
    updated_at  TIMESTAMP NOT NULL
);
"""


# What each CRM destination last took of each record (warehouse/crm_sync.py).
SYNC_STATE_DDL = """
CREATE TABLE IF NOT EXISTS crm_sync_state (
    destination       VARCHAR NOT NULL,   -- 'file' | 'hubspot'
    email             VARCHAR NOT NULL,
    fingerprint       VARCHAR NOT NULL,   -- md5 of the properties last attempted
    status            VARCHAR NOT NULL,   -- 'sent' | 'failed'
    remote_id         VARCHAR,            -- the destination's id for the record, when it has one
    error             VARCHAR,            -- why the last attempt failed
    attempted_at      TIMESTAMP NOT NULL,
    sent_at           TIMESTAMP,          -- when the destination last took the record
    properties        VARCHAR NOT NULL,   -- the property names the fingerprint covers
    record_updated_at TIMESTAMP NOT NULL  -- crm_contacts.updated_at of the version fingerprinted
);
"""


# Columns added after a table first shipped, appended so positional inserts still line up.
# A warehouse made by an older version gains them on its next write connection.
ADDED_COLUMNS = """
ALTER TABLE clean_contacts ADD COLUMN IF NOT EXISTS built_at TIMESTAMP
    DEFAULT TIMESTAMP '1970-01-01';
ALTER TABLE crm_contacts ADD COLUMN IF NOT EXISTS job_changed_at TIMESTAMP;
ALTER TABLE crm_contacts ADD COLUMN IF NOT EXISTS seniority VARCHAR;
ALTER TABLE crm_contacts ADD COLUMN IF NOT EXISTS job_function VARCHAR;
ALTER TABLE crm_contacts ADD COLUMN IF NOT EXISTS provenance JSON;
ALTER TABLE crm_contacts ADD COLUMN IF NOT EXISTS merge_policy VARCHAR;
"""

# The suppression list's key (warehouse/suppression.py): a file beside a DuckDB warehouse, here
# a row every machine reads.
POSTGRES_ONLY_DDL = """
CREATE TABLE IF NOT EXISTS suppression_key (key_hex VARCHAR NOT NULL);
"""


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(DDL)
    con.execute(ADDED_COLUMNS)


def ensure_schema_natively(session: Any) -> None:
    """The same DDL on a Postgres warehouse, through a psycopg2 session (autocommit): every
    statement here is one both databases read. JSON columns are text there: DuckDB's postgres
    extension writes DuckDB's JSON as text, which a Postgres ``json`` column refuses."""
    with session.cursor() as cur:
        for statements in (DDL, ADDED_COLUMNS, SYNC_STATE_DDL, POSTGRES_ONLY_DDL):
            cur.execute(re.sub(r"\bJSON\b", "TEXT", statements))
