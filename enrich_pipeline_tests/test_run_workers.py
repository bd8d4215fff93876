"""A run killed mid-way (kill -9, out of memory, a reboot) does not block the runs after it:
a real `dagster asset materialize` is killed while it holds the enrichment_api pool's only
slot, then found dead, marked failed and its slot freed, by the daemon's run monitoring or by
`enrich-pipeline recover-runs`, and the next run proceeds."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.launcher import WorkerStatus
from dagster._daemon.monitoring.concurrency import execute_concurrency_slots_iteration
from dagster._daemon.monitoring.run_monitoring import monitor_started_run

from enrich_pipeline.dagster_layer.partitions import ENRICHMENT_API_POOL
from enrich_pipeline.dagster_layer.run_workers import LocalRunLauncher
from enrich_pipeline.demo import materialise_command
from enrich_pipeline.ingest import ingest_file
from enrich_pipeline.settings import Settings, environment_for
from enrich_pipeline_tests.conftest import REPO
from enrich_pipeline_tests.helpers import materialise_range, write_small_csv

DAY = "2026-09-01"
# Long enough for any CLI start-up; the waits end as soon as their condition holds.
DEADLINE_S = 120.0


@dataclass
class KilledRun:
    home: Path
    env: dict[str, str]
    instance: DagsterInstance
    run_id: str


def _until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _slots_held(instance: DagsterInstance) -> list[str]:
    info = instance.event_log_storage.get_concurrency_info(ENRICHMENT_API_POOL)
    return [slot.run_id for slot in info.claimed_slots]


def _materialise(env: dict[str, str], **kwargs: Any) -> subprocess.Popen[str]:
    command = materialise_command(DAY, DAY)
    command[command.index("*")] = "enriched_persons"
    return subprocess.Popen(command, cwd=REPO, env=env, text=True, **kwargs)


@pytest.fixture
def killed_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KilledRun]:
    """The project's instance configuration with a pool of one slot, and a run killed (its
    whole process group, as an out-of-memory kill or a reboot would) while holding it."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    config = (REPO / "dagster.yaml").read_text()
    assert "default_limit: 3" in config
    (home / "dagster.yaml").write_text(config.replace("default_limit: 3", "default_limit: 1"))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    settings = Settings()
    ingest_file(settings.warehouse_path, write_small_csv(tmp_path))
    assert materialise_range(
        settings, DAY, DAY, assets=["clean_contacts"]
    ).success  # clean_contacts, for the look-ups

    # Answers take minutes: the run is mid-way, holding its slot, when it is killed.
    env = {**os.environ, **environment_for(latency_ms=600_000)}
    with DagsterInstance.get() as instance:
        proc = _materialise(env, start_new_session=True, stderr=subprocess.DEVNULL)
        try:
            _until(lambda: _slots_held(instance), "the run to claim the pool's slot")
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        (record,) = instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.STARTED]))
        assert _slots_held(instance) == [record.dagster_run.run_id]
        yield KilledRun(
            home, {**env, **environment_for(latency_ms=0)}, instance, record.dagster_run.run_id
        )


def _next_run_succeeds(env: dict[str, str]) -> None:
    proc = _materialise(env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, stderr = proc.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the next run is still blocked by the dead run's slot")
    assert proc.returncode == 0, stderr[-2000:]


@pytest.mark.slow
def test_without_a_daemon_recover_runs_fails_the_dead_run_and_frees_its_slot(
    killed_run: KilledRun,
) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("enrich-pipeline")), "recover-runs"],
        env=killed_run.env,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert done.returncode == 0, done.stderr
    assert f"run {killed_run.run_id}" in done.stdout
    assert "marked failed, 1 pool slot(s) freed" in done.stdout
    run = killed_run.instance.get_run_by_id(killed_run.run_id)
    assert run is not None and run.status == DagsterRunStatus.FAILURE
    assert _slots_held(killed_run.instance) == []
    _next_run_succeeds(killed_run.env)


@pytest.mark.slow
def test_the_daemons_run_monitoring_fails_the_dead_run_and_frees_its_slot(
    killed_run: KilledRun,
) -> None:
    instance = killed_run.instance
    assert isinstance(instance.run_launcher, LocalRunLauncher)
    assert instance.run_monitoring_enabled
    (record,) = instance.get_run_records(RunsFilter(run_ids=[killed_run.run_id]))
    health = instance.run_launcher.check_run_worker_health(record.dagster_run)
    assert health.status == WorkerStatus.FAILED
    assert "is gone" in str(health.msg)

    # What the daemon's monitoring loop runs each interval.
    logger = logging.getLogger("run_monitoring")
    monitor_started_run(instance, None, record, logger)  # type: ignore[arg-type]
    run = instance.get_run_by_id(killed_run.run_id)
    assert run is not None and run.status == DagsterRunStatus.FAILURE
    context = SimpleNamespace(instance=instance)

    def slots_freed() -> bool:
        list(execute_concurrency_slots_iteration(context, logger))  # type: ignore[arg-type]
        return not _slots_held(instance)

    _until(slots_freed, "the monitoring loop to free the failed run's slot")
    _next_run_succeeds(killed_run.env)


def test_a_live_run_is_healthy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with DagsterInstance.get() as instance:
        result = materialise_range(Settings(), DAY, DAY, instance)
        run = instance.get_run_by_id(result.run_id)
        assert run is not None
        # This process ran it and still runs.
        health = instance.run_launcher.check_run_worker_health(run)
    assert health.status == WorkerStatus.RUNNING
