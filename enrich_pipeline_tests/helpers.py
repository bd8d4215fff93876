"""Test helpers shared by the pipeline tests: a small messy CSV, running the graph, and the
sandbox served over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import httpx
import uvicorn
from dagster import AssetKey, DagsterInstance, ExecuteInProcessResult, materialize
from starlette.types import ASGIApp

from enrich_pipeline.definitions import build_definitions
from enrich_pipeline.sandbox import SandboxConfig, create_app
from enrich_pipeline.settings import Settings, environment_for
from enrich_pipeline.warehouse import postgres
from enrich_pipeline_tests.conftest import REPO

# The four assets a run materialises (raw_contacts is landed outside Dagster).
ASSET_KEYS = ["clean_contacts", "enriched_persons", "enriched_companies", "crm_exports"]

SMALL_CSV = """Email,First Name,Last Name,Phone Number,Company Name,Website URL,LinkedIn URL,Lead Source,Create Date
 Ada.Lovelace@Analytical-Engines.io ,Ada,Lovelace,(415) 555-0134,Analytical Engines,,,Web Form,2026-09-01 10:00:00
ada.lovelace@analytical-engines.io,Ada,,,,,,Partner Sync,2026-09-02 11:00:00
grace@gmail.com,Grace,Hopper,,,,,Web Form,2026-09-01 12:00:00
,Alan,Turing,+44 20 7946 0958,,,,Event Scan,2026-09-02 09:00:00
,Katherine,Johnson,,NASA Langley,langley.example.org,,CSV Import,2026-09-02 09:30:00
,,,,,,https://www.linkedin.com/in/edsger-dijkstra/,CSV Import,2026-09-03 08:00:00
not-an-email,Bad,Row,,,,,Web Form,2026-09-03 09:00:00
,Only,Name,,,,,Web Form,2026-09-03 09:30:00
"""


def write_small_csv(directory: Path) -> Path:
    path = directory / "contacts.csv"
    path.write_text(SMALL_CSV, encoding="utf-8")
    return path


def materialise_range(
    settings: Settings,
    first: str,
    last: str,
    instance: DagsterInstance | None = None,
    *,
    raise_on_error: bool = True,
    assets: Sequence[str] = ASSET_KEYS,
) -> ExecuteInProcessResult:
    defs = build_definitions(settings)
    return materialize(
        [defs.get_assets_def(AssetKey(key)) for key in assets],
        resources=defs.resources,
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": first,
            "dagster/asset_partition_range_end": last,
        },
        raise_on_error=raise_on_error,
    )


def read_warehouse(location: str | Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection to a test's warehouse, a DuckDB file or a Postgres database
    (``--warehouse=postgres``); the caller closes it."""
    if postgres.is_postgres(location):
        return postgres.open_duckdb(location, read_only=True)
    return duckdb.connect(str(location), read_only=True)


def rows_of(settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    """What ``sql`` reads from the test's warehouse, on a read-only connection."""
    with read_warehouse(settings.warehouse_path) as con:
        return con.execute(sql).fetchall()


def metadata_of(result: ExecuteInProcessResult, asset: str) -> dict[str, object]:
    events = result.asset_materializations_for_node(asset)
    assert events, f"{asset} was not materialised"
    return {k: v.value for k, v in events[0].metadata.items()}


def in_processes_together(
    target: Callable[..., None], argsets: list[tuple[Any, ...]], timeout_s: float = 120
) -> list[Any]:
    """``target(*args, start, results)`` in a spawned process per argset: each waits at the
    ``start`` barrier, so they run at once, and puts its outcome on ``results``; the outcomes."""
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(len(argsets)), context.Queue()
    processes = [context.Process(target=target, args=(*args, start, results)) for args in argsets]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=timeout_s) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    return outcomes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def sandbox_over_http(config: SandboxConfig) -> Iterator[str]:
    """The sandbox app served by uvicorn on 127.0.0.1, as `enrich-pipeline sandbox` does."""
    with served_over_http(create_app(config)) as url:
        yield url


@contextmanager
def served_over_http(app: ASGIApp) -> Iterator[str]:
    """An ASGI app served by uvicorn on 127.0.0.1 from a thread of this process; its URL."""
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=free_port(),
            log_level="warning",
            access_log=False,
        )
    )
    started = threading.Event()
    original_startup = server.startup

    async def startup(sockets=None) -> None:
        await original_startup(sockets)
        started.set()

    server.startup = startup  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert started.wait(timeout=30), "sandbox server did not start"
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


# A second process that opens the warehouse read-write and keeps it until told to close:
# DuckDB's lock as another writer holds it, synchronised over stdin/stdout, no sleeps.
# A Postgres warehouse's writer lock is held the same way, by a write connection.
_HOLDER = """
import sys
from enrich_pipeline.warehouse.connection import connect

with connect(sys.argv[1]):
    print("holding", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


@contextmanager
def held_by_another_process(path: str | Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "holding"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()


def release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("close\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "released"
    assert proc.wait() == 0


class FakeTime:
    """Virtual clock: sleeping records the duration and moves the clock on, instantly. Sleepers
    that overlap wake at their own deadlines, as they would in real time."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        wake_at = self.now + seconds
        await asyncio.sleep(0)
        self.now = max(self.now, wake_at)


# How long a started intake service may take to answer /healthz, or landing to catch up.
READY_S = 60.0


def intake_environment(folder: Path, **values: object) -> tuple[dict[str, str], str]:
    """What `enrich-pipeline serve` is started with: this environment plus ``values`` (settings
    by field name), on a free port with its journal in ``folder``; and its base URL."""
    port = free_port()
    env = {
        **os.environ,
        **environment_for(
            intake_port=port, intake_journal_path=folder / "intake.sqlite3", **values
        ),
    }
    return env, f"http://127.0.0.1:{port}"


@contextmanager
def serving(env: dict[str, str], base_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """`enrich-pipeline serve` as its own process, configured by ``env``, once it answers."""
    process = subprocess.Popen(
        [sys.executable, "-m", "enrich_pipeline.cli", "serve"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_health(base_url, lambda health: True)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=30)


def wait_for_health(base_url: str, done: Callable[[dict[str, Any]], bool]) -> None:
    """Polls /healthz until ``done(health)``: the service's own readiness, not a guessed sleep."""
    deadline = time.monotonic() + READY_S
    with httpx.Client(base_url=base_url, timeout=2) as client:
        while time.monotonic() < deadline:
            try:
                if done(client.get("/healthz").json()):
                    return
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.05)
    raise AssertionError("the intake service did not get there in time")
