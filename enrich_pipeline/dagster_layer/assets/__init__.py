"""The four assets, in graph order."""

from enrich_pipeline.dagster_layer.assets.crm_exports import crm_exports
from enrich_pipeline.dagster_layer.assets.enriched_companies import enriched_companies
from enrich_pipeline.dagster_layer.assets.enriched_persons import enriched_persons
from enrich_pipeline.dagster_layer.assets.raw_contacts import raw_contacts

__all__ = ["crm_exports", "enriched_companies", "enriched_persons", "raw_contacts"]
