"""Look-ups being made right now, so that no two paths pay for the same record at once.

Every path that looks records up (a run's enrichment asset, the intake's write-back and its
answers on request) claims what it is about to look up, looks up only what it claimed, and
waits for what another holds instead of asking the provider again; then it reads the warehouse
again. Claims are kept in this process and, given a place, where every process writing the
warehouse shares them: overlapping runs (a backfill, a sensor's run, the stale refresh) each pay
for an identity once. The place is a small SQLite table beside a DuckDB warehouse (every process
on this machine), or tables in a Postgres warehouse (every process on every machine, see
``in_flight_postgres``). A claim names its holder; a holder that is gone (killed, out of memory)
holds nothing.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from enrich_pipeline.in_flight_postgres import PostgresClaims
from enrich_pipeline.processes import ProcessId
from enrich_pipeline.provider.models import Kind
from enrich_pipeline.warehouse.postgres import is_postgres

Key = tuple[Kind, str]  # ("person", identity) or ("company", domain)

# The intake waits this long for another path's look-up (a slow provider, retrying), then
# goes on with what is stored; a run's asset waits as long as the holder lives.
WAIT_S = 30.0
# How often a claim held by another process is looked at again while waiting for it.
POLL_S = 0.2
POLL_S_PER_KEY = 2e-5


class SharedClaims(Protocol):
    """Claims every process using one place sees. Called under ``InFlight``'s lock, with keys
    this process does not hold (``claim``) or holds (``release``)."""

    def claim(self, keys: set[Key]) -> set[Key]:
        """Those of ``keys`` nobody else holds, now this owner's."""
        ...

    def held(self, keys: set[Key]) -> dict[Key, str]:
        """Those of ``keys`` another owner holds, and its holder."""
        ...

    def release(self, keys: set[Key], *, everything: bool) -> None:
        """``everything``: ``keys`` are all this owner holds."""
        ...

    def close(self) -> None:
        """Release everything and let go of the place."""
        ...


class InFlight:
    """Claims on look-ups. ``path`` (a SQLite file, or a Postgres URL) shares them with every
    process using it; without it they are this process's only. ``holder`` says who holds them
    (a run's id), for the messages of those who wait."""

    def __init__(self, path: str | Path | None = None, *, holder: str = "this process") -> None:
        self._changed = threading.Condition()
        self._claimed: set[Key] = set()
        self._holder = holder
        self._shared: SharedClaims | None = None
        if path is not None and is_postgres(path):
            self._shared = PostgresClaims(str(path), holder=holder)
        elif path is not None:
            self._shared = _SqliteClaims(Path(path), holder=holder)

    def close(self) -> None:
        with self._changed:
            shared, self._shared = self._shared, None
            self._claimed.clear()
            self._changed.notify_all()
            if shared is not None:
                shared.close()

    def __enter__(self) -> InFlight:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def claim(self, keys: Iterable[Key]) -> set[Key]:
        """Claim those of ``keys`` nobody holds; returns them (the caller must release them)."""
        with self._changed:
            mine = set(keys) - self._claimed
            if mine and self._shared is not None:
                mine = self._shared.claim(mine)
            self._claimed |= mine
            return mine

    def release(self, keys: Collection[Key]) -> None:
        if keys:
            with self._changed:
                keys = set(keys) & self._claimed
                if self._shared is not None and keys:
                    self._shared.release(keys, everything=len(keys) == len(self._claimed))
                self._claimed -= keys
                self._changed.notify_all()

    def held(self, keys: Collection[Key]) -> dict[Key, str]:
        """Those of ``keys`` held by another path (this process's other threads included), and
        who holds each."""
        with self._changed:
            return self._held(set(keys))

    def wait(self, keys: Collection[Key], timeout_s: float | None = WAIT_S) -> bool:
        """Wait until nobody else holds any of ``keys`` (at most ``timeout_s``; None waits as
        long as the holders live); returns whether anybody did, so the caller knows to look
        again at what is stored."""
        wanted = set(keys)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        waited = False
        with self._changed:
            while self._held(wanted):
                waited = True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                # This process's releases wake the wait; another process's are polled for,
                # less often for many keys (a run waiting on a backfill's million).
                pause = max(POLL_S, len(wanted) * POLL_S_PER_KEY) if self._shared else None
                if left is not None:
                    pause = left if pause is None else min(pause, left)
                self._changed.wait(pause)
            return waited

    def _held(self, wanted: set[Key]) -> dict[Key, str]:
        held = dict.fromkeys(wanted & self._claimed, self._holder)
        if self._shared is not None and (rest := wanted - self._claimed):
            held |= self._shared.held(rest)
        return held


_SCHEMA = """
CREATE TABLE IF NOT EXISTS holders (
    owner TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    holder TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS claims (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    owner TEXT NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS claims_by_owner ON claims (owner);
CREATE TEMP TABLE IF NOT EXISTS wanted (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
"""


class _SqliteClaims:
    """Claims in a SQLite file, shared by the processes of one machine: a claim names the
    process holding it (pid and start time), and a process that is gone holds nothing."""

    def __init__(self, path: Path, *, holder: str) -> None:
        self._holder = holder
        self._owner = secrets.token_hex(8)
        self._process = ProcessId.current()
        self._db = _open(path)

    def close(self) -> None:
        with self._transaction() as db:
            _drop_owner(db, self._owner)
        self._db.close()

    def claim(self, keys: set[Key]) -> set[Key]:
        # In key order: a B-tree filled in order is written page by page (a backfill claims up
        # to a million keys at once).
        ordered = sorted(keys)
        with self._transaction() as db:
            self._forget_the_dead(db)
            db.execute(
                "INSERT OR IGNORE INTO holders VALUES (?, ?, ?, ?)",
                [self._owner, self._process.pid, self._process.started_at, self._holder],
            )
            db.executemany(
                "INSERT OR IGNORE INTO claims VALUES (?, ?, ?)",
                [(kind, key, self._owner) for kind, key in ordered],
            )
            return keys - self._others(db, ordered).keys()

    def held(self, keys: set[Key]) -> dict[Key, str]:
        # Read without the write lock: a run waiting on a backfill asks again and again.
        ordered = sorted(keys)
        with self._transaction(immediate=False) as db:
            others = self._others(db, ordered)
            anyone_gone = bool(others) and bool(self._gone(db))
        if not anyone_gone:
            return others
        with self._transaction() as db:
            self._forget_the_dead(db)
        with self._transaction(immediate=False) as db:
            return self._others(db, ordered)

    def release(self, keys: set[Key], *, everything: bool) -> None:
        with self._transaction() as db:
            if everything:
                # Everything this owner holds (a run's whole selection): one indexed delete.
                db.execute("DELETE FROM claims WHERE owner = ?", [self._owner])
                return
            db.executemany(
                "DELETE FROM claims WHERE kind = ? AND key = ? AND owner = ?",
                [(kind, key, self._owner) for kind, key in sorted(keys)],
            )

    def _others(self, db: sqlite3.Connection, ordered: list[Key]) -> dict[Key, str]:
        """Those of ``ordered`` another owner claimed, and its holder; by index, however many
        keys are asked about."""
        db.executemany("INSERT OR IGNORE INTO temp.wanted VALUES (?, ?)", ordered)
        rows = db.execute(
            """
            SELECT c.kind, c.key, h.holder
            FROM temp.wanted AS w
            JOIN claims AS c ON c.kind = w.kind AND c.key = w.key
            JOIN holders AS h ON h.owner = c.owner
            WHERE c.owner != ?
            """,
            [self._owner],
        ).fetchall()
        db.execute("DELETE FROM temp.wanted")
        return {(kind, key): holder for kind, key, holder in rows}

    def _gone(self, db: sqlite3.Connection) -> list[str]:
        """The other owners whose process is gone."""
        return [
            owner
            for owner, pid, started_at in db.execute(
                "SELECT owner, pid, started_at FROM holders WHERE owner != ?", [self._owner]
            ).fetchall()
            if not ProcessId(pid, started_at).is_running()
        ]

    def _forget_the_dead(self, db: sqlite3.Connection) -> None:
        """Drop the claims of processes that are gone: nobody is looking those records up."""
        for owner in self._gone(db):
            _drop_owner(db, owner)

    @contextmanager
    def _transaction(self, *, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        """Claims are read and written under one write lock (``immediate``), so two processes
        never both take a key; a read alone takes none."""
        self._db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (a failed COMMIT, an I/O error).
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise


def _drop_owner(db: sqlite3.Connection, owner: str) -> None:
    """Everything ``owner`` holds, and the owner itself."""
    db.execute("DELETE FROM claims WHERE owner = ?", [owner])
    db.execute("DELETE FROM holders WHERE owner = ?", [owner])


def claims_path(warehouse_path: str | Path) -> str | Path:
    """Where the claims on a warehouse's look-ups are kept: beside a DuckDB file, or in the
    Postgres database itself (its URL)."""
    if is_postgres(warehouse_path):
        return str(warehouse_path)
    return Path(f"{warehouse_path}.in_flight.sqlite3")


def empty_wal(path: str | Path) -> bool:
    """Copy the claims file's WAL back and empty it, so released claims (identities, emails
    among them) are in neither file; False when a reader kept it busy. Claims in Postgres have
    no file of their own to empty (their tables are unlogged: no WAL)."""
    if is_postgres(path):
        return True
    path = Path(path)
    if not path.exists():
        return True
    db = _open(path)
    try:
        (busy, _, _) = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        db.close()
    return not busy


def _open(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    # Claims describe processes that are running; after a power cut none are.
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA temp_store=MEMORY")
    # Released claims name people (email identities): their bytes are overwritten, not freed.
    db.execute("PRAGMA secure_delete=ON")
    db.executescript(_SCHEMA)
    return db
