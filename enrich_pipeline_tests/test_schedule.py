"""stale_refresh_schedule evaluated with Dagster's own schedule context on a real instance, over
a temp warehouse whose enrichment records are backdated."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta

import pytest
from dagster import (
    DagsterInstance,
    DefaultScheduleStatus,
    Definitions,
    RunRequest,
    SkipReason,
    build_schedule_context,
)

from enrich_pipeline.dagster_layer.jobs import (
    ENRICH_JOB_NAME,
    RANGE_END_TAG,
    RANGE_START_TAG,
    enrich_contacts_job,
)
from enrich_pipeline.dagster_layer.resources import WarehouseResource
from enrich_pipeline.dagster_layer.schedules import SCHEDULE_NAME
from enrich_pipeline.definitions import build_definitions
from enrich_pipeline.provider.models import EnrichmentResult, Outcome
from enrich_pipeline.settings import Settings, environment_for
from enrich_pipeline.warehouse.connection import connect
from enrich_pipeline.warehouse.contacts import rebuild_clean_contacts
from enrich_pipeline.warehouse.enrichment import store_companies, store_persons
from enrich_pipeline_tests.helpers import held_by_another_process, read_warehouse

# This morning's 03:00 UTC tick; contacts were received on recent days so they have partitions.
SCHEDULED = datetime.combine(datetime.now(UTC).date(), time(3), tzinfo=UTC)
NOW = SCHEDULED.replace(tzinfo=None)


def day(n: int) -> date:
    return SCHEDULED.date() - timedelta(days=n)


class Warehouse:
    def __init__(self, settings: Settings) -> None:
        self.path = settings.warehouse_path

    def leads(self, *rows: tuple[str, date]) -> None:
        """Land (email, received day) rows and build their clean contacts."""
        with connect(self.path) as con:
            for email, received in rows:
                con.execute(
                    "INSERT INTO raw_contacts (source, received_at, landed_at, email) "
                    "VALUES ('web', ?, ?, ?)",
                    [datetime.combine(received, time(9)), NOW, email],
                )
            rebuild_clean_contacts(con, day(400), day(-1), NOW)

    def person(self, email: str, status: Outcome, days_ago: int, domain: str | None = None) -> None:
        record = {"company_domain": domain} if domain else None
        result = EnrichmentResult(key=email, status=status, record=record)
        with connect(self.path) as con:
            store_persons(con, [result], NOW - timedelta(days=days_ago))

    def company(self, domain: str, days_ago: int) -> None:
        result = EnrichmentResult(key=domain, status=Outcome.MATCHED, record={"name": domain})
        with connect(self.path) as con:
            store_companies(con, [result], NOW - timedelta(days=days_ago))


@pytest.fixture
def warehouse(settings: Settings) -> Warehouse:
    return Warehouse(settings)


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as dagster_instance:
        yield dagster_instance


@pytest.fixture
def evaluate(settings: Settings, instance: DagsterInstance):
    return evaluator(settings, instance)


def evaluator(settings: Settings, instance: DagsterInstance):
    """The schedule's evaluation at ``SCHEDULED``, with these settings."""
    defs = build_definitions(settings)
    schedule = defs.resolve_schedule_def(SCHEDULE_NAME)
    resources = {
        **defs.resources,
        "warehouse": WarehouseResource.from_settings(settings, lock_timeout_s=0),
    }

    def run() -> list[RunRequest] | SkipReason:
        context = build_schedule_context(
            instance=instance, scheduled_execution_time=SCHEDULED, resources=resources
        )
        return schedule(context)

    return run


def ranges(result: list[RunRequest] | SkipReason) -> list[tuple[date, date]]:
    assert isinstance(result, list), result
    return [
        (date.fromisoformat(r.tags[RANGE_START_TAG]), date.fromisoformat(r.tags[RANGE_END_TAG]))
        for r in result
    ]


def test_the_schedule_runs_daily_at_three_utc_by_default(settings: Settings) -> None:
    stale_refresh_schedule = build_definitions(settings).resolve_schedule_def(SCHEDULE_NAME)
    assert stale_refresh_schedule.cron_schedule == "0 3 * * *"
    assert stale_refresh_schedule.execution_timezone == "UTC"
    assert stale_refresh_schedule.default_status == DefaultScheduleStatus.RUNNING
    assert stale_refresh_schedule.job_name == ENRICH_JOB_NAME


@pytest.mark.parametrize(
    ("status", "days_ago", "requested"),
    [
        (Outcome.MATCHED, 31, True),
        (Outcome.MATCHED, 29, False),
        (Outcome.NO_MATCH, 15, True),
        (Outcome.NO_MATCH, 13, False),
        (Outcome.ERROR, 0, True),
    ],
)
def test_a_person_past_its_ttl_gets_its_partition_refreshed(
    warehouse, evaluate, status, days_ago, requested
) -> None:
    warehouse.leads(("stale@gmail.com", day(40)), ("fresh@gmail.com", day(20)))
    warehouse.person("stale@gmail.com", status, days_ago)
    warehouse.person("fresh@gmail.com", Outcome.MATCHED, 1)

    result = evaluate()

    if requested:
        assert ranges(result) == [(day(40), day(40))]
    else:
        assert isinstance(result, SkipReason)
        assert "no record is past its TTL" in (result.skip_message or "")


def test_contiguous_stale_days_are_one_run_keyed_by_the_scheduled_date(warehouse, evaluate) -> None:
    stale = [("a@gmail.com", day(12)), ("b@gmail.com", day(11)), ("c@gmail.com", day(10))]
    warehouse.leads(*stale, ("d@gmail.com", day(9)), ("e@gmail.com", day(5)))
    for email, _ in stale:
        warehouse.person(email, Outcome.MATCHED, 45)
    warehouse.person("d@gmail.com", Outcome.MATCHED, 2)
    warehouse.person("e@gmail.com", Outcome.NO_MATCH, 20)

    result = evaluate()

    assert ranges(result) == [(day(12), day(10)), (day(5), day(5))]
    keys = [r.run_key for r in result]
    assert all(key and SCHEDULED.date().isoformat() in key for key in keys)
    assert len(set(keys)) == 2
    assert all(r.job_name == ENRICH_JOB_NAME for r in result)


def test_a_company_past_its_ttl_refreshes_the_partitions_of_its_contacts(
    warehouse, evaluate
) -> None:
    warehouse.leads(("ann@acme.io", day(30)), ("bob@acme.io", day(3)), ("cat@globex.io", day(2)))
    for email, domain in [("ann", "acme.io"), ("bob", "acme.io"), ("cat", "globex.io")]:
        warehouse.person(f"{email}@{domain}", Outcome.MATCHED, 1, domain)
    warehouse.company("acme.io", 91)
    warehouse.company("globex.io", 89)

    assert ranges(evaluate()) == [(day(30), day(30)), (day(3), day(3))]


@pytest.mark.parametrize(("retention_days", "requested"), [(7, True), (30, False)])
def test_raw_answers_past_their_retention_get_a_run_of_the_latest_day(
    warehouse, instance, monkeypatch, retention_days, requested
) -> None:
    for name, value in environment_for(raw_retention_days=retention_days).items():
        monkeypatch.setenv(name, value)
    warehouse.leads(("a@gmail.com", day(9)), ("b@gmail.com", day(3)))
    # Fresh for their 30-day TTL; the raw answers are 10 days old.
    warehouse.person("a@gmail.com", Outcome.MATCHED, 10, "acme.io")
    warehouse.person("b@gmail.com", Outcome.MATCHED, 10, "acme.io")
    warehouse.company("acme.io", 1)

    result = evaluator(Settings(), instance)()

    if requested:
        assert ranges(result) == [(day(3), day(3))]
    else:
        assert isinstance(result, SkipReason)


def test_nothing_stale_skips(warehouse, evaluate) -> None:
    assert isinstance(evaluate(), SkipReason)  # no warehouse yet
    warehouse.leads(("a@gmail.com", day(3)))
    warehouse.person("a@gmail.com", Outcome.MATCHED, 1)
    assert isinstance(evaluate(), SkipReason)


@pytest.mark.duckdb_file
@pytest.mark.slow
def test_a_busy_warehouse_skips_with_the_reason(settings, warehouse, evaluate) -> None:
    warehouse.leads(("a@gmail.com", day(3)))
    with held_by_another_process(settings.warehouse_path):
        result = evaluate()
    assert isinstance(result, SkipReason)
    assert "locked by another process" in (result.skip_message or "")
    assert ranges(evaluate()) == [(day(3), day(3))]


def test_a_refresh_run_calls_the_api_only_for_the_stale(
    settings, warehouse, evaluate, instance
) -> None:
    warehouse.leads(("old@gmail.com", day(6)), ("new@gmail.com", day(6)))
    warehouse.person("old@gmail.com", Outcome.MATCHED, 40)
    warehouse.person("new@gmail.com", Outcome.MATCHED, 3)
    (request,) = evaluate()

    defs = Definitions.merge(build_definitions(settings), Definitions(jobs=[enrich_contacts_job]))
    run = defs.resolve_job_def(request.job_name).execute_in_process(
        instance=instance, tags=request.tags
    )

    assert run.success
    persons = run.asset_materializations_for_node("enriched_persons")[0].metadata
    assert persons["lookups_needed"].value == 1
    con = read_warehouse(settings.warehouse_path)
    ages = dict(con.execute("SELECT identity, enriched_at FROM person_enrichment").fetchall())
    con.close()
    assert ages["old@gmail.com"] > NOW - timedelta(days=1)
    assert ages["new@gmail.com"] == NOW - timedelta(days=3)
