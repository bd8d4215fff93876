"""``defs``: what ``dagster dev`` and ``dagster asset materialize -m enrich_pipeline.definitions``
load. Settings come from the environment; the API key through ``EnvVar`` only."""

from __future__ import annotations

import os

from dagster import Definitions, EnvVar, in_process_executor

from enrich_pipeline.dagster_layer.assets import (
    crm_exports,
    enriched_companies,
    enriched_persons,
    raw_contacts,
)
from enrich_pipeline.dagster_layer.checks import QUALITY_CHECKS, QualityThresholds, with_freshness
from enrich_pipeline.dagster_layer.destinations import FileDestination, HubSpotDestination
from enrich_pipeline.dagster_layer.jobs import enrich_contacts_job
from enrich_pipeline.dagster_layer.resources import (
    EnrichmentResource,
    PipelineSettings,
    WarehouseResource,
)
from enrich_pipeline.dagster_layer.schedules import stale_refresh_schedule
from enrich_pipeline.dagster_layer.sensors import build_new_contacts_sensor
from enrich_pipeline.destinations.hubspot import TOKEN_SETTING
from enrich_pipeline.field_profiles import field_profile
from enrich_pipeline.settings import Settings

API_KEY_ENV = "DATA_LEGION_API_KEY"


def build_definitions(settings: Settings) -> Definitions:
    # EnvVar fails a run when its variable is unset; unset is how a user asks for the sandbox.
    api_key = EnvVar(API_KEY_ENV) if os.environ.get(API_KEY_ENV) else None
    hubspot_token = EnvVar(TOKEN_SETTING) if os.environ.get(TOKEN_SETTING) else None
    profile = field_profile(settings.field_profile)
    return Definitions(
        assets=with_freshness(
            [raw_contacts, enriched_persons, enriched_companies, crm_exports], settings
        ),
        asset_checks=QUALITY_CHECKS,
        jobs=[enrich_contacts_job],
        sensors=[build_new_contacts_sensor(settings)],
        schedules=[stale_refresh_schedule],
        # The graph is a chain over one single-writer DuckDB file: steps run one after another
        # in the run's own process instead of paying a process start-up per step.
        executor=in_process_executor,
        resources={
            "warehouse": WarehouseResource(
                path=settings.warehouse_path, memory_limit=settings.duckdb_memory_limit
            ),
            "enrichment": EnrichmentResource(
                api_key=api_key,
                base_url=settings.base_url,
                use_bulk=settings.use_bulk,
                bulk_size=settings.bulk_size,
                max_concurrency=settings.max_concurrency,
                max_attempts=settings.max_attempts,
                max_credits_per_run=settings.max_credits_per_run,
                request_timeout_s=settings.request_timeout_s,
                person_fields=profile.person_include_fields,
                company_fields=profile.company_include_fields,
            ),
            "pipeline": PipelineSettings(
                person_ttl_days=settings.person_ttl_days,
                company_ttl_days=settings.company_ttl_days,
                no_match_retry_days=settings.no_match_retry_days,
                chunk_size=settings.chunk_size,
                field_profile=profile.name,
                min_match_confidence=settings.min_match_confidence,
                crm_destinations=list(settings.crm_destinations),
            ),
            "quality": QualityThresholds.from_settings(settings),
            "file_destination": FileDestination(export_dir=settings.export_dir),
            "hubspot_destination": HubSpotDestination(
                access_token=hubspot_token, base_url=settings.hubspot_base_url
            ),
        },
    )


defs = build_definitions(Settings.from_env())
