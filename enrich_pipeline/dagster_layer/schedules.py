"""``stale_refresh_schedule``: every day at 03:00 UTC, an enrich_contacts run for every range of
days holding a record past its TTL, so stale records are refreshed without anyone asking. The
assets then call the API only for the stale records."""

from datetime import UTC

from dagster import (
    DailyPartitionsDefinition,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from enrich_pipeline.dagster_layer.jobs import enrich_contacts_job, range_run_request
from enrich_pipeline.dagster_layer.partitions import split_by_partitions
from enrich_pipeline.dagster_layer.resources import PipelineResource, WarehouseResource
from enrich_pipeline.settings import AutomationSettings, PrivacySettings
from enrich_pipeline.settings_base import env_name
from enrich_pipeline.warehouse.automation import contiguous_ranges, refresh_needs
from enrich_pipeline.warehouse.connection import WarehouseBusy

SCHEDULE_NAME = "stale_refresh_schedule"

# Evaluation times out at 60 s; a missed refresh waits a day, so wait longer than the sensor.
SCHEDULE_LOCK_WAIT_S = 30.0

_PARTITION_START = env_name(AutomationSettings, "partition_start")
_RAW_RETENTION = env_name(PrivacySettings, "raw_retention_days")


def build_stale_refresh_schedule(partitions: DailyPartitionsDefinition) -> ScheduleDefinition:
    """The schedule, requesting runs only for days that have a partition."""

    @schedule(
        name=SCHEDULE_NAME,
        job=enrich_contacts_job,
        cron_schedule="0 3 * * *",
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
        description=(
            "Daily at 03:00 UTC: an enrich_contacts run per contiguous range of days holding a "
            "person, no-match or company record past its TTL, an error, a record never "
            "enriched, or landed rows not yet built; or, when none does, the latest day, to clear "
            "raw answers past their retention."
        ),
    )
    def stale_refresh_schedule(
        context: ScheduleEvaluationContext, warehouse: WarehouseResource, pipeline: PipelineResource
    ) -> list[RunRequest] | SkipReason:
        scheduled = context.scheduled_execution_time.astimezone(UTC)
        if not warehouse.exists:
            return SkipReason(f"no warehouse at {warehouse.warehouse_path} yet: nothing to refresh")
        try:
            with warehouse.read(SCHEDULE_LOCK_WAIT_S) as con:
                needs = refresh_needs(
                    con,
                    scheduled.replace(tzinfo=None),
                    pipeline.freshness,
                    pipeline.raw_retention_days,
                )
        except WarehouseBusy as exc:
            return SkipReason(f"{exc}. Stale records wait for the next refresh.")
        days, no_partition = split_by_partitions(needs.days, partitions)
        if no_partition:
            context.log.warning(
                f"{len(no_partition)} days with work have no partition (before "
                f"{_PARTITION_START}, or not come yet): {', '.join(map(str, no_partition))}"
            )
        if not days:
            return SkipReason("no record is past its TTL")
        ranges = contiguous_ranges(days)
        context.log.info(
            f"{needs.stale_persons} person and {needs.stale_companies} company records to refresh, "
            f"{len(needs.unbuilt_days)} days with rows not yet built, {needs.expired_raw} raw "
            f"answers past {_RAW_RETENTION}: {len(days)} days in "
            f"{len(ranges)} runs ({', '.join(map(str, ranges))})"
        )
        day = scheduled.date().isoformat()
        return [
            range_run_request(
                window,
                run_key=f"stale-refresh:{day}:{window}",
                tags={"enrich/trigger": SCHEDULE_NAME, "enrich/refresh_date": day},
            )
            for window in ranges
        ]

    return stale_refresh_schedule
