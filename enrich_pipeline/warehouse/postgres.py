"""The warehouse on Postgres: the same SQL, run by DuckDB against Postgres tables.

``ENRICH_WAREHOUSE_URL=postgresql://…`` moves the warehouse from a DuckDB file to a Postgres
database. Every query stays DuckDB SQL (one source of truth): a connection is an in-memory
DuckDB with the Postgres database attached (DuckDB's ``postgres`` extension) as its default
catalog, so ``read_csv``, ``COPY … TO parquet``, macros and temp tables work as on the file.

What a file gave for free is made explicit here:

- **One writer at a time**, as DuckDB's file lock gives: a writing process holds a Postgres
  advisory lock (on a psycopg2 session of its own) from opening its connection to closing it.
  Every machine's writers queue on it; readers never do. The pipeline's writes are short units
  of work (nobody holds a connection across API calls), so the queue is short.
- **The schema** is created natively: the DDL in ``schema.py`` is plain SQL both databases
  read, run under the writer lock (two processes creating one table at once conflict).
- **The URL may hold a password**: it is masked in every message this module raises.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import duckdb

SCHEMES = ("postgresql", "postgres")
CATALOG = "warehouse"
# Any fixed 64-bit number: the one advisory lock the warehouse's writers share.
WRITER_LOCK_ID = 0x656E72696368  # "enrich"

_PASSWORD = re.compile(r"(://[^:/@?#]*:)[^@/?#]*@")


def is_postgres(location: str | Path) -> bool:
    """Whether a warehouse location is a Postgres URL rather than a DuckDB file path."""
    scheme = str(location).split("://", 1)[0].split("+", 1)[0].lower()
    return "://" in str(location) and scheme in SCHEMES


def libpq_url(location: str | Path) -> str:
    """The URL libpq reads: a SQLAlchemy-style ``postgresql+psycopg2://`` loses its driver."""
    parts = urlsplit(str(location))
    return urlunsplit(parts._replace(scheme="postgresql"))


def masked(text: str) -> str:
    """``text`` with the password of any URL in it replaced."""
    return _PASSWORD.sub(r"\1***@", text)


def has_password(location: str | Path) -> bool:
    return is_postgres(location) and bool(urlsplit(str(location)).password)


class WarehouseUnreachable(RuntimeError):
    """The Postgres warehouse cannot be reached or used; the message names it, password masked."""


def _psycopg2() -> Any:
    try:
        import psycopg2
    except ImportError as exc:  # the extra is not installed
        raise WarehouseUnreachable(
            "ENRICH_WAREHOUSE_URL names a Postgres warehouse, which needs the `postgres` extra: "
            "pip install 'enrich_pipeline[postgres]'"
        ) from exc
    return psycopg2


@contextmanager
def session(location: str | Path, *, autocommit: bool = False) -> Iterator[Any]:
    """A psycopg2 connection to the warehouse database, closed at the end."""
    con = _connect(libpq_url(location))
    con.autocommit = autocommit
    try:
        yield con
    finally:
        con.close()


def _extension_path() -> str:
    try:
        import duckdb_extension_postgres_scanner as wheel
    except ImportError as exc:
        raise WarehouseUnreachable(
            "ENRICH_WAREHOUSE_URL names a Postgres warehouse, which needs DuckDB's postgres "
            "extension: pip install 'enrich_pipeline[postgres]'"
        ) from exc
    folder = Path(wheel.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    path = folder / "postgres_scanner.duckdb_extension"
    if not path.exists():
        raise WarehouseUnreachable(
            f"DuckDB's postgres extension for DuckDB {duckdb.__version__} is not installed "
            f"(looked in {folder}); pip install 'enrich_pipeline[postgres]'"
        )
    return str(path)


def open_duckdb(location: str | Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB whose default catalog is the Postgres warehouse."""
    # The extension ships as a wheel, unsigned by DuckDB's key: loaded by path, never fetched.
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    try:
        con.execute(f"LOAD '{_extension_path()}'")
        url = libpq_url(location).replace("'", "''")
        options = "TYPE postgres, READ_ONLY" if read_only else "TYPE postgres"
        con.execute(f"ATTACH '{url}' AS {CATALOG} ({options})")
        con.execute(f"USE {CATALOG}")
    except duckdb.Error as exc:
        con.close()
        raise WarehouseUnreachable(
            f"cannot attach the warehouse {masked(libpq_url(location))}: {masked(str(exc))}"
        ) from None
    return con


class _WriterLock:
    """This process's hold on the warehouse's writer lock, shared by its threads (as a DuckDB
    file's lock is shared by one process's connections)."""

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.holds: dict[str, tuple[Any, int]] = {}  # url -> (session, holds)
        self.schema_ready: set[str] = set()

    def acquire(self, url: str, timeout_s: float, ensure: Any) -> None:
        with self.mutex:
            if url in self.holds:
                con, holds = self.holds[url]
                self.holds[url] = (con, holds + 1)
                return
            con = _session_for_lock(url)
            try:
                _wait_for_lock(con, url, timeout_s)
                if url not in self.schema_ready:
                    ensure(con)
                    self.schema_ready.add(url)
            except BaseException:
                con.close()
                raise
            self.holds[url] = (con, 1)

    def release(self, url: str) -> None:
        with self.mutex:
            con, holds = self.holds[url]
            if holds > 1:
                self.holds[url] = (con, holds - 1)
                return
            del self.holds[url]
            con.close()  # a session's advisory locks end with it


_writer = _WriterLock()


def _connect(url: str) -> Any:
    psycopg2 = _psycopg2()
    try:
        return psycopg2.connect(url, connect_timeout=10)
    except psycopg2.Error as exc:
        raise WarehouseUnreachable(
            f"cannot connect to the warehouse {masked(url)}: {masked(str(exc)).strip()}"
        ) from None


def _session_for_lock(url: str) -> Any:
    con = _connect(url)
    con.autocommit = True
    return con


def _wait_for_lock(con: Any, url: str, timeout_s: float) -> None:
    from enrich_pipeline.warehouse.connection import WarehouseBusy

    deadline = time.monotonic() + timeout_s
    pause = 0.005
    with con.cursor() as cur:
        while True:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (WRITER_LOCK_ID,))
            if cur.fetchone()[0]:
                return
            if time.monotonic() >= deadline:
                raise WarehouseBusy(
                    f"the warehouse {masked(url)} is being written by another process "
                    f"(waited {timeout_s:.0f}s); try again when it finishes"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.2)


def ensure_schema_once(location: str | Path, *, lock_timeout_s: float, ensure: Any) -> None:
    """For a reader: the schema exists once this process has connected, as a writer leaves it
    (a reader of an empty DuckDB file finds no file and skips; a database is always there)."""
    url = libpq_url(location)
    if url not in _writer.schema_ready:
        with writing(url, lock_timeout_s=lock_timeout_s, ensure=ensure):
            pass


@contextmanager
def writing(location: str | Path, *, lock_timeout_s: float, ensure: Any) -> Iterator[None]:
    """Hold the writer lock for the block; ``ensure(session)`` creates the schema the first
    time this process writes to ``location``."""
    url = libpq_url(location)
    _writer.acquire(url, lock_timeout_s, ensure)
    try:
        yield
    finally:
        _writer.release(url)


# Any fixed 64-bit number: the lock every table created on first use is created under.
SCHEMA_LOCK_ID = 0x656E72696368_01  # "enrich", 1


def create_tables(cur: Any, ddl: str) -> None:
    """Run ``ddl`` (``CREATE … IF NOT EXISTS``) in ``cur``'s transaction, under one lock: two
    sessions creating one table at once collide in Postgres's catalog, IF NOT EXISTS or not, so
    they queue, and the second finds it made."""
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_ID,))
    cur.execute(ddl)


def vacuum_full(location: str | Path, tables: list[str]) -> None:
    """Rewrite ``tables`` so deleted rows' bytes leave their files (Postgres keeps them in
    place until a vacuum, as DuckDB keeps freed blocks)."""
    with session(location, autocommit=True) as con, con.cursor() as cur:
        for table in tables:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
            if cur.fetchone()[0]:  # a table made on first use may not be there yet
                cur.execute(f'VACUUM (FULL) "{table}"')


def in_use(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether ``con``'s default catalog is a Postgres warehouse."""
    row = con.execute(
        "SELECT type FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchone()
    return row is not None and row[0] == "postgres"


def draw_ids(con: duckdb.DuckDBPyConnection, sequence: str, count: int) -> int:
    """The first of ``count`` consecutive ids taken from a Postgres ``sequence`` at once (DuckDB's
    ``nextval`` names its own sequences, not Postgres's)."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", sequence):
        raise ValueError(f"not a plain sequence name: {sequence!r}")
    statement = f"SELECT setval('{sequence}', nextval('{sequence}') + {int(count)} - 1)"
    quoted = statement.replace("'", "''")
    (last,) = con.execute(f"SELECT * FROM postgres_query('{CATALOG}', '{quoted}')").fetchone()  # type: ignore[misc]
    return int(last) - count + 1
