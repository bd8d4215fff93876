"""What ``enriched_persons`` and ``enriched_companies`` are made of: an asset that runs the
look-ups for the window's stale records of one kind, writes results per chunk on a fresh short
connection, and reports the cost. Each materialisation also clears its table's raw answers past
their retention, so every run (the stale refresh's among them) keeps the retention."""

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any, Protocol, Self

import duckdb
from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    Failure,
    MaterializeResult,
    get_dagster_logger,
)

from enrich_pipeline.clock import utc_now
from enrich_pipeline.dagster_layer.metadata import enrichment_metadata, preview
from enrich_pipeline.dagster_layer.partitions import (
    ENRICHMENT_API_POOL,
    contact_asset,
    describe_window,
    partition_window,
)
from enrich_pipeline.dagster_layer.resources import (
    EnrichmentResource,
    PipelineResource,
    WarehouseResource,
)
from enrich_pipeline.enrichment_pass import PassReport, run_enrichment_pass
from enrich_pipeline.in_flight import InFlight, Key
from enrich_pipeline.provider.errors import ProviderError
from enrich_pipeline.provider.models import CallStats, EnrichmentResult, Kind, Query
from enrich_pipeline.settings import DataLegionSettings, PrivacySettings, ProviderClientSettings
from enrich_pipeline.settings_base import env_name
from enrich_pipeline.warehouse.enrichment import Freshness, StaleSelection, clear_expired_raw
from enrich_pipeline.warehouse.suppression import listed_among, result_key


class Store(Protocol):
    """Writes one chunk, keeping only ``fields`` of each answer and its raw JSON only if
    ``keep_raw``; a store that keeps a history of changes (persons: job changes) returns how
    many it recorded."""

    def __call__(
        self,
        con: duckdb.DuckDBPyConnection,
        results: list[EnrichmentResult],
        now: datetime,
        *,
        fields: Collection[str],
        keep_raw: bool,
    ) -> int | None: ...


# Chooses the window's records that are missing or past their TTL.
Select = Callable[[duckdb.DuckDBPyConnection, date, date, datetime, Freshness], StaleSelection[Any]]

_CREDIT_BUDGET = env_name(ProviderClientSettings, "max_credits_per_run")
_BASE_URL_SETTING = env_name(DataLegionSettings, "base_url")
_RETENTION_SETTING = env_name(PrivacySettings, "raw_retention_days")


@dataclass(frozen=True)
class EnrichmentStep:
    """What one kind of enrichment reads and writes. ``preview_sql`` takes the window's start and
    end dates as its two parameters."""

    kind: Kind
    select: Select
    store: Store
    preview_sql: str


def enrichment_asset(
    *, name: str, upstream: AssetsDefinition, description: str, step: EnrichmentStep
) -> AssetsDefinition:
    """An asset in the ``enrichment_api`` pool that enriches the window's stale records."""

    @contact_asset(
        name=name,
        deps=[upstream],
        kinds={"duckdb", "api"},
        pool=ENRICHMENT_API_POOL,
        description=description,
    )
    def enrich_window(
        context: AssetExecutionContext,
        warehouse: WarehouseResource,
        enrichment: EnrichmentResource,
        pipeline: PipelineResource,
    ) -> MaterializeResult:
        return materialise_enrichment(context, step, enrichment, warehouse, pipeline)

    return enrich_window


@dataclass
class WindowEnrichment:
    """One kind of enrichment over a window of days: what was stale, what came back, what it
    cost. The assets and the intake's write-back both run it."""

    step: EnrichmentStep
    start: date
    end: date
    selection: StaleSelection[Any]
    report: PassReport
    stats: CallStats = field(default_factory=CallStats)
    changes: int = 0
    # Stale when selected, then looked up by another run while this one waited.
    done_elsewhere: int = 0

    @classmethod
    def select(
        cls,
        step: EnrichmentStep,
        start: date,
        end: date,
        warehouse: WarehouseResource,
        pipeline: PipelineResource,
    ) -> Self:
        with warehouse.connect() as con:
            selection = step.select(con, start, end, utc_now(), pipeline.freshness)
        return cls(step, start, end, selection, PassReport(requested=len(selection.queries)))

    def only(self, keys: Collection[str]) -> Self:
        """This work with only the look-ups of ``keys``."""
        queries = [query for query in self.selection.queries if query.key in keys]
        return replace(
            self,
            selection=StaleSelection(queries=queries, total=self.selection.total),
            report=PassReport(requested=len(queries)),
        )

    def run(
        self,
        enrichment: EnrichmentResource,
        warehouse: WarehouseResource,
        pipeline: PipelineResource,
        logger: logging.Logger,
        in_flight: InFlight,
    ) -> None:
        """Look the stale records up, writing results per chunk on a fresh short connection.
        Only what no other run is looking up is looked up here; what another holds is waited
        for while it runs, then selected again: what it stored is fresh, what it could not is
        looked up here. A ``ProviderError`` (bad key, credits gone) propagates after what
        arrived is saved."""
        kind, pending = self.step.kind, self.selection.queries
        while pending:
            keys = {(kind, query.key) for query in pending}
            mine = in_flight.claim(keys)
            try:
                ours = [query for query in pending if (kind, query.key) in mine]
                if ours:
                    # Another run may have stored some between our selection and our claim (it
                    # released them once stored): those are fresh now, not ours to pay for.
                    with warehouse.connect() as con:
                        now = self.step.select(
                            con, self.start, self.end, utc_now(), pipeline.freshness
                        )
                    stale = {query.key for query in now.queries}
                    self.done_elsewhere += sum(query.key not in stale for query in ours)
                    ours = [query for query in ours if query.key in stale]
                if ours:
                    asyncio.run(self.run_async(enrichment, warehouse, pipeline, logger, ours))
            finally:
                in_flight.release(mine)
            if not (others := keys - mine):
                return
            _wait_for_other_runs(in_flight, others, kind, logger)
            with warehouse.connect() as con:
                again = self.step.select(con, self.start, self.end, utc_now(), pipeline.freshness)
            pending = [query for query in again.queries if (kind, query.key) in others]
            self.done_elsewhere += len(others) - len(pending)

    async def run_async(
        self,
        enrichment: EnrichmentResource,
        warehouse: WarehouseResource,
        pipeline: PipelineResource,
        logger: logging.Logger,
        queries: Sequence[Query] | None = None,
    ) -> None:
        """The look-ups of ``queries`` (all the selection's by default) inside a running event
        loop, so several kinds can be looked up at once. The caller has claimed them."""
        queries = self.selection.queries if queries is None else queries
        # What the client asks for is all that is kept, whatever the provider answers.
        fields = enrichment.profile.fields(self.step.kind)

        def write_chunk(results: list[EnrichmentResult]) -> None:
            kind = self.step.kind
            with warehouse.connect() as con:
                # Erased or suppressed while this run looked them up: not stored again.
                listed = listed_among(con, (result_key(kind, r.key) for r in results))
                kept = [r for r in results if result_key(kind, r.key) not in listed]
                stored = self.step.store(
                    con, kept, utc_now(), fields=fields, keep_raw=pipeline.keep_raw
                )
                self.changes += stored or 0

        if not queries:
            return
        async with enrichment.client(self.stats, logger) as client:
            await run_enrichment_pass(
                client,
                self.step.kind,
                queries,
                write_chunk,
                chunk_size=pipeline.chunk_size,
                report=self.report,
                save_every_s=pipeline.save_every_s,
            )


# While waiting for another run's look-ups, say so this often.
_WAIT_LOG_EVERY_S = 30.0


def _wait_for_other_runs(
    in_flight: InFlight, keys: set[Key], kind: Kind, logger: logging.Logger
) -> None:
    """Until no other live process holds any of ``keys``, saying who holds how many."""
    while held := in_flight.held(keys):
        holders = Counter(held.values())
        logger.info(
            f"waiting for {len(held)} {kind} look-ups another run (or the intake) is making, "
            "not paying for them twice: "
            + ", ".join(f"{count} held by {holder}" for holder, count in holders.most_common())
        )
        in_flight.wait(held, timeout_s=_WAIT_LOG_EVERY_S)


async def run_together(
    works: Sequence[WindowEnrichment],
    enrichment: EnrichmentResource,
    warehouse: WarehouseResource,
    pipeline: PipelineResource,
    logger: logging.Logger,
) -> None:
    """Several kinds or windows looked up at once, each through a client of its own."""
    await asyncio.gather(
        *(work.run_async(enrichment, warehouse, pipeline, logger) for work in works)
    )


def materialise_enrichment(
    context: AssetExecutionContext,
    step: EnrichmentStep,
    enrichment: EnrichmentResource,
    warehouse: WarehouseResource,
    pipeline: PipelineResource,
) -> MaterializeResult:
    kind = step.kind
    started = time.monotonic()
    start, end = partition_window(context)
    window = describe_window(start, end)
    # Before any look-up, so a run the provider stops still keeps the retention.
    with warehouse.connect() as con:
        raw_cleared = clear_expired_raw(con, kind, utc_now(), pipeline.raw_retention_days)
    if raw_cleared:
        context.log.info(
            f"cleared the raw provider answer of {raw_cleared} {kind} records enriched more than "
            f"{pipeline.raw_retention_days} days ago ({_RETENTION_SETTING})"
        )
    work = WindowEnrichment.select(step, start, end, warehouse, pipeline)
    selection, report, stats = work.selection, work.report, work.stats
    context.log.info(
        f"{kind} enrichment over {window}: {selection.total} records, "
        f"{selection.fresh} still fresh (no call), {len(selection.queries)} to look up "
        f"via {enrichment.provider}"
    )

    def metadata() -> dict[str, Any]:
        return enrichment_metadata(
            kind=kind,
            window=window,
            provider=enrichment.provider,
            selection=selection,
            report=report,
            changes=work.changes,
            raw_cleared=raw_cleared,
            done_elsewhere=work.done_elsewhere,
            stats=stats,
            started=started,
        )

    try:
        with warehouse.in_flight(holder=f"run {context.run_id}") as in_flight:
            work.run(enrichment, warehouse, pipeline, get_dagster_logger(), in_flight)
    except ProviderError as exc:
        raise Failure(
            description=f"{kind} enrichment stopped: {exc}. Results received before the stop "
            "are saved; the next run continues with the rest.",
            metadata=metadata(),
        ) from exc
    if report.all_failed:
        raise Failure(
            description=f"{kind} enrichment failed: every one of {report.errors} look-ups failed "
            f"(first: {report.first_error}). Is the provider at {enrichment.provider} reachable "
            f"and well? Check {_BASE_URL_SETTING} if it is the wrong address. The failures are "
            "stored as errors and asked again on the next run.",
            metadata=metadata(),
        )
    if stats.budget_exhausted:
        context.log.warning(
            f"{kind} enrichment stopped at the run's credit budget ({_CREDIT_BUDGET}): "
            f"{stats.deferred} look-ups left for the next run"
        )
    with warehouse.connect() as con:
        sample = con.execute(step.preview_sql, [start, end]).df()
    result_metadata = {**metadata(), "preview": preview(sample, full_values=pipeline.full_previews)}
    context.log.info(
        f"{kind} enrichment done: {report.matched} matched, {report.no_match} no match, "
        f"{report.errors} errors; {stats.requests} API calls, {stats.rate_limited} answered 429"
    )
    return MaterializeResult(metadata=result_metadata)
