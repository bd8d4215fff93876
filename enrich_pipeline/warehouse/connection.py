"""Short-lived DuckDB connections that wait out another process's write lock.

DuckDB lets one process write a database file at a time. Every unit of work opens a
connection, does its SQL and closes it in ``finally``; nobody holds one across API calls.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import duckdb
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

from enrich_pipeline.warehouse.schema import ensure_schema

log = logging.getLogger(__name__)


def is_lock_error(exc: BaseException) -> bool:
    """DuckDB reports another process's lock as an IOException mentioning the lock."""
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


class WarehouseBusy(RuntimeError):
    """Another process held the warehouse's write lock for longer than we were willing to wait."""


# Files this process holds open (``hold_open``), counted: their schema was ensured on opening.
_held: Counter[str] = Counter()
_held_lock = threading.Lock()
# Two of this process's connections creating the schema at once conflict in DuckDB's catalog.
_schema_lock = threading.Lock()


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
    ``"1GB"``) caps DuckDB's memory; past it, DuckDB spills to disk instead of growing."""
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
        con = retrying(duckdb.connect, str(path), read_only=read_only)
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
        if not read_only and not _is_held(path):
            with _schema_lock:
                ensure_schema(con)
        yield con
    finally:
        con.close()


@contextmanager
def hold_open(
    path: str | Path, *, max_hold_s: float, lock_timeout_s: float = 30.0
) -> Iterator[None]:
    """Keep the warehouse open in this process for a burst of short units of work, at most
    ``max_hold_s``.

    DuckDB shares one open database between a process's connections, so while it is held each
    ``connect`` costs a fraction of a millisecond instead of opening, and on closing
    checkpointing, the file (about 20 ms each). The holding connection runs no query. It is
    closed after ``max_hold_s`` even if the block is still running (waiting on a slow
    provider), so another process never waits longer than that for the write lock; later
    connects in the block then open the file as usual."""
    key = str(Path(path).resolve())
    with connect(path, lock_timeout_s=lock_timeout_s) as keeper:
        closed = threading.Event()

        def release() -> None:
            with _held_lock:
                if closed.is_set():
                    return
                closed.set()
                _held[key] -= 1
                if not _held[key]:
                    del _held[key]
            keeper.close()

        with _held_lock:
            _held[key] += 1
        timer = threading.Timer(max_hold_s, release)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            release()


def _is_held(path: Path) -> bool:
    with _held_lock:
        return bool(_held) and str(path.resolve()) in _held


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
