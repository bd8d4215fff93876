"""Dagster-free async client for the person/company enrichment API (Data Legion wire format)."""
