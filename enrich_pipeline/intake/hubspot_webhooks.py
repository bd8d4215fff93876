"""HubSpot webhooks: contacts created in HubSpot, or given an email there, become leads; a
contact HubSpot erased for privacy (``contact.privacyDeletion``) is erased here too.

Acknowledge, then work. ``POST /v1/webhooks/hubspot`` checks HubSpot's signature, stores the
relevant events beside the journal (a SQLite file of their own, or a table in the journal's
Postgres database, where a redelivery to another replica is recognised too) and answers at
once: within HubSpot's 5 s whatever HubSpot's API or the warehouse is doing. A worker thread
then reads each contact back (events carry ids, not contacts), appends it to the intake journal
and only then marks its events done: at least once into the journal, exactly once through the
journal's idempotency key (with several replicas, each may read a contact back; one journals it).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from enrich_pipeline.destinations.hubspot import (
    MAX_BATCH_SIZE,
    TOKEN_SETTING,
    HubSpotAuthError,
    HubSpotClient,
)
from enrich_pipeline.intake.journal import IdempotencyConflict, Journal, durable_sqlite
from enrich_pipeline.intake.postgres_session import SharedSession, create_once, transaction
from enrich_pipeline.intake.requests import Problem, parse_json, read_body
from enrich_pipeline.intake.worker import BackgroundWorker
from enrich_pipeline.settings import IntakeSettings
from enrich_pipeline.settings_base import env_name
from enrich_pipeline.warehouse.postgres import is_postgres

CLIENT_SECRET_SETTING = env_name(IntakeSettings, "hubspot_client_secret")
WEBHOOK_PATH = "/v1/webhooks/hubspot"
SOURCE = "hubspot"
# HubSpot's own bound on a signed request's age; the same into the future covers clock skew.
MAX_TIMESTAMP_SKEW_MS = 5 * 60 * 1000
IDLE_S = 5.0
PRIVACY_DELETION = "contact.privacyDeletion"
# Done events are kept to recognise a redelivery; HubSpot stops retrying after 24 hours.
KEEP_DONE_S = 7 * 24 * 3600
# Short enough that HubSpot still hears from us within its 5 s when another process writes.
_BUSY_TIMEOUT_S = 2.0

# HubSpot property -> the lead key the landing maps (column_mapping). ``mobile_phone`` is an
# alias of phone ranked after ``phone``, so the landing takes it only when phone is blank.
_LEAD_KEYS = {
    "email": "email",
    "firstname": "first_name",
    "lastname": "last_name",
    "phone": "phone",
    "mobilephone": "mobile_phone",
    "company": "company_name",
    "website": "website",
    "jobtitle": "job_title",
    "city": "city",
    "state": "state",
    "country": "country",
    "hs_linkedin_url": "linkedin_url",
    "createdate": "created_at",
}
READ_PROPERTIES = tuple(_LEAD_KEYS)

# Percent-encodings HubSpot decodes in the URI before signing (any hex case, as RFC 3986 allows).
_SIGNED_DECODES = re.compile(r"%(3A|2F|3F|40|21|24|27|28|29|2A|2C|3B)", re.IGNORECASE)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_type  TEXT NOT NULL,
    object_id          TEXT NOT NULL,
    occurred_at        INTEGER NOT NULL,  -- ms since the epoch, HubSpot's clock
    property_name      TEXT NOT NULL,     -- '' for a creation
    received_at        REAL NOT NULL,     -- our clock, s since the epoch
    done_at            REAL,              -- NULL: the contact is still to be read back
    -- eventId is not unique and attemptNumber changes on redelivery: this is what repeats.
    UNIQUE (subscription_type, object_id, occurred_at, property_name)
);
CREATE INDEX IF NOT EXISTS events_pending ON events (done_at, occurred_at);
"""

# The same, in the journal's Postgres database.
_POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS intake_hubspot_events (
    id                 BIGSERIAL PRIMARY KEY,
    subscription_type  TEXT NOT NULL,
    object_id          TEXT NOT NULL,
    occurred_at        BIGINT NOT NULL,
    property_name      TEXT NOT NULL,
    received_at        DOUBLE PRECISION NOT NULL,
    done_at            DOUBLE PRECISION,
    UNIQUE (subscription_type, object_id, occurred_at, property_name)
);
CREATE INDEX IF NOT EXISTS intake_hubspot_events_pending
    ON intake_hubspot_events (done_at, occurred_at);
"""

log = logging.getLogger(__name__)


class HubSpotEventsReceived(BaseModel):
    """What ``POST /v1/webhooks/hubspot`` answers with 200."""

    received: int  # events in the request
    stored: int  # relevant ones not seen before: their contacts will be read back


@dataclass(frozen=True)
class _Event:
    subscription_type: str
    object_id: str
    occurred_at: int
    property_name: str


@dataclass(frozen=True)
class _PendingContact:
    object_id: str
    event_ids: list[int]
    occurred_at: int  # the latest of its pending events


# Erases the people of these HubSpot contact ids everywhere; raises when it could not.
Erase = Callable[[Sequence[str]], None]


class _EventStore:
    """Received events, durable before HubSpot hears 200. Thread-safe: one connection, one
    lock, held only for single statements (never while HubSpot or the journal is called)."""

    def __init__(self, path: str | Path, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        # A stored event has reached the disk when add() returns.
        self._con = durable_sqlite(path, busy_timeout_s=_BUSY_TIMEOUT_S)
        self._con.executescript(_SCHEMA)

    def add(self, events: Sequence[_Event]) -> int:
        """Store the events not stored before; returns how many were new."""
        rows = [
            (e.subscription_type, e.object_id, e.occurred_at, e.property_name, self._clock())
            for e in events
        ]
        with self._lock, self._con:
            before = self._con.total_changes
            self._con.executemany(
                "INSERT OR IGNORE INTO events (subscription_type, object_id, occurred_at, "
                "property_name, received_at) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            return self._con.total_changes - before

    def pending(self, limit: int, *, erasures: bool = False) -> list[_PendingContact]:
        """Up to ``limit`` contacts with events to handle, the one with the oldest event first:
        with ``erasures`` those with a privacy deletion among them, else the others (never read
        back: a contact erased in HubSpot is not landed again)."""
        with self._lock:
            rows = self._con.execute(
                "SELECT object_id, json_group_array(id), max(occurred_at) FROM events "
                "WHERE done_at IS NULL GROUP BY object_id "
                "HAVING max(subscription_type = ?) = ? "
                "ORDER BY min(occurred_at), min(id) LIMIT ?",
                [PRIVACY_DELETION, erasures, limit],
            ).fetchall()
        return [_PendingContact(obj, json.loads(ids), last) for obj, ids, last in rows]

    def mark_done(self, event_ids: Sequence[int]) -> None:
        now = self._clock()
        with self._lock, self._con:
            self._con.executemany(
                "UPDATE events SET done_at = ? WHERE id = ?", [(now, i) for i in event_ids]
            )
            self._con.execute("DELETE FROM events WHERE done_at < ?", [now - KEEP_DONE_S])


class _PostgresEventStore:
    """``_EventStore`` in the journal's Postgres database, shared by every replica: HubSpot's
    redelivery of an event to another replica than the first is stored once, and a worker on
    any replica may read its contact back."""

    def __init__(self, location: str | Path, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._session = SharedSession(location, lock_timeout_s=_BUSY_TIMEOUT_S)
        create_once(self._session, "intake_hubspot_events", _POSTGRES_SCHEMA)

    def add(self, events: Sequence[_Event]) -> int:
        with self._session.cursor() as cur:
            cur.execute(
                "INSERT INTO intake_hubspot_events (subscription_type, object_id, occurred_at, "
                "property_name, received_at) "
                "SELECT *, %s FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[]) "
                "ON CONFLICT DO NOTHING",
                (
                    self._clock(),
                    [e.subscription_type for e in events],
                    [e.object_id for e in events],
                    [e.occurred_at for e in events],
                    [e.property_name for e in events],
                ),
            )
            return int(cur.rowcount)

    def pending(self, limit: int, *, erasures: bool = False) -> list[_PendingContact]:
        with self._session.cursor() as cur:
            cur.execute(
                "SELECT object_id, array_agg(id ORDER BY id), max(occurred_at) "
                "FROM intake_hubspot_events WHERE done_at IS NULL GROUP BY object_id "
                "HAVING bool_or(subscription_type = %s) = %s "
                "ORDER BY min(occurred_at), min(id) LIMIT %s",
                (PRIVACY_DELETION, erasures, limit),
            )
            return [_PendingContact(obj, list(ids), int(last)) for obj, ids, last in cur]

    def mark_done(self, event_ids: Sequence[int]) -> None:
        now = self._clock()
        with self._session.cursor() as cur, transaction(cur):
            cur.execute(
                "UPDATE intake_hubspot_events SET done_at = %s WHERE id = ANY(%s)",
                (now, list(event_ids)),
            )
            cur.execute(
                "DELETE FROM intake_hubspot_events WHERE done_at < %s", (now - KEEP_DONE_S,)
            )


def events_location(journal: str | Path) -> str | Path:
    """Where received events wait, beside the journal at ``journal`` (a ``journal_location``):
    in its Postgres database, or in a file next to its file."""
    return journal if is_postgres(journal) else Path(journal).with_name("hubspot_events.sqlite3")


class HubSpotWebhookReceiver:
    """``POST /v1/webhooks/hubspot`` and the worker reading its contacts back; an
    ``app.Receiver``. ``hubspot`` builds a client for the read-back (None: no token set, so
    events are stored and wait); ``wake`` tells the journal's mover there is work."""

    def __init__(
        self,
        journal: Journal,
        *,
        client_secret: str | None,
        events_path: str | Path,
        hubspot: Callable[[], HubSpotClient] | None,
        wake: Callable[[], None],
        erase: Erase | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``erase``: what a privacy deletion does (None: those events are kept and wait)."""
        self._journal = journal
        self._secret = client_secret
        self._events = (
            _PostgresEventStore(events_path, clock)
            if is_postgres(events_path)
            else _EventStore(events_path, clock)
        )
        self._hubspot = hubspot
        self._wake_mover = wake
        self._erase = erase
        self._clock = clock
        self._worker = BackgroundWorker("hubspot-read-back", self._pass, idle_s=IDLE_S)
        self._waiting_because: str | None = None
        self.router = APIRouter()
        self.router.add_api_route(
            WEBHOOK_PATH,
            self._receive,
            methods=["POST"],
            response_model=HubSpotEventsReceived,
            summary="HubSpot contact events (webhook subscription, signature v3)",
        )

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()

    def process_pending(self) -> int:
        """Erase every contact HubSpot erased, then read back every other contact with pending
        events and journal it; returns how many contacts were journaled. A failure leaves the
        rest pending for the next pass."""
        self._erase_pending()
        if self._hubspot is None:
            if self._events.pending(limit=1):
                self._waiting(f"set {TOKEN_SETTING} so their contacts can be read back")
            return 0
        journaled = asyncio.run(self._read_back(self._hubspot))
        if journaled:
            self._wake_mover()
        return journaled

    def _erase_pending(self) -> None:
        while batch := self._events.pending(MAX_BATCH_SIZE, erasures=True):
            if self._erase is None:
                self._waiting("privacy deletions are kept: this service erases nothing")
                return
            self._erase([contact.object_id for contact in batch])
            self._events.mark_done([i for contact in batch for i in contact.event_ids])
            log.info("HubSpot privacy deletions: %d contacts erased here too", len(batch))

    async def _receive(self, request: Request) -> HubSpotEventsReceived:
        """Events of HubSpot's contact subscriptions, stored before the answer; the contacts
        are read back from HubSpot and landed afterwards."""
        if self._secret is None:
            raise Problem(503, f"HubSpot webhooks are not set up: set {CLIENT_SECRET_SETTING}")
        body = await read_body(request)
        _verify(request, body, self._secret, now_ms=self._clock() * 1000)
        parsed = parse_json(body)
        if not isinstance(parsed, list) or not all(isinstance(e, Mapping) for e in parsed):
            raise Problem(422, "expected a JSON array of event objects")
        # No bound on the count: HubSpot sends at most 100 (and read_body caps the size), and
        # refusing a signed batch would only lose HubSpot's events.
        events = [event for raw in parsed if (event := _relevant(raw)) is not None]
        stored = await run_in_threadpool(self._events.add, events) if events else 0
        if stored:
            self._worker.wake()
        return HubSpotEventsReceived(received=len(parsed), stored=stored)

    async def _read_back(self, hubspot: Callable[[], HubSpotClient]) -> int:
        journaled = 0
        async with hubspot() as client:
            while batch := self._events.pending(MAX_BATCH_SIZE):
                ids = [contact.object_id for contact in batch]
                try:
                    found = await client.read_contacts(ids, READ_PROPERTIES)
                except HubSpotAuthError as exc:
                    self._waiting(str(exc))  # names the token setting and the scope to fix
                    return journaled
                except httpx.HTTPError as exc:
                    self._waiting(f"HubSpot could not be read ({type(exc).__name__}: {exc})")
                    return journaled
                self._waiting_because = None
                for contact in batch:
                    if contact.object_id in found:
                        journaled += self._journal_contact(contact, found[contact.object_id])
                # Only now: a crash before this line reads them again, and the idempotency
                # key keeps what was already journaled from landing twice.
                self._events.mark_done([i for contact in batch for i in contact.event_ids])
                log.info(
                    "HubSpot events: %d contacts read back, %d no longer in HubSpot (skipped)",
                    len(found),
                    len(batch) - len(found),
                )
        return journaled

    def _journal_contact(self, contact: _PendingContact, properties: Mapping[str, Any]) -> bool:
        """Append one contact; False when its key was journaled before (nothing written)."""
        lead = {
            key: value
            for name, key in _LEAD_KEYS.items()
            if isinstance(value := properties.get(name), str) and value.strip()
        }
        try:
            accepted = self._journal.append(
                [lead],
                source=SOURCE,
                received_at=datetime.fromtimestamp(self._clock(), UTC),
                # The same event re-delivered or re-processed lands once.
                idempotency_key=f"hubspot:{contact.object_id}:{contact.occurred_at}",
            )
        except IdempotencyConflict:
            # Journaled by an earlier pass; the contact has changed in HubSpot since.
            return False
        return not accepted.replayed

    def _waiting(self, reason: str) -> None:
        # Said once when it starts (or changes), not every few seconds while it lasts.
        if reason != self._waiting_because:
            log.warning("HubSpot events are kept and wait: %s", reason)
        self._waiting_because = reason

    def _pass(self) -> None:
        try:
            self.process_pending()
        except Exception:
            log.exception("reading HubSpot contacts back failed; their events stay pending")


def _relevant(raw: Mapping[str, Any]) -> _Event | None:
    """The event to store, or None when it is not one we land.

    A privacy deletion is kept, to erase the person here too; a plain ``contact.deletion`` is
    not an erasure request (the contact may be restored) and is ignored. An email change
    marked ``INTEGRATION`` is skipped: that is how changes by apps appear, our own upserts
    among them, so our write-back does not come back in. A loop this misses cannot repeat
    anyway: a contact landed again costs no look-up (its enrichment is fresh) and no push (its
    fingerprint is unchanged). Creations are all kept, since a form
    tool's integration creating a contact is exactly a lead we want.
    """
    kind = raw.get("subscriptionType")
    property_name = ""
    if kind == "contact.propertyChange":
        if raw.get("propertyName") != "email" or raw.get("changeSource") == "INTEGRATION":
            return None
        property_name = "email"
    elif kind not in ("contact.creation", PRIVACY_DELETION):
        return None
    object_id, occurred_at = raw.get("objectId"), raw.get("occurredAt")
    if not isinstance(object_id, int | str) or not isinstance(occurred_at, int):
        return None
    return _Event(kind, str(object_id), occurred_at, property_name)


def _verify(request: Request, body: bytes, secret: str, *, now_ms: float) -> None:
    """HubSpot's signature v3, or 401. Messages never carry the secret or the signature."""
    signature = request.headers.get("x-hubspot-signature-v3")
    timestamp = request.headers.get("x-hubspot-request-timestamp", "")
    if not signature or not timestamp.isascii() or not timestamp.isdigit():
        raise Problem(401, "X-HubSpot-Signature-v3 and X-HubSpot-Request-Timestamp are required")
    if abs(now_ms - int(timestamp)) > MAX_TIMESTAMP_SKEW_MS:
        raise Problem(401, "X-HubSpot-Request-Timestamp is more than 5 minutes off")
    # The URL as this app sees it: behind a proxy, the server must pass on the public scheme
    # and host (uvicorn --proxy-headers), or no signature matches.
    uri = _SIGNED_DECODES.sub(lambda m: bytes.fromhex(m[1]).decode(), str(request.url))
    signed = request.method.encode() + uri.encode() + body + timestamp.encode()
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    if not hmac.compare_digest(base64.b64encode(digest), signature.encode()):
        raise Problem(401, "X-HubSpot-Signature-v3 does not match")
