"""One psycopg2 connection that a process's threads share, for the intake state kept in the
warehouse's Postgres database (the journal, HubSpot's events): a file's connection, over the
network. It is opened again after it breaks (a restarted server, a dropped link), so one lost
connection fails the calls that were using it, not every call after them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

from enrich_pipeline.warehouse import postgres


class SharedSession:
    """Statements commit one by one (autocommit) unless run in ``transaction``. ``lock_timeout_s``
    bounds a wait for another session's lock (a row another replica is writing, a VACUUM FULL),
    as a SQLite busy timeout does, so a caller hears an error rather than hanging."""

    def __init__(self, location: str | Path, *, lock_timeout_s: float) -> None:
        self.location = location
        self._lock_timeout_ms = round(lock_timeout_s * 1000)
        self._lock = threading.Lock()
        self._open: tuple[ExitStack, Any] | None = None

    @contextmanager
    def cursor(self) -> Iterator[Any]:
        """A cursor that this thread alone uses until the block ends."""
        with self._lock:
            con = self._connection()
            try:
                with con.cursor() as cur:
                    yield cur
            except BaseException:
                if con.closed:
                    self._drop()  # the next block opens another
                raise

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _connection(self) -> Any:
        if self._open is None:
            stack = ExitStack()
            # postgres.session masks the URL's password in what it raises.
            con = stack.enter_context(postgres.session(self.location, autocommit=True))
            try:
                with con.cursor() as cur:
                    cur.execute("SET lock_timeout = %s", (f"{self._lock_timeout_ms}ms",))
            except BaseException:
                stack.close()
                raise
            self._open = (stack, con)
        return self._open[1]

    def _drop(self) -> None:
        if self._open is not None:
            stack, _ = self._open
            self._open = None
            stack.close()


@contextmanager
def transaction(cur: Any) -> Iterator[None]:
    """Run the block's statements on ``cur`` as one transaction: committed when it finishes,
    rolled back when it raises (the error raised is always the block's own)."""
    cur.execute("BEGIN")
    try:
        yield
    except BaseException:
        if not cur.connection.closed:
            with suppress(Exception):
                cur.execute("ROLLBACK")
        raise
    cur.execute("COMMIT")


def create_once(session: SharedSession, table: str, ddl: str) -> None:
    """Run ``ddl`` (``CREATE ... IF NOT EXISTS``), which creates ``table``, unless that table is
    there: looked for first, since a ``CREATE INDEX`` even of an index that exists locks out the
    writers of its table (every replica's)."""
    with session.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
        if cur.fetchone()[0]:
            return
        with transaction(cur):
            postgres.create_tables(cur, ddl)
