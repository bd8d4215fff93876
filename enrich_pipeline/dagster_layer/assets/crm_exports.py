"""``crm_exports``: one CRM-ready record per normalised email, in the warehouse and as an
import-ready CSV with HubSpot's column labels."""

import time
from pathlib import Path

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue

from enrich_pipeline.dagster_layer.assets.enriched_companies import enriched_companies
from enrich_pipeline.dagster_layer.enrichment_pass import utc_now
from enrich_pipeline.dagster_layer.metadata import duration_since, preview
from enrich_pipeline.dagster_layer.partitions import (
    contact_asset,
    describe_window,
    partition_window,
)
from enrich_pipeline.dagster_layer.resources import PipelineSettings, WarehouseResource
from enrich_pipeline.warehouse.crm import (
    EXPORT_FILE_NAME,
    export_crm_csv,
    export_is_current,
    merge_crm_contacts,
)


@contact_asset(
    deps=[enriched_companies],
    kinds={"duckdb", "csv"},
    description=(
        "Lead + person + company merged into one record per normalised email (table "
        "crm_contacts; what a person typed wins for name and phone, enrichment fills the rest) "
        "and written to crm_contacts.csv with HubSpot import labels; job_changed_at (CSV: Job "
        "Change Date) is the latest job change detected for the person."
    ),
)
def crm_exports(
    context: AssetExecutionContext, warehouse: WarehouseResource, pipeline: PipelineSettings
) -> MaterializeResult:
    started = time.monotonic()
    start, end = partition_window(context)
    with warehouse.connect() as con:
        merged = merge_crm_contacts(con, start, end, utc_now())
        rewrite = merged.changed or not export_is_current(con, pipeline.export_dir)
        if rewrite:
            path, exported = export_crm_csv(con, pipeline.export_dir)
        else:
            path = Path(pipeline.export_dir) / EXPORT_FILE_NAME
            exported = con.execute("SELECT count(*) FROM crm_contacts").fetchone()[0]
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
        f"updated, {merged.unchanged} unchanged, {merged.removed} removed; {path} "
        + (f"rewritten ({exported} rows)" if rewrite else "already current")
    )
    return MaterializeResult(
        metadata={
            "partition_window": describe_window(start, end),
            "crm_records_in_window": merged.records,
            "created": merged.created,
            "updated": merged.updated,
            "unchanged": merged.unchanged,
            "removed": merged.removed,
            "export_rewritten": rewrite,
            "email_found_by_enrichment": merged.from_enrichment_email,
            "records_with_job_change": job_changed,
            "export_path": MetadataValue.path(str(path.resolve())),
            "export_rows": exported,
            "duration_s": duration_since(started),
            "preview": preview(sample),
        }
    )
