"""What each destination last received of every CRM record, so a run sends only what changed.

A destination receives a fixed list of properties per record (``SyncSpec``): SQL expressions over
``crm_contacts``. Its fingerprint is md5 over those values, computed in SQL. A record is pending
for a destination when it has no state there, its last attempt failed, or its fingerprint differs
from the one last sent. Hashing needs the whole row, so each state row also keeps which version
of the record it is of (``record_updated_at``: the record's ``updated_at`` then) and which
properties it covered: only records merged since, or whose property list changed, are hashed.
With nothing new a run costs one join, not a hash of every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import duckdb
import pyarrow as pa

from enrich_pipeline.warehouse.connection import transaction
from enrich_pipeline.warehouse.schema import SYNC_STATE_DDL
from enrich_pipeline.warehouse.suppression import crm_record_keys_sql, suppressed_sql

FILE = "file"
HUBSPOT = "hubspot"


# HubSpot's default contact property for each CRM column that has one. ``numemployees`` is a
# dropdown of employee-count bands on HubSpot contacts, so the count is sent as its band.
HUBSPOT_PROPERTIES: dict[str, str] = {
    "email": "email",
    "first_name": "firstname",
    "last_name": "lastname",
    "phone": "phone",
    "mobile_phone": "mobilephone",
    "job_title": "jobtitle",
    "company_name": "company",
    "website": "website",
    "city": "city",
    "state": "state",
    "country": "country",
    "industry": "industry",
    "employee_count": "numemployees",
    "linkedin_url": "hs_linkedin_url",
}
_EMPLOYEE_BAND = """CASE
    WHEN c.employee_count IS NULL OR c.employee_count < 1 THEN NULL
    WHEN c.employee_count <= 5 THEN '1-5'
    WHEN c.employee_count <= 25 THEN '5-25'
    WHEN c.employee_count <= 50 THEN '25-50'
    WHEN c.employee_count <= 100 THEN '50-100'
    WHEN c.employee_count <= 500 THEN '100-500'
    WHEN c.employee_count <= 1000 THEN '500-1000'
    ELSE '1000+' END"""


@dataclass(frozen=True)
class SyncSpec:
    """What one destination receives of each record: (property name, SQL expression over
    ``crm_contacts`` aliased ``c``) pairs."""

    destination: str
    properties: tuple[tuple[str, str], ...]

    @property
    def names(self) -> str:
        return ",".join(name for name, _ in self.properties)

    @property
    def fingerprint_sql(self) -> str:
        values = ", ".join(f"CAST({expression} AS VARCHAR)" for _, expression in self.properties)
        return f"md5(to_json([{values}]))"


def file_spec(columns: Sequence[str]) -> SyncSpec:
    """The file destination receives the exported columns as they are."""
    return SyncSpec(FILE, tuple((column, f'c."{column}"') for column in columns))


def hubspot_spec(columns: Sequence[str]) -> SyncSpec:
    """HubSpot receives, as text, each exported column that has a default contact property
    (``HUBSPOT_PROPERTIES``), always including email; the others are not sent."""
    wanted = ["email", *(column for column in columns if column != "email")]
    properties = []
    for column in wanted:
        name = HUBSPOT_PROPERTIES.get(column)
        if name is None:
            continue
        text = f"nullif(trim(CAST(c.{column} AS VARCHAR)), '')"
        properties.append((name, _EMPLOYEE_BAND if column == "employee_count" else text))
    return SyncSpec(HUBSPOT, tuple(properties))


@dataclass(frozen=True)
class PendingCounts:
    records: int  # in crm_contacts
    new: int  # no state for this destination
    changed: int  # sent before; what it would receive now differs
    retry: int  # the last attempt failed
    removed: int  # state for an email crm_contacts no longer holds

    @property
    def pending(self) -> int:
        return self.new + self.changed + self.retry

    @property
    def unchanged(self) -> int:
        return self.records - self.pending


@dataclass(frozen=True)
class PendingRecord:
    email: str
    values: dict[str, str | None]  # property name -> value
    fingerprint: str
    record_updated_at: datetime


@dataclass(frozen=True)
class SyncOutcome:
    email: str
    fingerprint: str
    record_updated_at: datetime
    sent: bool
    remote_id: str | None = None
    error: str | None = None


# Records without an up-to-date success for the destination; a join, no hash. After
# ``prepare_pending`` these are exactly the pending records. (An anti join rather than a LEFT JOIN
# filtered on NULLs: DuckDB 2.0.1 drops the LIMIT of the latter when the destination has no state.)
_CANDIDATES = """
crm_contacts c ANTI JOIN crm_sync_state s
    ON s.destination = $destination AND s.email = c.email AND s.status = 'sent'
    AND s.properties = $properties AND s.record_updated_at = c.updated_at
"""


def _params(spec: SyncSpec) -> dict[str, str]:
    return {"destination": spec.destination, "properties": spec.names}


def prepare_pending(con: duckdb.DuckDBPyConnection, spec: SyncSpec) -> PendingCounts:
    """Count what is pending for the destination. A record merged again since it was sent but
    whose properties came out the same is settled first (its state moves to the new version),
    so it is neither counted nor sent, and is not hashed again next run."""
    con.execute(SYNC_STATE_DDL)
    params = _params(spec)
    con.execute(
        f"""
        UPDATE crm_sync_state AS t
        SET record_updated_at = k.updated_at
        FROM (
            SELECT c.email, c.updated_at, {spec.fingerprint_sql} AS fingerprint
            FROM crm_contacts c
            JOIN crm_sync_state s ON s.destination = $destination AND s.email = c.email
            WHERE s.status = 'sent' AND s.properties = $properties
              AND s.record_updated_at <> c.updated_at
        ) k
        WHERE t.destination = $destination AND t.email = k.email
          AND t.fingerprint = k.fingerprint
        """,
        params,
    )
    records, new, retry, changed = con.execute(
        """
        SELECT
            count(*),
            count(*) FILTER (WHERE s.email IS NULL),
            count(*) FILTER (WHERE s.status = 'failed'),
            count(*) FILTER (
                WHERE s.status = 'sent'
                  AND (s.properties <> $properties OR s.record_updated_at <> c.updated_at)
            )
        FROM crm_contacts c
        LEFT JOIN crm_sync_state s ON s.destination = $destination AND s.email = c.email
        """,
        params,
    ).fetchone()  # type: ignore[misc]
    removed = con.execute(
        "SELECT count(*) FROM crm_sync_state s WHERE s.destination = $destination "
        "AND NOT EXISTS (SELECT 1 FROM crm_contacts c WHERE c.email = s.email)",
        {"destination": spec.destination},
    ).fetchone()[0]  # type: ignore[index]
    return PendingCounts(records, new, changed, retry, removed)


@dataclass(frozen=True)
class Waiting:
    """Records a destination does not hold yet: failed at their last attempt, or never sent."""

    failed: int
    never_sent: int

    @property
    def total(self) -> int:
        return self.failed + self.never_sent


def waiting_for(con: duckdb.DuckDBPyConnection, destination: str) -> Waiting:
    """What ``destination`` does not hold of the CRM records (changed records it holds an older
    version of are not counted: it has them)."""
    con.execute(SYNC_STATE_DDL)
    failed, never_sent = con.execute(
        """
        SELECT count(*) FILTER (WHERE s.status = 'failed'), count(*) FILTER (WHERE s.email IS NULL)
        FROM crm_contacts c
        LEFT JOIN crm_sync_state s ON s.destination = ? AND s.email = c.email
        """,
        [destination],
    ).fetchone()  # type: ignore[misc]
    return Waiting(failed=failed, never_sent=never_sent)


def read_pending(
    con: duckdb.DuckDBPyConnection, spec: SyncSpec, *, after: str = "", limit: int
) -> list[PendingRecord]:
    """Up to ``limit`` pending records with emails after ``after``, in email order (page with
    the last one's email); only these are hashed. Call ``prepare_pending`` first, or records
    merged again without a change are returned as well."""
    con.execute(SYNC_STATE_DDL)
    names = [name for name, _ in spec.properties]
    select = ", ".join(expression for _, expression in spec.properties)
    rows = con.execute(
        f"""
        SELECT c.email, c.updated_at, {spec.fingerprint_sql}, {select}
        FROM (
            SELECT c.* FROM {_CANDIDATES}
            WHERE c.email > $after AND NOT {suppressed_sql(con, crm_record_keys_sql("c"))}
            ORDER BY c.email LIMIT $limit
        ) c
        ORDER BY c.email
        """,
        {**_params(spec), "after": after, "limit": limit},
    ).fetchall()
    return [
        PendingRecord(
            email=email,
            values=dict(zip(names, values, strict=True)),
            fingerprint=fingerprint,
            record_updated_at=updated_at,
        )
        for email, updated_at, fingerprint, *values in rows
    ]


# One statement per batch of outcomes: a failure keeps the previous send's time and remote id.
_MERGE = """
MERGE INTO crm_sync_state AS t
USING ({source}) AS o
ON t.destination = $destination AND t.email = o.email
WHEN MATCHED THEN UPDATE SET
    fingerprint = o.fingerprint,
    status = o.status,
    remote_id = coalesce(o.remote_id, t.remote_id),
    error = o.error,
    attempted_at = $attempted_at,
    sent_at = CASE WHEN o.status = 'sent' THEN $attempted_at ELSE t.sent_at END,
    properties = $properties,
    record_updated_at = o.record_updated_at
WHEN NOT MATCHED THEN INSERT (
    destination, email, fingerprint, status, remote_id, error, attempted_at, sent_at,
    properties, record_updated_at
) VALUES (
    $destination, o.email, o.fingerprint, o.status, o.remote_id, o.error, $attempted_at,
    CASE WHEN o.status = 'sent' THEN $attempted_at END, $properties, o.record_updated_at
)
"""

_OUTCOMES_SCHEMA = pa.schema(
    [
        ("email", pa.string()),
        ("fingerprint", pa.string()),
        ("record_updated_at", pa.timestamp("us")),
        ("status", pa.string()),
        ("remote_id", pa.string()),
        ("error", pa.string()),
    ]
)


def record_outcomes(
    con: duckdb.DuckDBPyConnection,
    spec: SyncSpec,
    outcomes: Sequence[SyncOutcome],
    attempted_at: datetime,
) -> None:
    """Store what the destination did with each record, in one statement. A failed record stays
    pending, so the next run sends it again."""
    if not outcomes:
        return
    con.execute(SYNC_STATE_DDL)
    table = pa.Table.from_pylist(
        [
            {
                "email": o.email,
                "fingerprint": o.fingerprint,
                "record_updated_at": o.record_updated_at,
                "status": "sent" if o.sent else "failed",
                "remote_id": o.remote_id,
                "error": o.error,
            }
            for o in outcomes
        ],
        schema=_OUTCOMES_SCHEMA,
    )
    con.register("sync_outcomes", table)
    try:
        con.execute(
            _MERGE.format(source="SELECT * FROM sync_outcomes"),
            {**_params(spec), "attempted_at": attempted_at},
        )
    finally:
        con.unregister("sync_outcomes")


def record_full_export(
    con: duckdb.DuckDBPyConnection, spec: SyncSpec, attempted_at: datetime
) -> None:
    """The destination now holds exactly ``crm_contacts`` (a file rewritten from it): every
    pending record is sent, and the state of records no longer there is dropped."""
    con.execute(SYNC_STATE_DDL)
    params = {**_params(spec), "attempted_at": attempted_at}
    source = f"""
        SELECT c.email, {spec.fingerprint_sql} AS fingerprint, c.updated_at AS record_updated_at,
               'sent' AS status, NULL AS remote_id, NULL AS error
        FROM {_CANDIDATES}
    """
    with transaction(con):
        con.execute(_MERGE.format(source=source), params)
        con.execute(
            "DELETE FROM crm_sync_state s WHERE s.destination = $destination "
            "AND NOT EXISTS (SELECT 1 FROM crm_contacts c WHERE c.email = s.email)",
            {"destination": spec.destination},
        )
