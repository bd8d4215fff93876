"""Landings made outside Dagster (the intake service) shown on ``raw_contacts`` in the UI, as
runless materialisations: when leads landed, how many, and how many were quarantined."""

from __future__ import annotations

import os

from dagster import AssetMaterialization, DagsterInstance

from enrich_pipeline.intake.landing import LandingReport


def report_landing(report: LandingReport, source: str) -> None:
    """Record ``report`` on ``raw_contacts`` in the Dagster instance, if there is one
    (``DAGSTER_HOME`` set); counts only, never a lead's values."""
    if not os.environ.get("DAGSTER_HOME"):
        return
    with DagsterInstance.get() as instance:
        instance.report_runless_asset_event(
            AssetMaterialization(
                "raw_contacts",
                description=f"{report.landed} leads landed by {source}",
                metadata={
                    "source": source,
                    "landed": report.landed,
                    "quarantined": report.quarantined,
                    "journal_seq": report.last_seq,
                },
            )
        )
