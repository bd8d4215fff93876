"""``Prefer: wait=N`` (RFC 7240): a caller who would rather wait up to N seconds for the merged
CRM record than be told the lead is pending.

The write-back reads the records callers are waiting for straight after its merge, on the
connection it merged with, and they reach ``ReadyRecords`` (from the mover's process), so an
answer costs no extra warehouse connection and does not wait for the pass's deliveries."""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from enrich_pipeline.column_mapping import map_columns
from enrich_pipeline.normalise import normalise_email
from enrich_pipeline.warehouse.connection import WarehouseBusy, connect
from enrich_pipeline.warehouse.crm import crm_records

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


class ReadyRecords:
    """The merged records of the emails callers are waiting for, as the write-back publishes
    them. Thread-safe: requests want and take from the app's threads, the write-back publishes
    from its own."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._wanted: Counter[str] = Counter()
        self._records: dict[str, dict[str, Any]] = {}
        self._listeners: list[Callable[[Counter[str]], None]] = []

    def on_wanted(self, listener: Callable[[Counter[str]], None]) -> None:
        """``listener`` hears every change to the wanted emails, as counts to add (a write-back
        in another process keeps its own copy)."""
        self._listeners.append(listener)

    def wanted(self) -> list[str]:
        with self._lock:
            return list(self._wanted)

    def want(self, emails: Collection[str]) -> None:
        """Before the leads are journaled, so no merge of theirs can pass unseen."""
        with self._lock:
            self._wanted.update(emails)
        self._tell(Counter(emails))

    def unwant(self, emails: Collection[str]) -> None:
        with self._lock:
            self._wanted.subtract(emails)
            for email in set(emails):
                if self._wanted[email] <= 0:
                    del self._wanted[email]
                    self._records.pop(email, None)
        self._tell(Counter({email: -n for email, n in Counter(emails).items()}))

    def publish(self, records: Mapping[str, dict[str, Any]]) -> None:
        """Merged records by email; those still wanted are kept for their callers."""
        with self._lock:
            self._records.update(
                (email, record) for email, record in records.items() if email in self._wanted
            )
            self._lock.notify_all()

    def _tell(self, change: Counter[str]) -> None:
        if change:
            for listener in self._listeners:
                listener(change)

    def poke(self) -> None:
        """Something a waiter's ``give_up`` looks at has changed: let waiters look again."""
        with self._lock:
            self._lock.notify_all()

    def wait(
        self, emails: Sequence[str], timeout_s: float, give_up: Callable[[], bool]
    ) -> list[dict[str, Any]] | None:
        """The records of ``emails`` once every one is published, or None after ``timeout_s``
        or once ``give_up()`` (checked when published or poked) says they will not be."""
        with self._lock:
            self._lock.wait_for(
                lambda: all(email in self._records for email in emails) or give_up(),
                timeout_s,
            )
        return self.take(emails)

    def take(self, emails: Sequence[str]) -> list[dict[str, Any]] | None:
        """The records of ``emails`` in that order, or None unless every one was published."""
        with self._lock:
            return _in_order(self._records, emails)


def read_crm_records(
    warehouse_path: str | Path, emails: Sequence[str], *, lock_timeout_s: float
) -> list[dict[str, Any]] | None:
    """The records of ``emails`` in that order from the warehouse itself (a replayed request,
    merged before anyone waited), or None when one is missing or the warehouse stays held by
    another process for ``lock_timeout_s``."""
    try:
        with connect(warehouse_path, lock_timeout_s=lock_timeout_s) as con:
            found = crm_records(con, emails)
    except WarehouseBusy:
        return None
    return _in_order(found, emails)


def _in_order(
    records: Mapping[str, dict[str, Any]], emails: Sequence[str]
) -> list[dict[str, Any]] | None:
    """The records of ``emails`` in that order; None unless there is one for every email."""
    if any(email not in records for email in emails):
        return None
    return [records[email] for email in emails]
