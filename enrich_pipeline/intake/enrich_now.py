"""``Prefer: wait=N`` (RFC 7240): a caller who would rather wait up to N seconds for the merged
CRM record than be told the lead is pending."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from enrich_pipeline.column_mapping import map_columns
from enrich_pipeline.normalise import normalise_email
from enrich_pipeline.warehouse.connection import WarehouseBusy, connect

MAX_WAIT_S = 10.0
_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d+(?:\.\d+)?)\"?", re.IGNORECASE)


def preferred_wait(prefer: str | None) -> float | None:
    """Seconds from a ``Prefer`` header's ``wait`` preference, at most ``MAX_WAIT_S``; None when
    the caller did not ask to wait."""
    if not prefer or (found := _WAIT.search(prefer)) is None:
        return None
    return min(float(found.group(1)), MAX_WAIT_S)


def lead_email(lead: Mapping[str, Any]) -> str | None:
    """The lead's normalised email, as its CRM record is keyed; None without a usable one."""
    mapping = map_columns(list(lead), require_identity=False)
    for header in mapping.columns.get("email", ()):
        value = lead.get(header)
        if isinstance(value, str) and (email := normalise_email(value)[0]):
            return email
    return None


def crm_records(
    warehouse_path: str | Path, emails: Sequence[str], *, lock_timeout_s: float
) -> dict[str, dict[str, Any]] | None:
    """The merged CRM records of ``emails`` that exist, with their provenance; None when the
    warehouse stays held by another process for ``lock_timeout_s``."""
    try:
        with connect(warehouse_path, lock_timeout_s=lock_timeout_s) as con:
            found = con.execute(
                """
                SELECT * EXCLUDE (partition_date, merge_policy)
                FROM crm_contacts WHERE email IN (SELECT unnest($emails))
                """,
                {"emails": list(emails)},
            )
            columns = [column[0] for column in found.description]
            rows = found.fetchall()
    except WarehouseBusy:
        return None
    records = {}
    for row in rows:
        record = dict(zip(columns, row, strict=True))
        record["provenance"] = json.loads(record["provenance"] or "{}")
        records[record["email"]] = {
            key: value.isoformat() if hasattr(value, "isoformat") else value
            for key, value in record.items()
        }
    return records
