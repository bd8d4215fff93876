"""The intake journal: accepted leads, durable on disk before the client hears 2xx.

SQLite in WAL mode with ``synchronous=FULL``: a commit has reached the disk when ``append``
returns, and appending never waits for the warehouse. Sequence numbers come from
``AUTOINCREMENT``, so they only grow and are never reused, which lets the mover keep a single
watermark per journal.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Long enough to ride out another process's commit, short enough to answer a client.
_BUSY_TIMEOUT_S = 5.0
# Emptying the WAL after an erasure: each try waits out readers for the busy timeout.
_CHECKPOINT_TRIES = 3

# Built once: json.dumps with options builds a new encoder on every call.
_encode_lead = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode
# The request hash's canonical form; it must never change, or replays after an upgrade would
# look like conflicts.
_encode_canonical = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False
).encode

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal_meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at  TEXT NOT NULL,  -- naive UTC, ISO 8601
    source       TEXT NOT NULL,
    lead         TEXT NOT NULL   -- JSON object
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key           TEXT PRIMARY KEY,
    request_hash  TEXT NOT NULL,
    first_seq     INTEGER NOT NULL,
    last_seq      INTEGER NOT NULL
);
"""


def durable_sqlite(
    path: str | Path, *, busy_timeout_s: float, isolation_level: str | None = "DEFERRED"
) -> sqlite3.Connection:
    """A connection whose commits have reached the disk when they return (WAL, FULL sync),
    for what must be durable before a caller hears 2xx. ``busy_timeout_s`` waits out another
    process's write lock; one connection is shared by threads, behind the caller's lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(
        path, timeout=busy_timeout_s, isolation_level=isolation_level, check_same_thread=False
    )
    con.execute("PRAGMA journal_mode = WAL")
    # In WAL mode NORMAL may lose the last commits on power loss; FULL syncs every commit.
    con.execute("PRAGMA synchronous = FULL")
    return con


@dataclass(frozen=True)
class Accepted:
    first_seq: int  # journal sequence numbers given to this request's leads
    last_seq: int
    count: int
    replayed: bool  # True: the Idempotency-Key was seen before; nothing new was written


@dataclass(frozen=True)
class JournalEntry:
    seq: int
    received_at: datetime  # naive UTC
    source: str
    lead: dict[str, Any]  # the lead exactly as accepted (JSON object)


class IdempotencyConflict(ValueError):
    """An Idempotency-Key was reused with a different request body."""


@dataclass
class _Append:
    """One caller's request waiting in a commit group, and what became of it."""

    texts: list[str]  # the leads' JSON
    source: str
    received_at: str  # naive UTC, ISO 8601
    idempotency_key: str | None
    request_hash: str | None  # with an idempotency key only
    outcome: Accepted | BaseException | None = None  # set once its group has committed


class IntakeJournal:
    """Thread-safe: one connection, serialised by a lock. Other processes may open the same
    file; SQLite's locking (with a busy timeout) keeps them apart.

    Appends are group-committed: requests that arrive while a commit is in flight wait, and
    the next one to lead writes all of them in one transaction with one fsync, in arrival
    order. Each caller returns only once the transaction holding its leads has committed, so
    a 2xx still means durable; a commit costs about the same for one request as for many, so
    concurrent callers stop queueing for one fsync each. Threads use ``append``
    (leader/follower: an uncontended append commits on its own thread, with no hand-off), code
    on an event loop ``append_async`` (grouped by turn of the loop)."""

    def __init__(self, path: str | Path) -> None:
        self._lock = threading.Lock()  # the connection
        self._group = threading.Condition()  # the fields below
        self._waiting: list[_Append] = []
        self._leading = False
        # append_async's group for this turn of the event loop (touched on the loop only).
        self._loop_group: list[tuple[_Append, asyncio.Future[Accepted]]] = []
        # Autocommit mode: transactions are begun explicitly, one per commit group.
        self._con = durable_sqlite(path, busy_timeout_s=_BUSY_TIMEOUT_S, isolation_level=None)
        self._journal_id = self._existing_id() or self._create()

    def _existing_id(self) -> str | None:
        """The id of a journal made before, read without the file's write lock: a second
        process opening the journal (the mover's) must not make the first one's commits wait."""
        try:
            row = self._con.execute(
                "SELECT value FROM journal_meta WHERE key = 'journal_id'"
            ).fetchone()
        except sqlite3.OperationalError:  # no such table: a new file
            return None
        return None if row is None else str(row[0])

    def _create(self) -> str:
        with self._write():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._con.execute(statement)
            # OR IGNORE: when two processes create the file at once, the first id stays.
            self._con.execute(
                "INSERT OR IGNORE INTO journal_meta (key, value) VALUES ('journal_id', ?)",
                [uuid.uuid4().hex],
            )
            (journal_id,) = self._con.execute(
                "SELECT value FROM journal_meta WHERE key = 'journal_id'"
            ).fetchone()
        return str(journal_id)

    @property
    def journal_id(self) -> str:
        return self._journal_id

    def append(
        self,
        leads: Sequence[Mapping[str, Any]],
        *,
        source: str,
        received_at: datetime,
        idempotency_key: str | None = None,
    ) -> Accepted:
        """Write the leads of one request in one transaction (shared with the requests of its
        commit group); returns once it is durable.

        With ``idempotency_key``, a request seen before under the same key returns its first
        answer (``replayed=True``) and writes nothing; a different body under that key raises
        ``IdempotencyConflict``."""
        request = _new_append(leads, source, received_at, idempotency_key)
        with self._group:
            self._waiting.append(request)
            while self._leading and request.outcome is None:
                self._group.wait()
            group: list[_Append] = []
            if request.outcome is None:
                # Lead: commit everyone waiting now, this request included.
                self._leading = True
                group, self._waiting = self._waiting, []
        if group:
            try:
                outcomes = self._commit(group)
            except BaseException as exc:
                # Nothing of the group was committed: each of its callers hears why.
                outcomes = [exc] * len(group)
            with self._group:
                for member, outcome in zip(group, outcomes, strict=True):
                    member.outcome = outcome
                self._leading = False
                self._group.notify_all()
        if isinstance(request.outcome, BaseException):
            raise request.outcome
        assert request.outcome is not None
        return request.outcome

    async def append_async(
        self,
        leads: Sequence[Mapping[str, Any]],
        *,
        source: str,
        received_at: datetime,
        idempotency_key: str | None = None,
    ) -> Accepted:
        """``append`` for code on an event loop: the requests that reach it in one turn of the
        loop are committed together, on the loop's own thread, once that turn's ready tasks
        have had their go. A commit takes a fraction of a millisecond on a local disk; handing
        it to a worker thread costs more under load, since each of its SQLite calls must win
        the GIL back from the busy loop."""
        request = _new_append(leads, source, received_at, idempotency_key)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Accepted] = loop.create_future()
        self._loop_group.append((request, future))
        if len(self._loop_group) == 1:
            loop.call_soon(self._commit_loop_group)
        return await future

    def _commit_loop_group(self) -> None:
        group, self._loop_group = self._loop_group, []
        try:
            outcomes = self._commit([request for request, _ in group])
        except BaseException as exc:
            outcomes = [exc] * len(group)
        for (_, future), outcome in zip(group, outcomes, strict=True):
            if future.cancelled():
                continue  # its caller went away; what it wrote stays, as with a lost answer
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _commit(self, group: Sequence[_Append]) -> list[Accepted | BaseException]:
        """Write a group's requests, in order, in one transaction; what each one gets."""
        outcomes: list[Accepted | BaseException] = []
        with self._write():
            # AUTOINCREMENT gives each row the highest seq ever used + 1, and this transaction
            # holds the file's write lock: the group's rows take the seqs after ``given``.
            given = before = self._seq_given()
            for request in group:
                try:
                    replayed = self._replayed(request)
                except IdempotencyConflict as exc:
                    outcomes.append(exc)
                    continue
                if replayed is not None:
                    outcomes.append(replayed)
                    continue
                self._con.executemany(
                    "INSERT INTO entries (received_at, source, lead) VALUES (?, ?, ?)",
                    [(request.received_at, request.source, text) for text in request.texts],
                )
                first_seq, given = given + 1, given + len(request.texts)
                if request.idempotency_key is not None:
                    # In the same transaction: a later request of this group with this key is
                    # a replay of this one, or a conflict with it.
                    self._con.execute(
                        "INSERT INTO idempotency_keys (key, request_hash, first_seq, last_seq) "
                        "VALUES (?, ?, ?, ?)",
                        [request.idempotency_key, request.request_hash, first_seq, given],
                    )
                outcomes.append(Accepted(first_seq, given, len(request.texts), replayed=False))
            # Rows take strictly growing seqs above ``before``: ending at ``given`` means they
            # took exactly the seqs handed out. Else roll back rather than answer wrongly.
            last = self._seq_given()
            assert last == given, f"journal seqs {before + 1}..{last}, expected ..{given}"
        return outcomes

    def _seq_given(self) -> int:
        """The highest seq AUTOINCREMENT has given out (0 before the first)."""
        row = self._con.execute("SELECT seq FROM sqlite_sequence WHERE name = 'entries'").fetchone()
        return int(row[0]) if row else 0

    def _replayed(self, request: _Append) -> Accepted | None:
        """The first answer given under this request's Idempotency-Key, None when it has no key
        or a new one; ``IdempotencyConflict`` when the key was used for another body."""
        if request.idempotency_key is None:
            return None
        earlier = self._con.execute(
            "SELECT request_hash, first_seq, last_seq FROM idempotency_keys WHERE key = ?",
            [request.idempotency_key],
        ).fetchone()
        if earlier is None:
            return None
        earlier_hash, first_seq, last_seq = earlier
        if earlier_hash != request.request_hash:
            raise IdempotencyConflict(
                f"Idempotency-Key {request.idempotency_key!r} was used for a different request"
            )
        return Accepted(first_seq, last_seq, last_seq - first_seq + 1, replayed=True)

    def read_after(self, seq: int, limit: int) -> list[JournalEntry]:
        """Up to ``limit`` entries with a sequence number above ``seq``, in sequence order."""
        with self._lock:
            rows = self._con.execute(
                "SELECT seq, received_at, source, lead FROM entries WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                [seq, limit],
            ).fetchall()
        return [
            JournalEntry(seq, datetime.fromisoformat(received), source, json.loads(lead))
            for seq, received, source, lead in rows
        ]

    def erase(self, is_theirs: Callable[[dict[str, Any]], bool]) -> tuple[int, bool]:
        """Delete the entries whose lead ``is_theirs``, landed or not (one not landed yet then
        never lands); returns how many, and whether the WAL could be emptied too."""
        with self._lock:
            rows = self._con.execute("SELECT seq, lead FROM entries").fetchall()
        theirs = [seq for seq, lead in rows if is_theirs(json.loads(lead))]
        return len(theirs), self.erase_entries(theirs)

    def erase_entries(self, seqs: Sequence[int]) -> bool:
        """Delete these entries, their bytes overwritten in the file; returns whether the WAL,
        which holds the pages as they were until it is copied back, could be emptied too (a
        reader in another process can keep it from that for a while)."""
        if not seqs:
            return True
        with self._write():
            self._con.execute("PRAGMA secure_delete = ON")
            self._con.executemany("DELETE FROM entries WHERE seq = ?", [(s,) for s in seqs])
        for _ in range(_CHECKPOINT_TRIES):
            with self._lock:
                # Waits (busy timeout) for readers of older snapshots before it gives up.
                (busy, _, _) = self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return True
        log.warning("the intake journal's WAL could not be emptied: readers kept it busy")
        return False

    def leads_under_key(self, prefix: str) -> list[dict[str, Any]]:
        """The leads of the requests whose idempotency key starts with ``prefix``."""
        with self._lock:
            rows = self._con.execute(
                "SELECT e.lead FROM idempotency_keys k "
                "JOIN entries e ON e.seq BETWEEN k.first_seq AND k.last_seq "
                "WHERE substr(k.key, 1, length(?)) = ?",
                [prefix, prefix],
            ).fetchall()
        return [json.loads(lead) for (lead,) in rows]

    def last_seq(self) -> int:
        """The highest sequence number given out; 0 when the journal is empty."""
        with self._lock:
            (last,) = self._con.execute("SELECT coalesce(max(seq), 0) FROM entries").fetchone()
        return int(last)

    def close(self) -> None:
        with self._lock:
            self._con.close()

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction, holding the lock; committed (and synced) on leaving it."""
        with self._lock:
            # IMMEDIATE takes the file's write lock up front, so a second process waits at
            # BEGIN (busy timeout) instead of failing when a read would upgrade to a write.
            self._con.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._con.execute("COMMIT")
            except BaseException:
                if self._con.in_transaction:
                    self._con.execute("ROLLBACK")
                raise


def _new_append(
    leads: Sequence[Mapping[str, Any]],
    source: str,
    received_at: datetime,
    idempotency_key: str | None,
) -> _Append:
    if not leads:
        raise ValueError("a request must carry at least one lead")
    if received_at.tzinfo is not None:
        received_at = received_at.astimezone(UTC).replace(tzinfo=None)
    # Encoded before joining a group, so a lead that cannot be stored fails only its caller.
    texts = [_encode_lead(lead if type(lead) is dict else dict(lead)) for lead in leads]
    return _Append(
        texts,
        source,
        received_at.isoformat(),
        idempotency_key,
        None if idempotency_key is None else _request_hash(leads, source),
    )


def _request_hash(leads: Sequence[Mapping[str, Any]], source: str) -> str:
    """Hash of the request's canonical JSON: key order and spacing do not make it differ."""
    canonical = _encode_canonical({"source": source, "leads": [dict(lead) for lead in leads]})
    return hashlib.sha256(canonical.encode()).hexdigest()
