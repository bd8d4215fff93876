"""``enriched_persons``: a person look-up for every identity that is missing or past its TTL."""

from enrich_pipeline.dagster_layer.assets.clean_contacts import clean_contacts
from enrich_pipeline.dagster_layer.enrichment_asset import EnrichmentStep, enrichment_asset
from enrich_pipeline.warehouse.enrichment import stale_persons, store_persons

_PREVIEW = """
SELECT p.identity, p.status, p.enriched_at, p.full_name, p.job_title, p.company_name,
       p.company_domain, p.seniority_level, p.city, p.country
FROM person_enrichment p
SEMI JOIN clean_contacts c ON c.identity = p.identity
    AND c.partition_date >= ? AND c.partition_date < ?
ORDER BY p.enriched_at DESC, p.identity LIMIT 10
"""

PERSON_STEP = EnrichmentStep(
    kind="person", select=stale_persons, store=store_persons, preview_sql=_PREVIEW
)

enriched_persons = enrichment_asset(
    name="enriched_persons",
    upstream=clean_contacts,
    description=(
        "Person profile for every clean contact (table person_enrichment, one row per identity: "
        "matched / no_match / error, enriched_at). Looked up by email, else phone, LinkedIn URL "
        "or name + company; records still inside their freshness window are not called again."
    ),
    step=PERSON_STEP,
)
