"""One daily partition per UTC day a contact was received on; every asset shares it and
backfills any range as a single run. The assets are declared without it and given it in
``definitions.py``, where the first day (a setting) is known."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    BetaWarning,
    DailyPartitionsDefinition,
    asset,
)


def contact_partitions(start: str) -> DailyPartitionsDefinition:
    # end_offset=1: today's partition exists, so a contact that lands now can be enriched now.
    return DailyPartitionsDefinition(start_date=start, timezone="UTC", end_offset=1)


def with_partitions(
    assets: Sequence[AssetsDefinition], partitions: DailyPartitionsDefinition
) -> list[AssetsDefinition]:
    return [
        asset.map_asset_specs(lambda spec: spec.replace_attributes(partitions_def=partitions))
        for asset in assets
    ]


def split_by_partitions(
    days: Iterable[date], partitions: DailyPartitionsDefinition
) -> tuple[list[date], list[date]]:
    """The days that have a partition now, and those that do not (before the partition start,
    or not come yet)."""
    first, last = partitions.get_first_partition_key(), partitions.get_last_partition_key()
    inside: list[date] = []
    outside: list[date] = []
    for day in days:
        key = day.isoformat()
        has_partition = first is not None and last is not None and first <= key <= last
        (inside if has_partition else outside).append(day)
    return inside, outside


# The assets that spend the provider's rate limit and credits. dagster.yaml bounds how many of
# them run at once across all runs; the client's shared limiter state splits the rate between them.
ENRICHMENT_API_POOL = "enrichment_api"

# Single-run backfills are what make a range one run; the beta notice would print on every load.
warnings.filterwarnings("ignore", category=BetaWarning, message=".*backfill_policy.*")


def contact_asset(**kwargs: Any) -> Any:
    """``@asset`` with the project's single-run backfills and group (partitions come with
    ``with_partitions``)."""
    return asset(
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
