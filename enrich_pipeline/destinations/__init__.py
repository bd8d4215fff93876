"""Dagster-free clients that write finished contact records back to CRMs."""
