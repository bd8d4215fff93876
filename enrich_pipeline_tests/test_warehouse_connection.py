"""Opening the warehouse while another process holds its write lock; transactions."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from enrich_pipeline.warehouse.connection import (
    WarehouseBusy,
    connect,
    hold_open,
    is_lock_error,
    transaction,
)
from enrich_pipeline_tests.helpers import held_by_another_process, release


# Opens the file for writing, says so, and keeps it open until told (a line on stdin) to close.
@pytest.mark.slow
def test_a_held_warehouse_raises_busy_naming_the_file(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    with connect(warehouse):
        pass

    with held_by_another_process(warehouse) as holder:
        with pytest.raises(WarehouseBusy) as busy, connect(warehouse, lock_timeout_s=1):
            pass
        assert str(warehouse) in str(busy.value)
        cause = busy.value.__cause__
        assert isinstance(cause, duckdb.IOException)
        assert is_lock_error(cause)

        release(holder)

        with connect(warehouse, lock_timeout_s=1) as con:
            con.execute(
                "INSERT INTO raw_contacts (source, received_at, landed_at) "
                "VALUES ('web', now(), now())"
            )
            assert con.execute("SELECT count(*) FROM raw_contacts").fetchone() == (1,)


def test_a_new_warehouse_gets_its_schema(tmp_path: Path) -> None:
    warehouse = tmp_path / "nested" / "warehouse.duckdb"

    with connect(warehouse) as con:
        tables = {row[0] for row in con.execute("SHOW TABLES").fetchall()}

    assert {"raw_contacts", "quarantine", "clean_contacts", "crm_contacts"} <= tables


def test_errors_other_than_the_lock_are_not_reported_as_busy(tmp_path: Path) -> None:
    missing = tmp_path / "missing.duckdb"

    with (
        pytest.raises(duckdb.IOException) as raised,
        connect(missing, read_only=True, lock_timeout_s=1),
    ):
        pass

    assert not isinstance(raised.value, WarehouseBusy)
    assert not is_lock_error(raised.value)


def test_is_lock_error_only_accepts_duckdb_lock_io_errors() -> None:
    assert is_lock_error(duckdb.IOException('Could not set lock on file "w.duckdb"'))
    assert not is_lock_error(duckdb.IOException('Cannot open file "w.duckdb": Is a directory'))
    assert not is_lock_error(OSError("lock held"))
    assert not is_lock_error(duckdb.CatalogException("Table lock does not exist"))


@pytest.fixture
def keyed() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("CREATE TABLE t (i INTEGER PRIMARY KEY)")
    return con


def test_a_transaction_commits_when_its_block_finishes(keyed: duckdb.DuckDBPyConnection) -> None:
    with transaction(keyed):
        keyed.execute("INSERT INTO t VALUES (1)")

    assert keyed.execute("SELECT i FROM t").fetchall() == [(1,)]


def test_a_transaction_rolls_back_when_its_block_raises(keyed: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(RuntimeError, match="stop"), transaction(keyed):
        keyed.execute("INSERT INTO t VALUES (1)")
        raise RuntimeError("stop")

    assert keyed.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_a_failed_commit_raises_its_own_error(keyed: duckdb.DuckDBPyConnection) -> None:
    # The other cursor commits the same key first, so this COMMIT fails (and rolls back);
    # the ROLLBACK after it finds no transaction, and must not hide why the commit failed.
    with pytest.raises(duckdb.TransactionException, match="Failed to commit"), transaction(keyed):
        keyed.execute("INSERT INTO t VALUES (1)")
        keyed.cursor().execute("INSERT INTO t VALUES (1)")

    assert keyed.execute("SELECT count(*) FROM t").fetchone() == (1,)


def _can_another_process_write(warehouse: Path) -> bool:
    probe = (
        "import sys, duckdb\n"
        "try:\n"
        "    duckdb.connect(sys.argv[1]).close()\n"
        "except duckdb.IOException:\n"
        "    sys.exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(warehouse)], timeout=60)
    return done.returncode == 0


@pytest.mark.slow
def test_a_held_warehouse_is_let_go_after_its_linger_and_by_its_deadline(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    with hold_open(warehouse, max_hold_s=60, linger_s=0.2):
        with connect(warehouse) as con:
            con.execute(
                "INSERT INTO raw_contacts (source, received_at, landed_at) "
                "VALUES ('a', now(), now())"
            )
        assert not _can_another_process_write(warehouse), "held while the block runs"
    # A second hold right after the first finds the file still open.
    with hold_open(warehouse, max_hold_s=60, linger_s=0.0):
        assert not _can_another_process_write(warehouse)
    # Let go once the first hold's linger is over (a probe can be quicker than 0.2 s), long
    # before the 60 s deadline.
    released = time.monotonic()
    while not _can_another_process_write(warehouse):
        assert time.monotonic() - released < 30, "held long after every linger ended"

    # A block that outlasts max_hold_s (a slow provider) lets another process in meanwhile.
    with hold_open(warehouse, max_hold_s=0.3, linger_s=5):
        opened = time.monotonic()
        while not _can_another_process_write(warehouse):
            assert time.monotonic() - opened < 30, "still held long past max_hold_s"
        with connect(warehouse) as con:
            (rows,) = con.execute("SELECT count(*) FROM raw_contacts").fetchone()
    assert rows == 1
