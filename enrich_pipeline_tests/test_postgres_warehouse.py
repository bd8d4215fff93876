"""The warehouse in Postgres (ENRICH_WAREHOUSE_URL=postgresql://…): what a file gave for free,
one writer at a time and a schema that is simply there, holds across processes; the URL's
password is in no message and no resource the UI shows. The pipeline's own behaviour on
Postgres is the rest of the suite, run with ``--warehouse=postgres`` (`make test-postgres`)."""

from __future__ import annotations

import multiprocessing
from urllib.parse import urlsplit, urlunsplit

import pytest

from enrich_pipeline.definitions import build_definitions
from enrich_pipeline.settings import Settings
from enrich_pipeline.warehouse.connection import connect, transaction
from enrich_pipeline.warehouse.postgres import WarehouseUnreachable, masked
from enrich_pipeline_tests.helpers import in_processes_together, read_warehouse

pytestmark = pytest.mark.postgres

WRITERS = 3
ROUNDS = 40


def _count_up(url: str, start: multiprocessing.synchronize.Barrier, results) -> None:
    """Read-modify-write of one counter row: without one writer at a time, two writers read
    the same value and an increment is lost."""
    start.wait()
    for _ in range(ROUNDS):
        with connect(url) as con, transaction(con):
            (value,) = con.execute(
                "SELECT last_seq FROM intake_progress WHERE journal_id = 'counter'"
            ).fetchone()
            con.execute(
                "UPDATE intake_progress SET last_seq = ? WHERE journal_id = 'counter'", [value + 1]
            )
    results.put("done")


def test_writers_on_several_machines_take_turns_and_lose_no_update(postgres_database: str) -> None:
    with connect(postgres_database) as con:
        con.execute("INSERT INTO intake_progress VALUES ('counter', 0, now())")

    finished = in_processes_together(_count_up, [(postgres_database,)] * WRITERS)

    assert finished == ["done"] * WRITERS
    with read_warehouse(postgres_database) as con:
        (value,) = con.execute(
            "SELECT last_seq FROM intake_progress WHERE journal_id = 'counter'"
        ).fetchone()
    assert value == WRITERS * ROUNDS


def _first_connect(url: str, start: multiprocessing.synchronize.Barrier, results) -> None:
    start.wait()
    with connect(url, read_only=True) as con:
        results.put(con.execute("SELECT count(*) FROM raw_contacts").fetchone()[0])


def test_processes_meeting_an_empty_database_all_find_the_schema(postgres_database: str) -> None:
    assert in_processes_together(_first_connect, [(postgres_database,)] * 4) == [0] * 4


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username or 'postgres'}:{password}@{parts.hostname or ''}"
    return urlunsplit(parts._replace(netloc=netloc, path="/no_such_database"))


def test_a_password_in_the_url_is_in_no_error(postgres_database: str) -> None:
    url = _with_password(postgres_database, "s3cret-pw")

    with pytest.raises(WarehouseUnreachable) as raised, connect(url):
        pass

    assert "s3cret-pw" not in str(raised.value)
    assert "no_such_database" in str(raised.value)  # it still says which warehouse
    assert masked("postgresql://bob:pw@db/wh") == "postgresql://bob:***@db/wh"


def test_a_password_in_the_url_is_read_at_run_time_not_shown_in_the_definitions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENRICH_WAREHOUSE_URL", "postgresql://bob:s3cret-pw@db.example/wh")
    monkeypatch.setenv("DATA_LEGION_API_KEY", "dl-key")

    defs = build_definitions(Settings())

    assert "s3cret-pw" not in repr(defs.resources)
    assert defs.resources["warehouse"].warehouse_path == "ENRICH_WAREHOUSE_URL"  # an EnvVar
