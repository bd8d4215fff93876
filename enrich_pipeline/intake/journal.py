"""The intake journal: accepted leads, durable before the client hears 2xx.

``Journal`` is what the app, the webhooks, the mover and the erasure use, wherever it lives
(``journal_location``). On one machine it is ``IntakeJournal``, a SQLite file (below). When the
warehouse is Postgres it is ``PostgresJournal`` (``journal_postgres.py``), in that database:
every intake replica appends to it and honours its idempotency keys.

The file: SQLite in WAL mode with ``synchronous=FULL``: a commit has reached the disk when
``append`` returns, and appending never waits for the warehouse. Sequence numbers come from
``AUTOINCREMENT``, so they only grow, are never reused and become visible in order, which lets
the mover keep a single watermark per journal.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from enrich_pipeline.warehouse.postgres import is_postgres

if TYPE_CHECKING:
    import duckdb

    from enrich_pipeline.settings import Settings

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
class AppendRequest:
    """One caller's request waiting in a commit group, and what became of it."""

    texts: list[str]  # the leads' JSON
    source: str
    received_at: str  # naive UTC, ISO 8601
    idempotency_key: str | None
    request_hash: str | None  # with an idempotency key only
    outcome: Accepted | BaseException | None = None  # set once its group has committed


def journal_location(settings: Settings) -> str | Path:
    """Where the intake journal lives: in the warehouse's database when that is Postgres, one
    journal for every replica and machine; else the file ``ENRICH_INTAKE_JOURNAL_PATH`` names."""
    if is_postgres(settings.warehouse_path):
        return settings.warehouse_path
    return settings.intake_journal_path


def open_journal(location: str | Path) -> Journal:
    """The journal at ``location`` (a ``journal_location``), made if it is not there yet."""
    if is_postgres(location):
        from enrich_pipeline.intake.journal_postgres import PostgresJournal

        return PostgresJournal(location)
    return IntakeJournal(location)


def open_existing_journal(settings: Settings) -> Journal | None:
    """The settings' journal, None when it is a file never made: nothing in it to read or
    erase. (A Postgres database is there to be opened, as the warehouse is.)"""
    location = journal_location(settings)
    if not is_postgres(location) and not Path(location).exists():
        return None
    return open_journal(location)


class Journal(ABC):
    """Accepted leads, each with its sequence number, kept after landing (for replays and
    erasures). Thread-safe.

    Appends are group-committed: requests that arrive while a commit is in flight wait, and
    the next one to lead writes all of them in one transaction, in arrival order. Each caller
    returns only once the transaction holding its leads has committed, so a 2xx still means
    durable; a commit costs about the same for one request as for many, so concurrent callers
    stop queueing for one commit each. Threads use ``append`` (leader/follower: an uncontended
    append commits on its own thread, with no hand-off), code on an event loop
    ``append_async`` (grouped by turn of the loop)."""

    # Whether a commit is quick enough to make on the event loop's own thread: a local file's
    # takes a fraction of a millisecond, less than handing it to a worker thread costs under
    # load; a database's over the network is a round trip or more, which the loop must not wait.
    commits_on_loop: ClassVar[bool]

    def __init__(self) -> None:
        self._group = threading.Condition()  # the fields below
        self._waiting: list[AppendRequest] = []
        self._leading = False
        # append_async's group for this turn of the event loop (touched on the loop only).
        self._loop_group: list[tuple[AppendRequest, asyncio.Future[Accepted]]] = []

    @property
    @abstractmethod
    def journal_id(self) -> str:
        """Names the journal in ``raw_contacts.source_file`` (``intake:<id>``)."""

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
        self._submit([request])
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
        loop are committed together once that turn's ready tasks have had their go, on the
        loop's own thread when ``commits_on_loop`` (each of a worker's SQLite calls would have
        to win the GIL back from the busy loop), else on a worker thread."""
        request = _new_append(leads, source, received_at, idempotency_key)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Accepted] = loop.create_future()
        self._loop_group.append((request, future))
        if len(self._loop_group) == 1:
            loop.call_soon(self._commit_loop_group)
        return await future

    def _commit_loop_group(self) -> None:
        group, self._loop_group = self._loop_group, []
        requests = [request for request, _ in group]
        if self.commits_on_loop:
            for request, outcome in zip(requests, self._commit_all(requests), strict=True):
                request.outcome = outcome
            _settle(group)
            return
        # In turn with the threads' groups: one commit at a time on the journal's connection.
        committing = asyncio.get_running_loop().run_in_executor(None, self._submit, requests)
        committing.add_done_callback(
            lambda done: _settle(group, None if done.cancelled() else done.exception())
        )

    def _submit(self, requests: list[AppendRequest]) -> None:
        """Commit ``requests`` in a group with whatever else waits; returns once each has its
        outcome. They join one group: a leader takes everything waiting at once."""
        with self._group:
            self._waiting.extend(requests)
            while self._leading and requests[0].outcome is None:
                self._group.wait()
            group: list[AppendRequest] = []
            if requests[0].outcome is None:
                # Lead: commit everyone waiting now, these requests included.
                self._leading = True
                group, self._waiting = self._waiting, []
        if group:
            outcomes = self._commit_all(group)
            with self._group:
                for member, outcome in zip(group, outcomes, strict=True):
                    member.outcome = outcome
                self._leading = False
                self._group.notify_all()

    def _commit_all(self, group: Sequence[AppendRequest]) -> list[Accepted | BaseException]:
        try:
            return self._commit(group)
        except BaseException as exc:
            # Nothing of the group was committed: each of its callers hears why.
            return [exc] * len(group)

    @abstractmethod
    def _commit(self, group: Sequence[AppendRequest]) -> list[Accepted | BaseException]:
        """Write a group's requests, in order, in one transaction; what each one gets."""

    @abstractmethod
    def read_after(self, seq: int, limit: int) -> list[JournalEntry]:
        """Up to ``limit`` entries with a sequence number above ``seq``, in sequence order."""

    @abstractmethod
    def erase(self, is_theirs: Callable[[dict[str, Any]], bool]) -> tuple[int, bool]:
        """Delete the entries whose lead ``is_theirs``, landed or not (one not landed yet then
        never lands); returns how many, and whether their bytes are gone from the storage's
        files too (see ``erase_entries``)."""

    @abstractmethod
    def erase_entries(self, seqs: Sequence[int]) -> bool:
        """Delete these entries and overwrite their bytes; returns whether nothing of them is
        left in the storage's files either."""

    @abstractmethod
    def leads_under_key(self, prefix: str) -> list[dict[str, Any]]:
        """The leads of the requests whose idempotency key starts with ``prefix``."""

    @abstractmethod
    def last_seq(self) -> int:
        """The highest sequence number of an entry; 0 when the journal is empty."""

    @abstractmethod
    def close(self) -> None: ...

    # Landing (``landing.land_from_journal``): each entry lands once, by what the warehouse
    # transaction that lands it records. ``con`` is that transaction's connection.

    @abstractmethod
    def needs_landing(self, landed_through: int) -> bool:
        """Whether entries may wait to be landed, for a mover that has seen the journal landed
        through ``landed_through``: asked without the warehouse, to spare opening it."""

    @abstractmethod
    def unlanded(self, con: duckdb.DuckDBPyConnection, limit: int) -> list[JournalEntry]:
        """Up to ``limit`` entries no landing has taken, in sequence order."""

    @abstractmethod
    def mark_landed(
        self, con: duckdb.DuckDBPyConnection, entries: Sequence[JournalEntry], landed_at: datetime
    ) -> None:
        """Record ``entries`` (from ``unlanded``) as landed, failing the transaction if another
        landing took any of them meanwhile."""

    @abstractmethod
    def landed_through(self, con: duckdb.DuckDBPyConnection) -> int:
        """The position through which every entry is landed, as this transaction sees them."""


class IntakeJournal(Journal):
    """The journal in a SQLite file. One connection, serialised by a lock; other processes may
    open the same file, and SQLite's locking (with a busy timeout) keeps them apart. A commit
    group is one transaction with one fsync."""

    commits_on_loop = True

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self._lock = threading.Lock()  # the connection
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

    def _commit(self, group: Sequence[AppendRequest]) -> list[Accepted | BaseException]:
        outcomes: list[Accepted | BaseException] = []
        with self._write():
            # AUTOINCREMENT gives each row the highest seq ever used + 1, and this transaction
            # holds the file's write lock: the group's rows take the seqs after ``given``.
            given = before = self._seq_given()
            for request in group:
                replayed = self._replayed(request)
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

    def _replayed(self, request: AppendRequest) -> Accepted | IdempotencyConflict | None:
        """The answer to a request whose Idempotency-Key was seen before; None when it has no
        key or a new one."""
        if request.idempotency_key is None:
            return None
        earlier = self._con.execute(
            "SELECT request_hash, first_seq, last_seq FROM idempotency_keys WHERE key = ?",
            [request.idempotency_key],
        ).fetchone()
        return None if earlier is None else replay(request, *earlier)

    def read_after(self, seq: int, limit: int) -> list[JournalEntry]:
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
        with self._lock:
            rows = self._con.execute("SELECT seq, lead FROM entries").fetchall()
        theirs = [seq for seq, lead in rows if is_theirs(json.loads(lead))]
        return len(theirs), self.erase_entries(theirs)

    def erase_entries(self, seqs: Sequence[int]) -> bool:
        """Deleted with their bytes overwritten in the file; returns whether the WAL, which
        holds the pages as they were until it is copied back, could be emptied too (a reader
        in another process can keep it from that for a while)."""
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
        with self._lock:
            rows = self._con.execute(
                "SELECT e.lead FROM idempotency_keys k "
                "JOIN entries e ON e.seq BETWEEN k.first_seq AND k.last_seq "
                "WHERE substr(k.key, 1, length(?)) = ?",
                [prefix, prefix],
            ).fetchall()
        return [json.loads(lead) for (lead,) in rows]

    def last_seq(self) -> int:
        with self._lock:
            (last,) = self._con.execute("SELECT coalesce(max(seq), 0) FROM entries").fetchone()
        return int(last)

    def close(self) -> None:
        with self._lock:
            self._con.close()

    # Seqs become visible in order, so a watermark in the warehouse's ``intake_progress``
    # says what is landed; it moves in the transaction that lands the rows, and its key makes
    # a second mover landing the same batch at the same time fail instead of doubling it.

    def needs_landing(self, landed_through: int) -> bool:
        # Another process's mover may have landed more, which costs a look next time only.
        return self.last_seq() > landed_through

    def unlanded(self, con: duckdb.DuckDBPyConnection, limit: int) -> list[JournalEntry]:
        return self.read_after(self.landed_through(con), limit)

    def mark_landed(
        self, con: duckdb.DuckDBPyConnection, entries: Sequence[JournalEntry], landed_at: datetime
    ) -> None:
        con.execute(
            "INSERT INTO intake_progress (journal_id, last_seq, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (journal_id) DO UPDATE "
            "SET last_seq = excluded.last_seq, updated_at = excluded.updated_at",
            [self.journal_id, entries[-1].seq, landed_at],
        )

    def landed_through(self, con: duckdb.DuckDBPyConnection) -> int:
        row = con.execute(
            "SELECT last_seq FROM intake_progress WHERE journal_id = ?", [self.journal_id]
        ).fetchone()
        return int(row[0]) if row else 0

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


def replay(
    request: AppendRequest, request_hash: str, first_seq: int, last_seq: int
) -> Accepted | IdempotencyConflict:
    """What a request hears whose Idempotency-Key was first used for ``request_hash`` and given
    ``first_seq..last_seq``: that first answer, or a conflict when its body is another."""
    if request_hash != request.request_hash:
        return IdempotencyConflict(
            f"Idempotency-Key {request.idempotency_key!r} was used for a different request"
        )
    return Accepted(first_seq, last_seq, last_seq - first_seq + 1, replayed=True)


def _settle(
    group: Sequence[tuple[AppendRequest, asyncio.Future[Accepted]]],
    failure: BaseException | None = None,
) -> None:
    """Tell each waiting caller its request's outcome, or ``failure`` when committing failed
    before any outcome was known."""
    for request, future in group:
        if future.cancelled():
            continue  # its caller went away; what it wrote stays, as with a lost answer
        outcome = failure or request.outcome
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            assert outcome is not None
            future.set_result(outcome)


def _new_append(
    leads: Sequence[Mapping[str, Any]],
    source: str,
    received_at: datetime,
    idempotency_key: str | None,
) -> AppendRequest:
    if not leads:
        raise ValueError("a request must carry at least one lead")
    if received_at.tzinfo is not None:
        received_at = received_at.astimezone(UTC).replace(tzinfo=None)
    # Encoded before joining a group, so a lead that cannot be stored fails only its caller.
    texts = [_encode_lead(lead if type(lead) is dict else dict(lead)) for lead in leads]
    return AppendRequest(
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
