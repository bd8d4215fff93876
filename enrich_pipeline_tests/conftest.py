"""Shared fixtures: every test starts from a clean configuration with its state in its own temp
folder, a quiet fast sandbox, and the sample CSV; tests marked ``postgres`` get a real Postgres."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from enrich_pipeline.intake.journal import Journal, journal_location, open_journal
from enrich_pipeline.intake.mover import JournalMover
from enrich_pipeline.settings import (
    Settings,
    WarehouseSettings,
    declared_settings,
    environment_for,
)
from enrich_pipeline.settings_base import env_name

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CSV = REPO / "data" / "sample_contacts.csv"


def isolate_configuration(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Whatever the shell exports (a real API key, another partition start, another warehouse)
    does not reach the test; every state directory is in ``folder``; the sandbox answers without
    its simulated latency."""
    # The project's Dagster instance is not the tests': a service a test starts would otherwise
    # record its landings there.
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    declared = set(declared_settings())
    # pydantic-settings matches variable names case-insensitively.
    for name in list(os.environ):
        if name.upper() in declared or name.upper().startswith("ENRICH_"):
            monkeypatch.delenv(name)
    for name, value in environment_for(
        warehouse_path=folder / "warehouse.duckdb",
        export_dir=folder / "exports",
        intake_journal_path=folder / "intake.sqlite3",
        limiter_dir=folder / "ratelimit",
        latency_ms=0,
    ).items():
        monkeypatch.setenv(name, value)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--warehouse",
        choices=("duckdb", "postgres"),
        default="duckdb",
        help="where each test's warehouse is: a DuckDB file (default) or a Postgres database "
        "of its own on an embedded server (`make test-postgres`)",
    )


@pytest.fixture(autouse=True)
def _isolated_configuration(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    isolate_configuration(monkeypatch, tmp_path)
    if request.node.get_closest_marker("duckdb_file") and _on_postgres(request):
        pytest.skip("about the DuckDB file itself")
    warehouse_as_asked(request, monkeypatch)


def _on_postgres(request: pytest.FixtureRequest) -> bool:
    return request.config.getoption("--warehouse") == "postgres"


def warehouse_as_asked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``--warehouse=postgres``, the warehouse is a new database on the session's server
    (left for the server's end to delete)."""
    if _on_postgres(request):
        from enrich_pipeline_tests.postgres import create_database

        name = f"test_{uuid.uuid4().hex[:12]}"
        url = create_database(request.getfixturevalue("postgres_url"), name)
        monkeypatch.setenv(env_name(WarehouseSettings, "warehouse_path"), url)


@pytest.fixture
def settings() -> Settings:
    return Settings()


@pytest.fixture
def journal(settings: Settings) -> Iterator[Journal]:
    """The test's intake journal: a file of its own, or in its Postgres warehouse."""
    opened = open_journal(journal_location(settings))
    yield opened
    opened.close()


@pytest.fixture
def mover(journal: Journal, settings: Settings) -> JournalMover:
    """Lands ``journal`` in the test's warehouse; not started: tests call ``land_pending``."""
    return JournalMover(journal, settings.warehouse_path)


@pytest.fixture
def anyio_backend() -> str:
    # The intake app's tests run on asyncio, as uvicorn serves it.
    return "asyncio"


# A real Postgres server (enrich_pipeline_tests/postgres.py) for the tests marked `postgres`: here
# rather than in that module so every test file sees the fixtures without importing them.


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test using the server is marked `postgres` even if its file forgot to, so `make test`
    (-m "not postgres") never starts one. First, before -m deselects."""
    for item in items:
        if "postgres_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One embedded Postgres server per session (per xdist worker), started by the first test
    that asks and stopped, its data deleted, when the session ends: the URL of its ``postgres``
    database (``postgresql+psycopg2://``, over a Unix socket)."""
    from enrich_pipeline_tests.postgres import embedded_postgres

    with embedded_postgres() as url:
        yield url


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[str]:
    """An empty database of the test's own on the session's server, dropped after it: the URL."""
    from enrich_pipeline_tests.postgres import create_database, drop_database

    name = f"test_{uuid.uuid4().hex[:12]}"
    url = create_database(postgres_url, name)
    yield url
    drop_database(postgres_url, name)
