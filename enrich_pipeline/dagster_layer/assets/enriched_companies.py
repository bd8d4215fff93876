"""``enriched_companies``: firmographics for every company domain the window's contacts
work at (free-mail domains skipped), when missing or past its TTL."""

import time

from dagster import AssetExecutionContext, MaterializeResult

from enrich_pipeline.dagster_layer.assets.enriched_persons import enriched_persons
from enrich_pipeline.dagster_layer.enrichment_pass import run_enrichment_pass, utc_now
from enrich_pipeline.dagster_layer.partitions import (
    ENRICHMENT_API_POOL,
    contact_asset,
    describe_window,
    partition_window,
)
from enrich_pipeline.dagster_layer.resources import (
    EnrichmentResource,
    PipelineSettings,
    WarehouseResource,
)
from enrich_pipeline.warehouse.enrichment import stale_companies, store_companies

_PREVIEW = """
SELECT domain, status, enriched_at, name, industry, size, employee_count, founded
FROM company_enrichment
WHERE domain IN (SELECT company_domain FROM clean_contacts
                 WHERE partition_date >= ? AND partition_date < ?)
ORDER BY enriched_at DESC, domain LIMIT 10
"""


@contact_asset(
    deps=[enriched_persons],
    kinds={"duckdb", "api"},
    pool=ENRICHMENT_API_POOL,
    description=(
        "Company firmographics by domain (table company_enrichment, one row per domain): the "
        "matched person's company domain, else the lead's website or work-email domain."
    ),
)
def enriched_companies(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    enrichment: EnrichmentResource,
    pipeline: PipelineSettings,
) -> MaterializeResult:
    started = time.monotonic()
    start, end = partition_window(context)
    with warehouse.connect() as con:
        selection = stale_companies(con, start, end, utc_now(), pipeline.freshness)
    return run_enrichment_pass(
        context,
        kind="company",
        window=describe_window(start, end),
        selection=selection,
        enrichment=enrichment,
        warehouse=warehouse,
        store=store_companies,
        chunk_size=pipeline.chunk_size,
        preview_sql=_PREVIEW,
        preview_params=[start, end],
        started=started,
    )
