"""One rate-limit budget per API key across machines, in the Postgres warehouse.

What ``SharedStateStore`` does with a locked file on one machine, done with one row per key in
the warehouse's database, so every process on every machine using the key paces from it: each
``transaction`` is one Postgres transaction that locks the key's row (``SELECT … FOR UPDATE``)
from the read to the write-back.

The row is named by the same hash as the file, never the key. Its state is a cache, as the
file's is: unreadable content starts afresh, and a crashed process's in-flight count expires.
Its times are each writer's own clock, so the machines' clocks must agree (NTP does).
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from enrich_pipeline.provider.pacing import PacingState
from enrich_pipeline.provider.shared_limit import (
    DEFAULT_IN_FLIGHT_TTL_S,
    dump_state,
    load_state,
    state_key,
)
from enrich_pipeline.warehouse.postgres import (
    WarehouseUnreachable,
    create_tables,
    libpq_url,
    masked,
    session,
)

TABLE = "rate_budget"
_CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    state_key TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
)"""
_LOCK_ROW = f"SELECT state FROM {TABLE} WHERE state_key = %s FOR UPDATE"
_ADD_ROW = f"INSERT INTO {TABLE} (state_key, state) VALUES (%s, '') ON CONFLICT DO NOTHING"
_WRITE_ROW = f"UPDATE {TABLE} SET state = %s, updated_at = now() WHERE state_key = %s"


class PostgresStateStore:
    """A ``StateStore`` in a row of the Postgres warehouse shared by every process, on every
    machine, using the same key.

    One connection per store, opened here. Like the file store's descriptor it is not guarded
    against threads: a store serves one ``Pacer``, whose transactions never await, so they never
    overlap. psycopg2 is the optional ``postgres`` extra, imported where used: ``session`` has
    said so by then if it is missing.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        location: str | Path,
        in_flight_ttl_s: float = DEFAULT_IN_FLIGHT_TTL_S,
    ) -> None:
        self.key = state_key(base_url, api_key)
        # Unique per store, so two clients on one machine, or in one process, count apart.
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self._location = location
        self._ttl_s = in_flight_ttl_s
        self._session: ExitStack | None = None
        self._con: Any = None
        self._connect()

    @contextmanager
    def transaction(self, now: float) -> Iterator[PacingState]:
        """The current state, its row locked against every other process until the block ends;
        written back and committed only if the block completes."""
        try:
            with self._reported():
                state = load_state(self._lock_row())
            state.expire(now, self._ttl_s, keep=self.owner)
            yield state
            with self._reported(), self._con.cursor() as cur:
                cur.execute(_WRITE_ROW, (dump_state(state), self.key))
                self._con.commit()
        except BaseException:
            self._rollback()
            raise

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        self._session = None
        self._con = None

    def _connect(self) -> None:
        # The stack keeps `session` open until `close` (dropped, it would close the connection).
        stack = ExitStack()
        self._con = stack.enter_context(session(self._location))
        self._session = stack

    def _lock_row(self) -> str:
        import psycopg2

        if self._con is None or self._con.closed:
            self._reconnect()
        try:
            return self._select_for_update()
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            # Broken while idle (the server restarted, a proxy dropped it): reconnect once.
            self._reconnect()
            return self._select_for_update()

    def _reconnect(self) -> None:
        self.close()
        self._connect()

    def _select_for_update(self) -> str:
        from psycopg2.errors import UndefinedTable

        with self._con.cursor() as cur:
            try:
                cur.execute(_LOCK_ROW, (self.key,))
            except UndefinedTable:
                # This database's first budget.
                self._con.rollback()
                self._create_table()
                cur.execute(_LOCK_ROW, (self.key,))
            row = cur.fetchone()
            if row is None:
                # This key's first use; another process may be adding its row at the same time.
                cur.execute(_ADD_ROW, (self.key,))
                cur.execute(_LOCK_ROW, (self.key,))
                row = cur.fetchone()
        return str(row[0])

    def _create_table(self) -> None:
        with self._con.cursor() as cur:
            create_tables(cur, _CREATE_TABLE)
        self._con.commit()

    def _rollback(self) -> None:
        import psycopg2

        if self._con is None:
            return
        try:
            self._con.rollback()
        except psycopg2.Error:
            # The connection broke, and the transaction with it: the next one reconnects.
            self.close()

    @contextmanager
    def _reported(self) -> Iterator[None]:
        """psycopg2's errors as ``WarehouseUnreachable``, naming the database, password masked."""
        import psycopg2

        try:
            yield
        except psycopg2.Error as exc:
            raise WarehouseUnreachable(
                f"the rate budget in {masked(libpq_url(self._location))} cannot be used: "
                f"{masked(str(exc)).strip()}"
            ) from None
