"""``clean_contacts``: the window's landed rows validated, normalised and deduplicated."""

import time
from datetime import UTC, datetime

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue

from enrich_pipeline.dagster_layer.assets.raw_contacts import raw_contacts
from enrich_pipeline.dagster_layer.metadata import duration_since, preview
from enrich_pipeline.dagster_layer.partitions import (
    contact_asset,
    describe_window,
    partition_window,
)
from enrich_pipeline.dagster_layer.resources import PipelineResource, WarehouseResource
from enrich_pipeline.warehouse.contacts import rebuild_clean_contacts


@contact_asset(
    deps=[raw_contacts],
    kinds={"duckdb"},
    description=(
        "The landed contacts of the partition's received dates, validated: emails trimmed "
        "and lower-cased, phones in E.164, company domain from website or work email, one row "
        "per identity (table clean_contacts). Unusable rows go to quarantine with a reason."
    ),
)
def clean_contacts(
    context: AssetExecutionContext, warehouse: WarehouseResource, pipeline: PipelineResource
) -> MaterializeResult:
    started = time.monotonic()
    start, end = partition_window(context)
    now = datetime.now(UTC).replace(tzinfo=None)
    with warehouse.connect() as con:
        report = rebuild_clean_contacts(con, start, end, now)
        sample = con.execute(
            """
            SELECT identity, identity_type, email, phone, first_name, last_name, company_name,
                   company_domain, sources, row_count
            FROM clean_contacts
            WHERE partition_date >= ? AND partition_date < ?
            ORDER BY last_received_at DESC LIMIT 10
            """,
            [start, end],
        ).df()
    context.log.info(
        f"{describe_window(start, end)}: {report.rows_in} landed rows -> "
        f"{report.clean_contacts} clean contacts, {report.duplicates_merged} duplicates merged, "
        f"{report.quarantined} quarantined"
    )
    return MaterializeResult(
        metadata={
            "partition_window": describe_window(start, end),
            "rows_in": report.rows_in,
            "days_rebuilt": report.days_rebuilt,
            "rows_checked_now": report.rows_checked,
            "clean_contacts": report.clean_contacts,
            "duplicates_merged": report.duplicates_merged,
            "quarantined": report.quarantined,
            "quarantine_reasons": MetadataValue.json(report.quarantine_reasons),
            "unparseable_phones_dropped": report.phones_dropped,
            "duration_s": duration_since(started),
            "preview": preview(sample, full_values=pipeline.full_previews),
        }
    )
