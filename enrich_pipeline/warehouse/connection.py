"""Short-lived DuckDB connections that wait out another process's write lock.

DuckDB lets one process write a database file at a time. Every unit of work opens a
connection, does its SQL and closes it in ``finally``; nobody holds one across API calls.
"""

from __future__ import annotations

import logging
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
        if not read_only:
            ensure_schema(con)
        yield con
    finally:
        con.close()


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
