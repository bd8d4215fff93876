"""Write-back within seconds: right after the intake service lands leads, the four assets' work
for the days they landed on (clean, enrich persons and companies, merge, deliver), run in the
service instead of waiting for the sensor's next tick and a run's start-up.

The same resources and the same steps as the assets, so nothing is done differently: records
still fresh cost no call, the shared per-key budget paces the look-ups, and destinations receive
only what changed. The sensor's run for the same rows then finds everything done (0 calls, no
push). Dagster keeps backfills, the stale refresh, checks and the UI's history.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import duckdb

from enrich_pipeline.clock import utc_now
from enrich_pipeline.dagster_layer.assets.enriched_companies import COMPANY_STEP
from enrich_pipeline.dagster_layer.assets.enriched_persons import PERSON_STEP
from enrich_pipeline.dagster_layer.destinations import (
    FileDestination,
    HubSpotDestination,
    deliver_to_each,
)
from enrich_pipeline.dagster_layer.enrich_on_request import EnrichOnRequest, Publish
from enrich_pipeline.dagster_layer.enrichment_asset import (
    EnrichmentStep,
    WindowEnrichment,
    run_together,
)
from enrich_pipeline.dagster_layer.resources import (
    EnrichmentResource,
    PipelineResource,
    WarehouseResource,
    enrichment_resource,
)
from enrich_pipeline.in_flight import Key
from enrich_pipeline.settings import Settings
from enrich_pipeline.warehouse.automation import contiguous_ranges, rows_landed_after
from enrich_pipeline.warehouse.connection import hold_open
from enrich_pipeline.warehouse.contacts import rebuild_clean_contacts
from enrich_pipeline.warehouse.crm import merge_crm_contacts

log = logging.getLogger(__name__)

# Rows taken per pass; a bigger backlog (a CSV landed meanwhile) takes more passes.
MAX_ROWS_PER_PASS = 10_000
# After a failed pass (a wrong key, a provider down), so a broken setting is not retried, and
# paid for, every second. The rows wait; the sensor's run may take them first.
RETRY_AFTER_S = 30.0
# The longest a pass keeps the warehouse open between its short connections: past it (a slow
# provider) a Dagster run waiting for the write lock gets it.
MAX_HOLD_S = 2.0


@dataclass
class WriteBackReport:
    rows: int = 0
    days: int = 0
    api_calls: int = 0
    crm_records: int = 0
    failed: list[str] = field(default_factory=list)


class WriteBack:
    """Builds, enriches and delivers every row landed since ``started_at``, a pass at a
    time; the position moves on only when a pass completes, so a failure is retried."""

    def __init__(
        self,
        *,
        warehouse: WarehouseResource,
        enrichment: EnrichmentResource,
        pipeline: PipelineResource,
        file_destination: FileDestination,
        hubspot_destination: HubSpotDestination,
        started_at: datetime,
        on_merged: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
    ) -> None:
        """``on_merged`` is called with the pass's connection right after its merge, before
        any delivery: callers waiting for a record get it then."""
        self._warehouse = warehouse
        self._enrichment = enrichment
        self._pipeline = pipeline
        self._destinations = {"file": file_destination, "hubspot": hubspot_destination}
        # Rows landed before are the sensor's. Found on the first pass, not here: starting the
        # service must not wait for a warehouse a Dagster run may be holding.
        self._started_at = started_at
        self._after_ingest_id: int | None = None
        self._retry_at = 0.0
        self._on_merged = on_merged
        # Shared with ``on_request``'s look-ups and with Dagster runs, so none is paid twice.
        self._in_flight = warehouse.in_flight(holder="the intake's write-back")

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        on_merged: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
    ) -> WriteBack:
        """Resources as ``definitions.py`` builds them, with the secrets' values themselves:
        outside a Dagster run there is no ``EnvVar`` to resolve them."""
        return cls(
            warehouse=WarehouseResource.from_settings(settings),
            enrichment=enrichment_resource(settings, settings.secret("data_legion_api_key")),
            pipeline=PipelineResource.from_settings(settings),
            file_destination=FileDestination.from_settings(settings),
            hubspot_destination=HubSpotDestination.from_settings(
                settings, access_token=settings.secret("hubspot_access_token")
            ),
            started_at=utc_now(),
            on_merged=on_merged,
        )

    def on_request(self, publish: Publish) -> EnrichOnRequest:
        """Answers for callers who wait (``Prefer: wait``), with this write-back's resources;
        what one looks up, this write-back's passes wait for instead of paying again."""
        return EnrichOnRequest(
            warehouse=self._warehouse,
            enrichment=self._enrichment,
            pipeline=self._pipeline,
            in_flight=self._in_flight,
            publish=publish,
        )

    def catch_up(self) -> None:
        """Every pass until nothing is left; a failure waits ``RETRY_AFTER_S`` to try again."""
        if time.monotonic() < self._retry_at:
            return
        try:
            while self.run_pass().rows:
                pass
        except Exception:
            self._retry_at = time.monotonic() + RETRY_AFTER_S
            log.exception("write-back failed; the rows wait for the next try or the sensor's run")

    def run_pass(self) -> WriteBackReport:
        report = WriteBackReport()
        # Every short connection of the pass shares one open file instead of opening its own.
        with hold_open(
            self._warehouse.warehouse_path,
            max_hold_s=MAX_HOLD_S,
            lock_timeout_s=self._warehouse.lock_timeout_s,
        ):
            with self._warehouse.connect() as con:
                if self._after_ingest_id is None:
                    self._after_ingest_id = _last_ingest_id_before(con, self._started_at)
                landed = rows_landed_after(con, self._after_ingest_id, MAX_ROWS_PER_PASS)
                if landed.last_ingest_id is None:
                    return report
                windows = [
                    (days.first, days.last + timedelta(days=1))
                    for days in contiguous_ranges(sorted(landed.rows_by_day))
                ]
                for start, end in windows:
                    rebuild_clean_contacts(con, start, end, utc_now())
            report.rows, report.days = landed.rows, len(landed.rows_by_day)
            report.api_calls = self._enrich(windows)
            with self._warehouse.connect() as con:
                for start, end in windows:
                    merged = merge_crm_contacts(
                        con, start, end, utc_now(), self._pipeline.merge_policy
                    )
                    report.crm_records += merged.created + merged.updated
                if self._on_merged is not None:
                    self._on_merged(con)
            # Destinations take every changed record at once, whichever days it came from.
            _, report.failed = deliver_to_each(
                self._destinations, self._pipeline, self._warehouse, log
            )
        self._after_ingest_id = landed.last_ingest_id
        log.info(
            "write-back: %d rows over %d days built, enriched (%d API calls), %d CRM records "
            "created or updated%s",
            report.rows,
            report.days,
            report.api_calls,
            report.crm_records,
            f"; failed: {'; '.join(report.failed)}" if report.failed else "",
        )
        return report

    def _enrich(self, windows: list[tuple[date, date]]) -> int:
        """Persons and companies of the windows; returns the API calls made.

        The companies of the leads' own domains are looked up together with the persons, so a
        new lead waits one provider round trip, not two; a second round then takes the domains
        only the matched persons named. A domain of the first round that a matched person
        turns out not to work at was looked up for nothing: a lead's work email usually names
        the company it is at."""
        rounds = [(PERSON_STEP, COMPANY_STEP), (COMPANY_STEP,)]
        calls = 0
        for steps in rounds:
            works = self._select(steps, windows)
            keys = _keys(works)
            # Being looked up by an answer on request: stored when it is done, so fresh.
            self._in_flight.wait(keys)
            mine = self._in_flight.claim(keys)
            try:
                # Selected again once claimed: what another look-up stored between our first
                # selection and our claim (waited for above, or not) is fresh now, not ours to
                # pay for.
                works = self._select(steps, windows) if mine else []
                works = [
                    work.only({k for kind, k in mine if kind == work.step.kind}) for work in works
                ]
                works = [work for work in works if work.selection.queries]
                if works:
                    asyncio.run(
                        run_together(works, self._enrichment, self._warehouse, self._pipeline, log)
                    )
            finally:
                self._in_flight.release(mine)
            # Claimed by another look-up in the meantime: stored before the merge reads it.
            self._in_flight.wait(keys - mine)
            calls += sum(work.stats.requests for work in works)
        return calls

    def _select(
        self, steps: tuple[EnrichmentStep, ...], windows: list[tuple[date, date]]
    ) -> list[WindowEnrichment]:
        works = [
            WindowEnrichment.select(step, start, end, self._warehouse, self._pipeline)
            for step in steps
            for start, end in windows
        ]
        return [work for work in works if work.selection.queries]


def _keys(works: list[WindowEnrichment]) -> set[Key]:
    return {(work.step.kind, query.key) for work in works for query in work.selection.queries}


def _last_ingest_id_before(con: duckdb.DuckDBPyConnection, moment: datetime) -> int:
    found = con.execute(
        "SELECT coalesce(max(ingest_id), 0) FROM raw_contacts WHERE landed_at < ?", [moment]
    ).fetchone()
    return int(found[0]) if found else 0
