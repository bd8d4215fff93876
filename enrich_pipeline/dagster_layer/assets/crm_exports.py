"""``crm_exports``: one CRM-ready record per normalised email in the warehouse, delivered to every
destination in ``ENRICH_CRM_DESTINATIONS`` (files, HubSpot), each receiving only what changed."""

import time
from typing import Any

from dagster import AssetExecutionContext, Failure, MaterializeResult

from enrich_pipeline.clock import utc_now
from enrich_pipeline.dagster_layer.assets.enriched_companies import enriched_companies
from enrich_pipeline.dagster_layer.destinations import (
    FileDestination,
    HubSpotDestination,
    deliver_to_each,
)
from enrich_pipeline.dagster_layer.metadata import duration_since, preview
from enrich_pipeline.dagster_layer.partitions import (
    contact_asset,
    describe_window,
    partition_window,
)
from enrich_pipeline.dagster_layer.resources import PipelineResource, WarehouseResource
from enrich_pipeline.warehouse.crm import merge_crm_contacts


@contact_asset(
    deps=[enriched_companies],
    kinds={"duckdb", "csv", "hubspot"},
    description=(
        "Lead + person + company merged into one record per normalised email (table "
        "crm_contacts, by the merge policy), then delivered to each configured destination: "
        "file (crm_contacts.csv with HubSpot import labels, crm_contacts.parquet) and/or "
        "HubSpot (batch upsert by email). Each destination receives the field profile's "
        "columns, and only the records that changed since it last received them."
    ),
)
def crm_exports(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    pipeline: PipelineResource,
    file_destination: FileDestination,
    hubspot_destination: HubSpotDestination,
) -> MaterializeResult:
    started = time.monotonic()
    start, end = partition_window(context)
    with warehouse.connect() as con:
        merged = merge_crm_contacts(con, start, end, utc_now(), pipeline.merge_policy)
        sample = con.execute(
            """
            SELECT email, first_name, last_name, job_title, company_name, industry,
                   employee_count, person_status, job_changed_at
            FROM crm_contacts WHERE partition_date >= ? AND partition_date < ?
            ORDER BY job_changed_at DESC NULLS LAST, email LIMIT 10
            """,
            [start, end],
        ).df()
        job_changed = con.execute(
            "SELECT count(*) FROM crm_contacts WHERE partition_date >= ? AND partition_date < ? "
            "AND job_changed_at IS NOT NULL",
            [start, end],
        ).fetchone()[0]  # type: ignore[index]
    context.log.info(
        f"{merged.records} CRM records in the window: {merged.created} new, {merged.updated} "
        f"updated, {merged.unchanged} unchanged, {merged.removed} removed"
    )
    metadata: dict[str, Any] = {
        "partition_window": describe_window(start, end),
        "crm_records_in_window": merged.records,
        "created": merged.created,
        "updated": merged.updated,
        "unchanged": merged.unchanged,
        "removed": merged.removed,
        "email_found_by_enrichment": merged.from_enrichment_email,
        "records_with_job_change": job_changed,
        "field_profile": pipeline.field_profile,
        "destinations": ", ".join(pipeline.crm_destinations),
    }
    delivered, failed = deliver_to_each(
        {"file": file_destination, "hubspot": hubspot_destination},
        pipeline,
        warehouse,
        context.log,
    )
    metadata.update(delivered)
    metadata["duration_s"] = duration_since(started)
    metadata["preview"] = preview(sample, full_values=pipeline.full_previews)
    if failed:
        raise Failure(description="; ".join(failed), metadata=metadata)
    return MaterializeResult(metadata=metadata)
