"""new_contacts_sensor evaluated with Dagster's own sensor context on a real instance, over a temp
warehouse that rows are landed in as users land them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from itertools import count
from pathlib import Path

import pytest
from dagster import (
    DagsterInstance,
    DefaultSensorStatus,
    Definitions,
    RunRequest,
    SensorDefinition,
    SensorResult,
    SkipReason,
    build_sensor_context,
)

from enrich_pipeline.dagster_layer.jobs import (
    ENRICH_JOB_NAME,
    RANGE_END_TAG,
    RANGE_START_TAG,
    enrich_contacts_job,
)
from enrich_pipeline.dagster_layer.resources import WarehouseResource
from enrich_pipeline.dagster_layer.sensors import SENSOR_NAME
from enrich_pipeline.definitions import build_definitions
from enrich_pipeline.ingest import ingest_file
from enrich_pipeline.settings import Settings
from enrich_pipeline_tests.helpers import held_by_another_process, read_warehouse

TODAY = datetime.now(UTC).date()
_files = count()


def land(settings: Settings, directory: Path, *rows: tuple[str, date]) -> tuple[int, int]:
    """Land (email, received day) rows as one CSV; returns the first and last ingest id."""
    path = directory / f"landing_{next(_files)}.csv"
    lines = ["Email,First Name,Create Date"]
    lines += [f"{email},{email.split('@')[0]},{day.isoformat()} 09:30:00" for email, day in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = ingest_file(settings.warehouse_path, path)
    assert report.first_ingest_id is not None and report.last_ingest_id is not None
    return report.first_ingest_id, report.last_ingest_id


class Ticks:
    """Evaluates the sensor tick after tick as the daemon does, carrying its cursor."""

    def __init__(self, settings: Settings, instance: DagsterInstance) -> None:
        defs = build_definitions(settings)
        self.sensor: SensorDefinition = defs.resolve_sensor_def(SENSOR_NAME)
        self.instance = instance
        # No waiting on another process's lock: a held lock must be answered at once.
        self.resources = {
            **defs.resources,
            "warehouse": WarehouseResource.from_settings(settings, lock_timeout_s=0),
        }
        self.cursor: str | None = None

    def evaluate(self, cursor: str | None) -> SensorResult | SkipReason:
        context = build_sensor_context(
            instance=self.instance, cursor=cursor, resources=self.resources
        )
        return self.sensor(context)

    def tick(self) -> SensorResult | SkipReason:
        result = self.evaluate(self.cursor)
        if isinstance(result, SensorResult) and result.cursor is not None:
            self.cursor = result.cursor
        return result


def ranges(result: SensorResult | SkipReason) -> list[tuple[date, date]]:
    assert isinstance(result, SensorResult), result
    return [
        (date.fromisoformat(r.tags[RANGE_START_TAG]), date.fromisoformat(r.tags[RANGE_END_TAG]))
        for r in result.run_requests or []
    ]


def run_keys(result: SensorResult | SkipReason) -> list[str]:
    assert isinstance(result, SensorResult), result
    return [r.run_key for r in result.run_requests or [] if r.run_key]


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as dagster_instance:
        yield dagster_instance


@pytest.fixture
def ticks(settings: Settings, instance: DagsterInstance) -> Ticks:
    return Ticks(settings, instance)


def test_the_sensor_runs_by_default_at_the_configured_interval() -> None:
    sensor = build_definitions(Settings(sensor_interval_s=7)).resolve_sensor_def(SENSOR_NAME)
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 7
    assert sensor.job_name == ENRICH_JOB_NAME


def test_first_tick_requests_every_day_landed_so_far(ticks, settings, tmp_path) -> None:
    assert isinstance(ticks.tick(), SkipReason)  # no warehouse yet
    week_ago, two_ago, yesterday = (TODAY - timedelta(days=n) for n in (7, 2, 1))
    _, last = land(
        settings,
        tmp_path,
        ("a@acme.io", two_ago),
        ("b@acme.io", week_ago),
        ("c@acme.io", yesterday),
        ("d@acme.io", TODAY),
    )

    result = ticks.tick()

    # Contiguous days are one run; a gap starts another.
    assert ranges(result) == [(week_ago, week_ago), (two_ago, TODAY)]
    assert all(r.job_name == ENRICH_JOB_NAME for r in result.run_requests)
    assert ticks.cursor == str(last)


def test_new_rows_on_a_new_day_request_only_that_day(ticks, settings, tmp_path) -> None:
    yesterday = TODAY - timedelta(days=1)
    land(settings, tmp_path, ("a@acme.io", yesterday), ("b@acme.io", yesterday))
    first = ticks.tick()
    assert ranges(first) == [(yesterday, yesterday)]

    _, last = land(settings, tmp_path, ("c@acme.io", TODAY))
    second = ticks.tick()

    assert ranges(second) == [(TODAY, TODAY)]
    assert ticks.cursor == str(last)
    assert set(run_keys(first)).isdisjoint(run_keys(second))


def test_no_new_rows_skips_and_keeps_the_cursor(ticks, settings, tmp_path) -> None:
    land(settings, tmp_path, ("a@acme.io", TODAY))
    ticks.tick()
    cursor = ticks.cursor

    result = ticks.tick()

    assert isinstance(result, SkipReason)
    assert f"after ingest id {cursor}" in (result.skip_message or "")
    assert ticks.cursor == cursor


def test_a_repeated_tick_asks_for_the_same_runs_under_the_same_run_keys(
    ticks, settings, tmp_path
) -> None:
    # Dagster launches one run per run key; a tick evaluated again must not mint new keys.
    land(settings, tmp_path, ("a@acme.io", TODAY - timedelta(days=4)), ("b@acme.io", TODAY))
    once, again = ticks.evaluate(None), ticks.evaluate(None)
    assert run_keys(once) == run_keys(again)
    assert len(set(run_keys(once))) == len(once.run_requests) == 2


def test_a_backlog_bigger_than_one_tick_is_taken_in_bounded_ticks(
    settings, instance, tmp_path
) -> None:
    bounded = Settings(
        warehouse_path=settings.warehouse_path,
        export_dir=settings.export_dir,
        sensor_max_rows_per_tick=3,
    )
    days = [TODAY - timedelta(days=n % 4) for n in range(10)]
    first, last = land(bounded, tmp_path, *((f"p{n}@acme.io", d) for n, d in enumerate(days)))
    day_of = {first + n: day for n, day in enumerate(days)}
    ticks = Ticks(bounded, instance)

    covered: list[int] = []
    keys: list[str] = []
    results = [ticks.tick() for _ in range(5)]
    for result in results[:4]:
        requests: list[RunRequest] = result.run_requests
        low, high = (int(i) for i in requests[0].tags["enrich/ingest_ids"].split("-"))
        assert high - low + 1 <= 3
        taken = range(low, high + 1)
        # Every row taken falls in one of this tick's ranges.
        assert all(any(a <= day_of[i] <= b for a, b in ranges(result)) for i in taken)
        covered += taken
        keys += run_keys(result)

    assert isinstance(results[4], SkipReason)
    assert sorted(covered) == covered == list(range(first, last + 1))
    assert len(keys) == len(set(keys))
    assert ticks.cursor == str(last)


@pytest.mark.duckdb_file
@pytest.mark.slow
def test_a_warehouse_locked_by_another_process_skips_and_loses_nothing(
    ticks, settings, tmp_path
) -> None:
    land(settings, tmp_path, ("a@acme.io", TODAY))
    ticks.tick()
    cursor = ticks.cursor
    _, last = land(settings, tmp_path, ("b@acme.io", TODAY - timedelta(days=1)))

    with held_by_another_process(settings.warehouse_path):
        busy = ticks.tick()

    assert isinstance(busy, SkipReason)
    assert "locked by another process" in (busy.skip_message or "")
    assert ticks.cursor == cursor
    after = ticks.tick()
    assert ranges(after) == [(TODAY - timedelta(days=1), TODAY - timedelta(days=1))]
    assert ticks.cursor == str(last)


def test_rows_received_before_the_first_partition_do_not_hold_up_the_rest(
    ticks, settings, tmp_path
) -> None:
    _, old = land(settings, tmp_path, ("old@acme.io", date(2023, 6, 1)))
    alone = ticks.tick()
    assert isinstance(alone, SensorResult) and not alone.run_requests
    assert "no partition" in (alone.skip_reason.skip_message or "")
    assert ticks.cursor == str(old)

    _, last = land(settings, tmp_path, ("older@acme.io", date(2023, 5, 1)), ("new@acme.io", TODAY))
    assert ranges(ticks.tick()) == [(TODAY, TODAY)]
    assert ticks.cursor == str(last)


def test_a_requested_run_enriches_the_new_contacts_into_the_crm(
    ticks, settings, instance, tmp_path
) -> None:
    yesterday = TODAY - timedelta(days=1)
    land(settings, tmp_path, ("Ada@Analytical-Engines.io", yesterday), ("grace@gmail.com", TODAY))
    (request,) = ticks.tick().run_requests

    defs = Definitions.merge(build_definitions(settings), Definitions(jobs=[enrich_contacts_job]))
    run = defs.resolve_job_def(request.job_name).execute_in_process(
        instance=instance, tags=request.tags
    )

    assert run.success
    con = read_warehouse(settings.warehouse_path)
    crm = con.execute("SELECT email, partition_date FROM crm_contacts ORDER BY email").fetchall()
    con.close()
    assert crm == [("ada@analytical-engines.io", yesterday), ("grace@gmail.com", TODAY)]
    assert isinstance(ticks.tick(), SkipReason)
