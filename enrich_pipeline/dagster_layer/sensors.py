"""``new_contacts_sensor``: a contact that lands is enriched within one sensor interval, by a run
over exactly the days its rows were received on. The cursor is the highest ingest id already
handed to a run, so no row is requested twice and none is skipped."""

from dagster import (
    DailyPartitionsDefinition,
    DefaultSensorStatus,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from enrich_pipeline.dagster_layer.jobs import enrich_contacts_job, range_run_request
from enrich_pipeline.dagster_layer.partitions import split_by_partitions
from enrich_pipeline.dagster_layer.resources import WarehouseResource
from enrich_pipeline.settings import AutomationSettings
from enrich_pipeline.settings_base import env_name
from enrich_pipeline.warehouse.automation import contiguous_ranges, rows_landed_after
from enrich_pipeline.warehouse.connection import WarehouseBusy

SENSOR_NAME = "new_contacts_sensor"

# A tick must end well inside Dagster's 60 s sensor timeout. Runs hold the lock only for short
# writes, so a few seconds usually gets in; if not, the next tick looks again.
SENSOR_LOCK_WAIT_S = 5.0

_PARTITION_START = env_name(AutomationSettings, "partition_start")


def _ingest_id(cursor: str | None) -> int:
    if cursor is None:
        return 0
    try:
        return int(cursor)
    except ValueError:
        raise ValueError(
            f"{SENSOR_NAME}'s cursor {cursor!r} is not an ingest id; set it to the highest "
            "ingest_id already enriched, or clear it to take every landed row"
        ) from None


def build_new_contacts_sensor(
    settings: AutomationSettings, partitions: DailyPartitionsDefinition
) -> SensorDefinition:
    """The sensor, polling every ``settings.sensor_interval_s`` and taking at most
    ``settings.sensor_max_rows_per_tick`` rows per tick."""
    max_rows = settings.sensor_max_rows_per_tick

    @sensor(
        name=SENSOR_NAME,
        job=enrich_contacts_job,
        minimum_interval_seconds=settings.sensor_interval_s,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            "Requests an enrich_contacts run for the received days of rows landed in "
            f"raw_contacts since the last tick (at most {max_rows:,} rows per tick; a bigger "
            "backlog takes more ticks). Cursor: the highest ingest_id already requested."
        ),
    )
    def new_contacts_sensor(
        context: SensorEvaluationContext, warehouse: WarehouseResource
    ) -> SensorResult | SkipReason:
        after = _ingest_id(context.cursor)
        if not warehouse.exists:
            return SkipReason(f"no warehouse at {warehouse.warehouse_path} yet: nothing has landed")
        try:
            with warehouse.read(SENSOR_LOCK_WAIT_S) as con:
                landed = rows_landed_after(con, after, max_rows)
        except WarehouseBusy as exc:
            return SkipReason(f"{exc}. Rows after ingest id {after} wait for the next tick.")
        if landed.last_ingest_id is None:
            return SkipReason(f"no rows landed after ingest id {after}")

        ids = f"{landed.first_ingest_id}-{landed.last_ingest_id}"
        days, no_partition = split_by_partitions(landed.rows_by_day, partitions)
        if no_partition:
            context.log.warning(
                f"{sum(landed.rows_by_day[d] for d in no_partition)} rows (ingest ids {ids}) "
                f"were received on days with no partition: {', '.join(map(str, no_partition))} "
                f"(before {_PARTITION_START}, or not come yet; stale_refresh_schedule "
                "picks up a future day once it has come)"
            )
        ranges = contiguous_ranges(days)
        context.log.info(
            f"{landed.rows} rows landed (ingest ids {ids}) on {len(days)} days: "
            f"{len(ranges)} runs ({', '.join(map(str, ranges)) or 'none'})"
            + ("; more rows wait for the next tick" if landed.rows == max_rows else "")
        )
        return SensorResult(
            run_requests=[
                range_run_request(
                    window,
                    run_key=f"new-contacts:{ids}:{window}",
                    tags={"enrich/trigger": SENSOR_NAME, "enrich/ingest_ids": ids},
                )
                for window in ranges
            ],
            skip_reason=None
            if ranges
            else SkipReason(f"rows {ids} were all received on days with no partition"),
            cursor=str(landed.last_ingest_id),
        )

    return new_contacts_sensor
