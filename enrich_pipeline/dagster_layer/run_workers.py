"""Runs whose process is gone (``kill -9``, out of memory, a reboot) stay STARTED and keep their
``enrichment_api`` pool slots, so every later run waits on "blocked by limit for pool" forever.

The process executing a run is the one that logged its RUN_START event; the event carries its
pid and time. A run whose process no longer runs (or whose pid now names a newer process) is
dead. Two ways find them: ``LocalRunLauncher`` lets the daemon's run monitoring ask (``make
dev``: it marks them failed and frees their slots), and ``fail_dead_runs`` does it at once
without a daemon (``enrich-pipeline recover-runs``, and before ``make demo``'s run).
Runs on this machine only: a pid says nothing about another machine's processes.
"""

from __future__ import annotations

from dataclasses import dataclass

from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus

from enrich_pipeline.processes import started_by


@dataclass(frozen=True)
class RunWorker:
    pid: int
    started_run_at: float  # when it logged RUN_START, seconds since the epoch

    def is_gone(self) -> bool:
        return not started_by(self.pid, self.started_run_at)

    def describe(self) -> str:
        return (
            f"the run's process (pid {self.pid}) is gone: killed, out of memory, or the "
            "machine restarted"
        )


def run_worker(instance: DagsterInstance, run_id: str) -> RunWorker | None:
    """The process executing the run (the latest to start it, if it was resumed); None before
    one has started it."""
    starts = instance.all_logs(run_id, of_type=DagsterEventType.RUN_START)
    for entry in reversed(starts):
        if entry.dagster_event is not None and entry.dagster_event.pid is not None:
            return RunWorker(entry.dagster_event.pid, entry.timestamp)
    return None


@dataclass(frozen=True)
class DeadRun:
    run_id: str
    job_name: str
    worker: RunWorker
    slots_freed: int


def fail_dead_runs(instance: DagsterInstance) -> list[DeadRun]:
    """Mark every STARTED run whose process is gone as failed and free the pool slots it held,
    so the runs waiting for them proceed."""
    dead = []
    for record in instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.STARTED])):
        run = record.dagster_run
        worker = run_worker(instance, run.run_id)
        if worker is None or not worker.is_gone():
            continue
        instance.report_run_failed(run, f"Marked failed: {worker.describe()}.")
        dead.append(DeadRun(run.run_id, run.job_name, worker, _free_slots(instance, run.run_id)))
    return dead


def _free_slots(instance: DagsterInstance, run_id: str) -> int:
    """Frees the pool slots the run holds; returns how many."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return 0
    held = sum(
        slot.run_id == run_id
        for pool in storage.get_concurrency_keys()
        for slot in storage.get_concurrency_info(pool).claimed_slots
    )
    storage.free_concurrency_slots_for_run(run_id)
    return held


class LocalRunLauncher(DefaultRunLauncher):
    """Dagster's default launcher, plus the health check run monitoring needs: without one,
    monitoring cannot tell a dead run from a slow one."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        worker = run_worker(self._instance, run.run_id)
        if worker is None:
            # Launched, not started yet: the start timeout covers a launch that never starts.
            return CheckRunHealthResult(WorkerStatus.RUNNING, "not started yet")
        if worker.is_gone():
            return CheckRunHealthResult(WorkerStatus.FAILED, worker.describe())
        return CheckRunHealthResult(WorkerStatus.RUNNING, f"pid {worker.pid} is running")
