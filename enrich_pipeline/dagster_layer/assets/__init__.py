"""The assets, in graph order: where contacts land, then the four the pipeline materialises."""

from enrich_pipeline.dagster_layer.assets.clean_contacts import clean_contacts
from enrich_pipeline.dagster_layer.assets.crm_exports import crm_exports
from enrich_pipeline.dagster_layer.assets.enriched_companies import enriched_companies
from enrich_pipeline.dagster_layer.assets.enriched_persons import enriched_persons
from enrich_pipeline.dagster_layer.assets.raw_contacts import raw_contacts

# What a range of days builds, in order; raw_contacts is landed outside Dagster.
PIPELINE_ASSETS = [clean_contacts, enriched_persons, enriched_companies, crm_exports]

__all__ = [
    "PIPELINE_ASSETS",
    "clean_contacts",
    "crm_exports",
    "enriched_companies",
    "enriched_persons",
    "raw_contacts",
]
