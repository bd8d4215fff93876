"""In-flight claims kept in a Postgres warehouse, shared by processes on any number of machines.

A claim is a row of ``in_flight_claims``, whose primary key is the claim's key: of two
transactions inserting it (``ON CONFLICT DO NOTHING``), one gets it. Each process's claims are
inserted in one global key order, so two claimers wait for each other at most one way round,
never in a deadlock.

A holder is alive while its connection holds a session advisory lock on its owner number; a
holder whose lock is free (its process killed, its machine gone) holds nothing, and whoever
next meets its claims deletes them. Chosen over a lease renewed by a heartbeat: a pid means
nothing on another machine, and a lease either outlives a dead holder (others wait out its
term) or lapses under a live one that stalled (a long pause, a busy interpreter), so two pay.
The lock ends with the holder's backend: at once when its process dies (the socket closes),
within a minute when its machine vanishes (TCP keepalives, set per session). It needs a session
of its own, so not through a pooler in transaction mode.

The tables are unlogged: claims describe sessions that are open, and after a crash none are
(Postgres empties unlogged tables then); nor does the WAL keep the released ones (emails).
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

from enrich_pipeline.warehouse.postgres import (
    WarehouseUnreachable,
    create_tables,
    masked,
    session,
)

if TYPE_CHECKING:
    from enrich_pipeline.in_flight import Key

# The first key of a holder's two-key advisory lock ("infl"); the second is its owner number
# (1 to 2**31 - 1: a positive int4 reads the same as pg_locks' oid column).
LOCK_SPACE = 0x696E666C
_SCHEMA = """
CREATE UNLOGGED TABLE IF NOT EXISTS in_flight_holders (
    owner INTEGER PRIMARY KEY,
    holder TEXT NOT NULL
);
CREATE UNLOGGED TABLE IF NOT EXISTS in_flight_claims (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    owner INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX IF NOT EXISTS in_flight_claims_by_owner ON in_flight_claims (owner);
"""
# The keys a statement is about, copied in (a backfill claims up to a million at once); this
# session's own, emptied by each commit.
_WANTED = """
CREATE TEMP TABLE wanted (kind TEXT NOT NULL, key TEXT NOT NULL) ON COMMIT DELETE ROWS
"""

# Holders whose lock is free in this database, locked (one forgetter each) and deleted with
# their claims. pg_locks lists every session's locks to every user.
_FORGET_THE_DEAD = """
WITH dead AS (
    SELECT h.owner FROM in_flight_holders AS h
    WHERE h.owner <> %(me)s AND NOT EXISTS (
        SELECT FROM pg_locks AS l
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND l.classid = %(space)s::oid AND l.objid = h.owner::oid
    )
    FOR UPDATE OF h SKIP LOCKED
), claims AS (
    DELETE FROM in_flight_claims WHERE owner IN (SELECT owner FROM dead)
)
DELETE FROM in_flight_holders WHERE owner IN (SELECT owner FROM dead) RETURNING owner
"""


class PostgresClaims:
    """This process's claims in the Postgres database at ``url``, on a connection of their own
    that holds this owner's lock until ``close``."""

    def __init__(self, url: str, *, holder: str) -> None:
        self._url = url
        self._stack = ExitStack()
        self._con = self._stack.enter_context(session(url))
        try:
            import psycopg2

            # What a lost connection raises; anything else is a bug, raised as it is.
            self._lost = (psycopg2.OperationalError, psycopg2.InterfaceError)
            self._owner = self._open(holder)
        except BaseException:
            self._stack.close()
            raise

    def _open(self, holder: str) -> int:
        with self._transaction() as cur:
            # A vanished machine's backend learns it from keepalives, not the OS's two hours; a
            # server-wide idle timeout would end a live holder's session.
            cur.execute(
                "SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10;"
                "SET tcp_keepalives_count = 3; SET idle_session_timeout = 0"
            )
            create_tables(cur, _SCHEMA)
            cur.execute(_WANTED)
        while True:
            owner = 1 + secrets.randbelow(2**31 - 1)
            with self._transaction() as cur:
                cur.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_SPACE, owner))
                if not cur.fetchone()[0]:
                    continue  # a live holder's number
                # Rows under a number whose lock was free are a dead holder's.
                cur.execute("DELETE FROM in_flight_claims WHERE owner = %s", (owner,))
                cur.execute("DELETE FROM in_flight_holders WHERE owner = %s", (owner,))
                cur.execute("INSERT INTO in_flight_holders VALUES (%s, %s)", (owner, holder))
                return owner

    def close(self) -> None:
        try:
            with self._transaction() as cur:
                cur.execute("DELETE FROM in_flight_claims WHERE owner = %s", (self._owner,))
                cur.execute("DELETE FROM in_flight_holders WHERE owner = %s", (self._owner,))
        except WarehouseUnreachable:
            pass  # the session is gone, and its lock with it: its claims are others' already
        finally:
            self._stack.close()  # the session, and with it the lock

    def claim(self, keys: set[Key]) -> set[Key]:
        mine = self._insert(keys)
        # Taken by someone: by a dead holder perhaps, whose claims are then others' to take.
        if len(mine) < len(keys) and self._forget_the_dead():
            mine |= self._insert(keys - mine)
        return mine

    def held(self, keys: set[Key]) -> dict[Key, str]:
        others = self._others(keys)
        if others and self._forget_the_dead():
            others = self._others(keys)
        return others

    def release(self, keys: set[Key], *, everything: bool) -> None:
        with self._transaction() as cur:
            if everything:
                cur.execute("DELETE FROM in_flight_claims WHERE owner = %s", (self._owner,))
                return
            _copy_wanted(cur, keys)
            cur.execute(
                "DELETE FROM in_flight_claims AS c USING wanted AS w "
                "WHERE c.owner = %s AND c.kind = w.kind AND c.key = w.key",
                (self._owner,),
            )

    def _insert(self, keys: set[Key]) -> set[Key]:
        # One transaction, in key order (see the module's description).
        with self._transaction() as cur:
            _copy_wanted(cur, keys)
            cur.execute(
                "INSERT INTO in_flight_claims (kind, key, owner) "
                "SELECT kind, key, %s FROM wanted ORDER BY kind, key "
                "ON CONFLICT DO NOTHING RETURNING kind, key",
                (self._owner,),
            )
            return {(kind, key) for kind, key in cur.fetchall()}

    def _others(self, keys: set[Key]) -> dict[Key, str]:
        with self._transaction() as cur:
            _copy_wanted(cur, keys)
            cur.execute(
                """
                SELECT c.kind, c.key, h.holder
                FROM wanted AS w
                JOIN in_flight_claims AS c ON c.kind = w.kind AND c.key = w.key
                JOIN in_flight_holders AS h ON h.owner = c.owner
                WHERE c.owner <> %s
                """,
                (self._owner,),
            )
            return {(kind, key): holder for kind, key, holder in cur.fetchall()}

    def _forget_the_dead(self) -> bool:
        """Delete the claims of holders that are gone; whether there were any. A transaction of
        its own, before any claim: a claimer that deleted a key and waits for another's
        uncommitted one could be waited for in turn."""
        with self._transaction() as cur:
            cur.execute(_FORGET_THE_DEAD, {"me": self._owner, "space": LOCK_SPACE})
            return cur.rowcount > 0

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """A cursor in a transaction, committed at the end; a lost connection is said to be,
        with the URL's password masked."""
        try:
            with self._con, self._con.cursor() as cur:
                yield cur
        except self._lost as exc:
            raise WarehouseUnreachable(
                f"lost the in-flight claims' connection to {masked(self._url)}: "
                f"{masked(str(exc)).strip()}"
            ) from None


def _copy_wanted(cur: Any, keys: set[Key]) -> None:
    """``keys`` into this session's ``wanted`` table, for the statement that follows."""
    lines = "".join(f"{_copy_text(kind)}\t{_copy_text(key)}\n" for kind, key in keys)
    cur.copy_expert("COPY wanted (kind, key) FROM STDIN", io.StringIO(lines))
    # A join's plan is only as good as its estimate of how many keys are asked about.
    cur.execute("ANALYZE wanted")


def _copy_text(value: str) -> str:
    """``value`` as a field of COPY's text format."""
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )
