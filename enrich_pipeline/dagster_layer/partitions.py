"""One daily partition per UTC day a contact was received on; every asset shares it and
backfills any range as a single run."""

from __future__ import annotations

import warnings
from datetime import date, timedelta
from typing import Any

from dagster import (
    AssetExecutionContext,
    BackfillPolicy,
    BetaWarning,
    DailyPartitionsDefinition,
    asset,
)

from enrich_pipeline.settings import Settings

# end_offset=1: today's partition exists, so a contact that lands now can be enriched now.
contact_partitions = DailyPartitionsDefinition(
    start_date=Settings.from_env().partition_start, timezone="UTC", end_offset=1
)


# The assets that spend the provider's rate limit and credits. dagster.yaml bounds how many of
# them run at once across all runs; the client's shared limiter state splits the rate between them.
ENRICHMENT_API_POOL = "enrichment_api"

# Single-run backfills are what make a range one run; the beta notice would print on every load.
warnings.filterwarnings("ignore", category=BetaWarning, message=".*backfill_policy.*")


def contact_asset(**kwargs: Any) -> Any:
    """``@asset`` with the project's partitioning, single-run backfills and group."""
    return asset(
        partitions_def=contact_partitions,
        backfill_policy=BackfillPolicy.single_run(),
        group_name="contact_enrichment",
        **kwargs,
    )


def partition_window(context: AssetExecutionContext) -> tuple[date, date]:
    """The run's received-date window, start inclusive, end exclusive."""
    window = context.partition_time_window
    return window.start.date(), window.end.date()


def describe_window(start: date, end: date) -> str:
    days = (end - start).days
    if days == 1:
        return start.isoformat()
    return f"{start.isoformat()} to {(end - timedelta(days=1)).isoformat()} ({days} days)"
