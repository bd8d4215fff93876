"""``enriched_companies``: firmographics for every company domain the window's contacts
work at (free-mail domains skipped), when missing or past its TTL."""

from enrich_pipeline.dagster_layer.assets.enriched_persons import enriched_persons
from enrich_pipeline.dagster_layer.enrichment_asset import EnrichmentStep, enrichment_asset
from enrich_pipeline.warehouse.enrichment import stale_companies, store_companies

_PREVIEW = """
SELECT domain, status, enriched_at, name, industry, size, employee_count, founded
FROM company_enrichment
WHERE domain IN (SELECT company_domain FROM clean_contacts
                 WHERE partition_date >= ? AND partition_date < ?)
ORDER BY enriched_at DESC, domain LIMIT 10
"""

COMPANY_STEP = EnrichmentStep(
    kind="company", select=stale_companies, store=store_companies, preview_sql=_PREVIEW
)

enriched_companies = enrichment_asset(
    name="enriched_companies",
    upstream=enriched_persons,
    description=(
        "Company firmographics by domain (table company_enrichment, one row per domain): the "
        "matched person's company domain, else the lead's website or work-email domain."
    ),
    step=COMPANY_STEP,
)
