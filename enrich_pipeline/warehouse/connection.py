"""Short-lived DuckDB connections that wait out another process's write lock.

DuckDB lets one process write a database file at a time. Every unit of work opens a
connection, does its SQL and closes it in ``finally``; nobody holds one across API calls.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import duckdb
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

from enrich_pipeline.warehouse import postgres
from enrich_pipeline.warehouse.schema import ensure_schema, ensure_schema_natively

log = logging.getLogger(__name__)


def is_lock_error(exc: BaseException) -> bool:
    """DuckDB reports another process's lock as an IOException mentioning the lock."""
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


class WarehouseBusy(RuntimeError):
    """Another process held the warehouse's write lock for longer than we were willing to wait."""


# Two of this process's connections creating the schema at once conflict in DuckDB's catalog.
_schema_lock = threading.Lock()


class _Keeper:
    """The connection that keeps one file open for ``hold_open``, shared by overlapping and
    back-to-back holds of this process, and when it must close."""

    def __init__(self, con: duckdb.DuckDBPyConnection, opened: float, max_hold_s: float) -> None:
        self.con = con
        self.close_by = opened + max_hold_s  # however busy the holds keep it
        self.linger_until = opened  # the latest a released hold asked it to stay open
        self.holds = 0
        self.timer: threading.Timer | None = None


# Files this process holds open, by resolved path; their schema was ensured on opening.
_keepers: dict[str, _Keeper] = {}
_keepers_lock = threading.Lock()


@contextmanager
def connect(
    path: str | Path,
    *,
    lock_timeout_s: float = 30.0,
    read_only: bool = False,
    memory_limit: str | None = None,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse (creating file and schema if needed), retrying lock errors with
    jittered exponential backoff for up to ``lock_timeout_s`` seconds. ``memory_limit`` (e.g.
    ``"1GB"``) caps DuckDB's memory; past it, DuckDB spills to disk instead of growing.

    ``path`` may be a ``postgresql://`` URL instead (``warehouse/postgres.py``): the same SQL
    then runs against Postgres tables, and a writer waits for the writer lock instead."""
    if postgres.is_postgres(path):
        with _connect_postgres(str(path), lock_timeout_s, read_only) as con:
            if memory_limit:
                con.execute("SET memory_limit = ?", [memory_limit])
            yield con
        return
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    retrying = Retrying(
        retry=retry_if_exception(is_lock_error),
        wait=wait_random_exponential(multiplier=0.05, max=2.0),
        stop=stop_after_delay(lock_timeout_s),
        before_sleep=before_sleep_log(log, logging.DEBUG),
        reraise=True,
    )
    try:
        con = retrying(_open, path, read_only)
    except duckdb.IOException as exc:
        if is_lock_error(exc):
            raise WarehouseBusy(
                f"the warehouse {path} is locked by another process "
                f"(waited {lock_timeout_s:.0f}s); try again when it finishes"
            ) from exc
        raise
    try:
        if memory_limit:
            con.execute("SET memory_limit = ?", [memory_limit])
        if not read_only and not is_held(path):
            with _schema_lock:
                ensure_schema(con)
        yield con
    finally:
        con.close()


@contextmanager
def _connect_postgres(
    url: str, lock_timeout_s: float, read_only: bool
) -> Iterator[duckdb.DuckDBPyConnection]:
    with ExitStack() as stack:
        if read_only:
            postgres.ensure_schema_once(
                url, lock_timeout_s=lock_timeout_s, ensure=ensure_schema_natively
            )
        else:
            stack.enter_context(
                postgres.writing(url, lock_timeout_s=lock_timeout_s, ensure=ensure_schema_natively)
            )
        con = postgres.open_duckdb(url, read_only=read_only)
        stack.callback(con.close)
        yield con


def _open(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    # The swap lock only while opening: held while waiting for the write lock, it would keep
    # a process that is about to swap the file from ever taking it.
    with swap_lock(path, exclusive=False, required=not read_only):
        return duckdb.connect(str(path), read_only=read_only)


@contextmanager
def swap_lock(path: Path, *, exclusive: bool, required: bool = True) -> Iterator[None]:
    """The lock a process opening the warehouse holds shared, and one replacing the file with
    a rewritten copy (an erasure) holds exclusively from before it lets the old file go until
    the new one is in place: no process opens the old file in between and writes to a file
    that is about to be replaced. An ``flock`` on ``<warehouse>.swap.lock``; a reader that
    cannot make it (``required`` false: a read-only folder) opens without it."""
    lock_path = path.with_name(path.name + ".swap.lock")
    try:
        # flock needs no write access: anyone who may read the warehouse may take it.
        fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError:
        if required:
            raise
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


@contextmanager
def hold_open(
    path: str | Path, *, max_hold_s: float, linger_s: float = 0.0, lock_timeout_s: float = 30.0
) -> Iterator[None]:
    """Keep the warehouse open in this process for a burst of short units of work, and
    ``linger_s`` after it, so that the next burst (the write-back after a landing) finds it
    open; never longer than ``max_hold_s`` from opening.

    DuckDB shares one open database between a process's connections, so while it is held each
    ``connect`` costs a fraction of a millisecond instead of opening, and on closing
    checkpointing, the file (about 20 ms each). The holding connection runs no query. It is
    closed ``max_hold_s`` after opening even if a block is still running (waiting on a slow
    provider), so another process never waits longer than that for the write lock; later
    connects then open the file as usual, and the next hold opens it anew."""
    if postgres.is_postgres(path):  # nothing to keep open: a Postgres connection is cheap
        yield
        return
    key = str(Path(path).resolve())
    now = time.monotonic()
    with _keepers_lock:
        keeper = _keepers.get(key)
        if keeper is not None and keeper.close_by <= now:
            keeper = None  # past its time: let it close, open a new one
        if keeper is not None:
            keeper.holds += 1
            if keeper.timer is not None:
                keeper.timer.cancel()
            _schedule_close(key, keeper, keeper.close_by - now)
    if keeper is None:
        keeper = _open_keeper(path, key, max_hold_s, lock_timeout_s)
    try:
        yield
    finally:
        with _keepers_lock:
            keeper.holds -= 1
            now = time.monotonic()
            keeper.linger_until = max(keeper.linger_until, now + linger_s)
            if keeper.holds == 0 and _keepers.get(key) is keeper:
                assert keeper.timer is not None
                keeper.timer.cancel()
                # A hold without linger ending after one with it leaves the file open for that.
                linger = min(keeper.linger_until, keeper.close_by) - now
                if linger > 0:
                    _schedule_close(key, keeper, linger)
                else:
                    _close_keeper(key, keeper)


def _open_keeper(path: str | Path, key: str, max_hold_s: float, lock_timeout_s: float) -> _Keeper:
    with connect(path, lock_timeout_s=lock_timeout_s):
        # Opened while ``connect``'s connection holds the file: no lock to wait for, and the
        # schema is ensured. It outlives that connection.
        con = duckdb.connect(str(path))
    keeper = _Keeper(con, time.monotonic(), max_hold_s)
    keeper.holds = 1
    with _keepers_lock:
        if key in _keepers:
            _close_keeper(key, _keepers[key])
        _keepers[key] = keeper
        _schedule_close(key, keeper, max_hold_s)
    return keeper


def _schedule_close(key: str, keeper: _Keeper, after_s: float) -> None:
    def close() -> None:
        with _keepers_lock:
            _close_keeper(key, keeper)

    keeper.timer = threading.Timer(after_s, close)
    keeper.timer.daemon = True
    keeper.timer.start()


def _close_keeper(key: str, keeper: _Keeper) -> None:
    """Under ``_keepers_lock``."""
    if _keepers.get(key) is keeper:
        del _keepers[key]
    keeper.con.close()


@atexit.register
def _close_all_keepers() -> None:
    """At exit, before daemon threads stop: a keeper closed by its timer thread during the
    interpreter's shutdown would abort the process from inside DuckDB."""
    with _keepers_lock:
        for key, keeper in list(_keepers.items()):
            if keeper.timer is not None:
                keeper.timer.cancel()
            _close_keeper(key, keeper)


def is_held(path: Path) -> bool:
    """Whether ``hold_open`` keeps the file open in this process."""
    if postgres.is_postgres(path):
        return False
    with _keepers_lock:
        return bool(_keepers) and str(path.resolve()) in _keepers


def exists(location: str | Path) -> bool:
    """Whether the warehouse has been made (a Postgres database is there to be connected to)."""
    return postgres.is_postgres(location) or Path(location).exists()


def describe(location: str | Path) -> str:
    """The warehouse as a message names it: a file's full path, a URL with no password."""
    if postgres.is_postgres(location):
        return postgres.masked(postgres.libpq_url(location))
    return str(Path(location).resolve())


def sync_folder(folder: Path) -> None:
    """Make a file created or renamed in ``folder`` survive a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Run the block as one transaction: committed when it finishes, rolled back when it raises.

    A failed COMMIT has already rolled back, so the ROLLBACK after it fails too; the error
    raised is always the original one."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        with suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise
