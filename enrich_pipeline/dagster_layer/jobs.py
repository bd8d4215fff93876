"""``enrich_contacts``: the four pipeline assets as one partitioned job, and the run request for a
range of its days. The sensor and the schedule launch it; a range of days is always one run."""

from __future__ import annotations

from collections.abc import Mapping

from dagster import AssetSelection, RunRequest, define_asset_job

from enrich_pipeline.dagster_layer.assets import PIPELINE_ASSETS
from enrich_pipeline.warehouse.automation import DayRange

ENRICH_JOB_NAME = "enrich_contacts"

# The run tags Dagster's own single-run backfills use for a run over a partition key range.
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

enrich_contacts_job = define_asset_job(
    name=ENRICH_JOB_NAME,
    selection=AssetSelection.assets(*PIPELINE_ASSETS),
    description=(
        "clean_contacts → enriched_persons → enriched_companies → crm_exports over a range of "
        "received days, as one run. Launched by new_contacts_sensor and stale_refresh_schedule."
    ),
)


def range_run_request(days: DayRange, run_key: str, tags: Mapping[str, str]) -> RunRequest:
    return RunRequest(
        run_key=run_key,
        job_name=ENRICH_JOB_NAME,
        tags={
            **tags,
            RANGE_START_TAG: days.first.isoformat(),
            RANGE_END_TAG: days.last.isoformat(),
        },
    )
