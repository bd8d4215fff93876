"""Metadata every materialisation shows in the UI: the numbers a user asks about first."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

from enrich_pipeline.enrichment_pass import PassReport
from enrich_pipeline.masking import mask_frame
from enrich_pipeline.provider.models import CallStats, Kind
from enrich_pipeline.warehouse.enrichment import StaleSelection

PREVIEW_ROWS = 10


def preview(frame: pd.DataFrame, *, full_values: bool) -> MetadataValue:
    """A small table of what was written; values as text so the UI shows them as stored.
    Personal values are masked unless ``full_values`` (``ENRICH_FULL_PREVIEWS``): Dagster's
    event log keeps them, and no erasure reaches it."""
    head = frame.head(PREVIEW_ROWS)
    head = head if full_values else mask_frame(head)
    head = head.astype(object).where(head.notna(), None)
    return MetadataValue.table(
        records=[
            TableRecord({k: (None if v is None else str(v)) for k, v in row.items()})
            for row in head.to_dict(orient="records")
        ],
        schema=TableSchema(columns=[TableColumn(str(c), "string") for c in frame.columns]),
    )


def duration_since(started: float) -> MetadataValue:
    return MetadataValue.float(round(time.monotonic() - started, 3))


# What a kind's store records beyond the answers themselves, by metadata label.
CHANGES_LABEL: dict[Kind, str] = {"person": "job_changes_detected"}


def enrichment_metadata(
    *,
    kind: Kind,
    window: str,
    provider: str,
    selection: StaleSelection[Any],
    report: PassReport,
    changes: int,
    raw_cleared: int,
    done_elsewhere: int,
    stats: CallStats,
    started: float,
) -> dict[str, Any]:
    """Figures are for this run (a backfill over a range is one run: every partition in it
    shows the same run totals). ``raw_cleared`` counts the kind's raw answers cleared past their
    retention, across the whole table."""
    recorded = {CHANGES_LABEL[kind]: changes} if kind in CHANGES_LABEL else {}
    return {
        "partition_window": window,
        "provider": provider,
        "records_in_window": selection.total,
        "lookups_needed": len(selection.queries),
        "calls_saved_fresh": selection.fresh,
        "lookups_done_by_other_runs": done_elsewhere,
        "matched": report.matched,
        "no_match": report.no_match,
        "errors": report.errors,
        "results_written": report.written,
        **recorded,
        "raw_answers_cleared": raw_cleared,
        "api_calls": stats.requests,
        "rate_limited_429": stats.rate_limited,
        "retries": stats.retries,
        "credits_used": stats.credits_used,
        "credits_remaining": (
            MetadataValue.int(stats.credits_remaining)
            if stats.credits_remaining is not None
            else MetadataValue.text("not reported")
        ),
        "stopped_at_credit_budget": stats.budget_exhausted,
        "lookups_deferred": stats.deferred,
        "lookups_pending_rate_limited": stats.rate_limited_pending,
        "rate_limit_learned": (
            MetadataValue.text(f"{stats.rate_limit} per {stats.rate_window_s:g} s")
            if stats.rate_limit and stats.rate_window_s
            else MetadataValue.text("no rate-limit headers seen")
        ),
        "concurrency": (
            MetadataValue.int(stats.concurrency_target)
            if stats.concurrency_target is not None
            else MetadataValue.text("no calls made")
        ),
        "duration_s": duration_since(started),
    }
