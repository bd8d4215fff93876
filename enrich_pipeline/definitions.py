"""``defs``: what ``dagster dev`` and ``dagster asset materialize -m enrich_pipeline.definitions``
load. Settings are read from the environment once, here; secrets reach resources only as
``EnvVar`` references, resolved when a run starts."""

from __future__ import annotations

from dagster import Definitions, definitions, in_process_executor

from enrich_pipeline.dagster_layer.assets import PIPELINE_ASSETS, raw_contacts
from enrich_pipeline.dagster_layer.checks import QUALITY_CHECKS, QualityThresholds, with_freshness
from enrich_pipeline.dagster_layer.destinations import FileDestination, HubSpotDestination
from enrich_pipeline.dagster_layer.jobs import enrich_contacts_job
from enrich_pipeline.dagster_layer.partitions import contact_partitions, with_partitions
from enrich_pipeline.dagster_layer.resources import (
    PipelineResource,
    WarehouseResource,
    enrichment_resource,
    run_time_secret,
    run_time_warehouse,
)
from enrich_pipeline.dagster_layer.schedules import build_stale_refresh_schedule
from enrich_pipeline.dagster_layer.sensors import build_new_contacts_sensor
from enrich_pipeline.settings import Settings


def build_definitions(settings: Settings) -> Definitions:
    partitions = contact_partitions(settings.partition_start)
    return Definitions(
        assets=[
            raw_contacts,
            *with_freshness(with_partitions(PIPELINE_ASSETS, partitions), settings),
        ],
        asset_checks=QUALITY_CHECKS,
        jobs=[enrich_contacts_job],
        sensors=[build_new_contacts_sensor(settings, partitions)],
        schedules=[build_stale_refresh_schedule(partitions)],
        # The graph is a chain over one single-writer DuckDB file: steps run one after another
        # in the run's own process instead of paying a process start-up per step.
        executor=in_process_executor,
        resources={
            "warehouse": WarehouseResource.from_settings(settings, **run_time_warehouse(settings)),
            "enrichment": enrichment_resource(
                settings,
                run_time_secret(settings, "data_legion_api_key"),
                **run_time_warehouse(settings),
            ),
            "pipeline": PipelineResource.from_settings(settings),
            "quality": QualityThresholds.from_settings(settings),
            "file_destination": FileDestination.from_settings(settings),
            "hubspot_destination": HubSpotDestination.from_settings(
                settings, access_token=run_time_secret(settings, "hubspot_access_token")
            ),
        },
    )


@definitions
def defs() -> Definitions:
    # Called when Dagster loads the code location, not at import.
    return build_definitions(Settings.from_env())
