"""Landing-to-CRM latency under ``make dev``: how long after a contact lands its ``crm_contacts``
row exists, with nobody launching anything.

Starts ``dagster dev`` (webserver and daemon) on a free port with its own DAGSTER_HOME, warehouse
and export dir, waits until ``new_contacts_sensor`` is ticking, then lands one new contact at a
time (a one-row CSV through ``ingest_file``, received now) and polls the warehouse read-only until
that email's CRM row appears. Landings are spread over random points of the sensor's cycle, as
real ones are. Prints p50 / p95 / max and every latency. Target: p50 ≤ 30 s.
Enrichment goes to the built-in sandbox provider (no API key is passed on).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from enrich_pipeline.dagster_layer.sensors import SENSOR_NAME
from enrich_pipeline.ingest import ingest_file
from enrich_pipeline.settings import SecretSettings, Settings, environment_for
from enrich_pipeline.settings_base import env_name
from enrich_pipeline.warehouse.connection import WarehouseBusy, connect

REPO = Path(__file__).resolve().parents[1]
TARGET_P50_S = 30.0
POLL_S = 0.5

_SENSOR_STATE = """
{ repositoriesOrError { ... on RepositoryConnection { nodes {
    sensors { name sensorState { status ticks(limit: 1) { status } } }
} } } }
"""

_SENSOR_RUNS = """
query ($value: String!) {
  runsOrError(filter: {tags: [{key: "enrich/trigger", value: $value}]}) {
    ... on Runs { results { status creationTime startTime endTime tags { key value } } }
  }
}
"""


class BenchError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(what: str, check: Any, timeout_s: float, process: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"dagster dev exited (code {process.returncode}) before {what}")
        answer = check()
        if answer:
            return answer
        time.sleep(POLL_S)
    raise BenchError(f"timed out after {timeout_s:.0f}s waiting for {what}")


@contextmanager
def dagster_dev(
    workspace: Path, home: Path, env: dict[str, str], log_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``dagster dev`` in its own process group, terminated with everything it started."""
    port = _free_port()
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env={**env, "DAGSTER_HOME": str(home)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield f"http://127.0.0.1:{port}", process
        finally:
            _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _graphql(client: httpx.Client, query: str, **variables: Any) -> dict[str, Any]:
    response = client.post("/graphql", json={"query": query, "variables": variables})
    response.raise_for_status()
    body = response.json()
    if body.get("errors"):
        raise BenchError(f"GraphQL error: {body['errors']}")
    return body["data"]


def _server_up(client: httpx.Client) -> bool:
    try:
        return client.get("/server_info").status_code == 200
    except httpx.TransportError:
        return False


def _sensor_ticking(client: httpx.Client) -> bool:
    data = _graphql(client, _SENSOR_STATE)["repositoriesOrError"]
    for repository in data.get("nodes", []):
        for sensor in repository["sensors"]:
            if sensor["name"] == SENSOR_NAME:
                state = sensor["sensorState"]
                return state["status"] == "RUNNING" and bool(state["ticks"])
    return False


def _crm_row_exists(warehouse: str, email: str) -> bool:
    try:
        # No waiting on a run's write lock: the run must not wait on us either.
        with connect(warehouse, read_only=True, lock_timeout_s=0) as con:
            found = con.execute("SELECT 1 FROM crm_contacts WHERE email = ?", [email]).fetchone()
    except WarehouseBusy:
        return False
    return found is not None


def land_one(warehouse: str, directory: Path, n: int) -> tuple[str, int]:
    """Land a one-row CSV received now; returns the email and its ingest id."""
    email = f"bench.{n}.{int(time.time())}@latency-bench.io"
    path = directory / f"contact_{n}.csv"
    received = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    path.write_text(
        f"Email,First Name,Last Name,Create Date\n{email},Bench,Contact {n},{received}\n",
        encoding="utf-8",
    )
    report = ingest_file(warehouse, path, source="latency bench")
    if report.accepted != 1 or report.last_ingest_id is None:
        raise BenchError(f"{path} did not land: {report}")
    return email, report.last_ingest_id


def percentile(values: list[float], share: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * share
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Sample:
    ingest_id: int
    landed_at: float  # epoch seconds, comparable with Dagster's run times
    latency_s: float


def _phases(samples: list[Sample], runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Each latency split at the run that carried the contact: waiting for a sensor tick,
    queueing and launching the run, and the run until the CRM row was seen."""
    spans = []
    for run in runs:
        ids = next(t["value"] for t in run["tags"] if t["key"] == "enrich/ingest_ids")
        low, high = (int(i) for i in ids.split("-"))
        spans.append((low, high, run))
    phases: dict[str, list[float]] = {"sensor tick": [], "queue + launch": [], "run": []}
    for sample in samples:
        run = next(r for low, high, r in spans if low <= sample.ingest_id <= high)
        seen = sample.landed_at + sample.latency_s
        phases["sensor tick"].append(run["creationTime"] - sample.landed_at)
        phases["queue + launch"].append(run["startTime"] - run["creationTime"])
        phases["run"].append(seen - run["startTime"])
    return phases


def measure(contacts: int, timeout_s: float, workspace: Path, seed: int) -> list[Sample]:
    interval = Settings.from_env().sensor_interval_s
    jitter = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="bench_latency_"))
    home = tmp / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    warehouse = str(tmp / "warehouse.duckdb")
    provider = {env_name(SecretSettings, "data_legion_api_key"), env_name(Settings, "base_url")}
    env = {key: value for key, value in os.environ.items() if key not in provider}
    env |= environment_for(warehouse_path=warehouse, export_dir=tmp / "exports")
    log_path = tmp / "dagster_dev.log"
    print(f"dagster dev log: {log_path}; 1-min load average {os.getloadavg()[0]:.1f}", flush=True)

    samples: list[Sample] = []
    with (
        dagster_dev(workspace, home, env, log_path) as (url, process),
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        _wait_for("the webserver", lambda: _server_up(client), 180, process)
        _wait_for(f"{SENSOR_NAME} to tick", lambda: _sensor_ticking(client), 180, process)
        print(f"webserver at {url}; {SENSOR_NAME} is running", flush=True)
        for n in range(1, contacts + 1):
            time.sleep(jitter.uniform(0, interval))
            email, ingest_id = land_one(warehouse, tmp, n)
            landed, landed_at = time.monotonic(), time.time()
            _wait_for(
                f"{email} in crm_contacts (see {log_path})",
                lambda email=email: _crm_row_exists(warehouse, email),
                timeout_s,
                process,
            )
            samples.append(Sample(ingest_id, landed_at, time.monotonic() - landed))
            print(f"contact {n:2d}: {samples[-1].latency_s:5.1f} s", flush=True)
        runs = _graphql(client, _SENSOR_RUNS, value=SENSOR_NAME)["runsOrError"]["results"]
    print(f"{len(runs)} runs launched by {SENSOR_NAME}: {dict(Counter(r['status'] for r in runs))}")
    print(f"1-min load average at the end: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
    for phase, values in _phases(samples, runs).items():
        print(f"  {phase:15s} median {statistics.median(values):5.1f} s, max {max(values):5.1f} s")
    shutil.rmtree(tmp, ignore_errors=True)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=180.0, help="per contact, seconds")
    parser.add_argument("--workspace", type=Path, default=REPO / "workspace.yaml")
    parser.add_argument("--seed", type=int, default=7, help="for the landing times")
    args = parser.parse_args()
    samples = measure(args.contacts, args.timeout, args.workspace.resolve(), args.seed)
    latencies = [sample.latency_s for sample in samples]
    p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
    print(
        f"landing -> crm_contacts over {len(latencies)} contacts: p50 {p50:.1f} s, "
        f"p95 {p95:.1f} s, max {max(latencies):.1f} s "
        f"(target p50 <= {TARGET_P50_S:.0f} s: {'met' if p50 <= TARGET_P50_S else 'NOT met'})"
    )
    print("latencies (s): " + ", ".join(f"{value:.1f}" for value in latencies))


if __name__ == "__main__":
    main()
