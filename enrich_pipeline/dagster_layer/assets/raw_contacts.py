"""``raw_contacts``: where contacts land, upstream of everything else. Dagster does not
materialise it: ``enrich-pipeline ingest`` appends to it, and ``new_contacts_sensor`` watches it."""

from dagster import AssetSpec

raw_contacts = AssetSpec(
    "raw_contacts",
    group_name="contact_enrichment",
    kinds={"duckdb"},
    description=(
        "Landed rows, append-only (table raw_contacts): the source's values as given, with "
        "ingest_id, source and received_at. Written by `enrich-pipeline ingest`; rows that "
        "cannot land go to the quarantine table with their reason."
    ),
)
