"""``Prefer: wait``'s own path: the leads a caller waits for are enriched and their CRM records
computed as soon as they are journaled, without waiting to be landed, rebuilt and merged.

The same resources and look-ups as the write-back (the same client, the same per-key budget;
records still fresh cost no call), the results stored in the warehouse as the write-back stores
them, so neither the write-back's pass for these leads nor the next Dagster run pays for them
again. The record is ``preview_crm_records``: what the merge makes once the lead is landed.
The pass that lands the leads still merges and delivers them as it does every lead.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import duckdb

from enrich_pipeline.clock import utc_now
from enrich_pipeline.dagster_layer.assets.enriched_companies import COMPANY_STEP
from enrich_pipeline.dagster_layer.assets.enriched_persons import PERSON_STEP
from enrich_pipeline.dagster_layer.enrichment_asset import WindowEnrichment, run_together
from enrich_pipeline.dagster_layer.resources import (
    EnrichmentResource,
    PipelineResource,
    WarehouseResource,
)
from enrich_pipeline.enrichment_pass import PassReport
from enrich_pipeline.in_flight import InFlight, Key
from enrich_pipeline.intake.landing import landed_values
from enrich_pipeline.provider.models import CompanyQuery, PersonQuery
from enrich_pipeline.warehouse.connection import hold_open
from enrich_pipeline.warehouse.contacts import clean_contact
from enrich_pipeline.warehouse.crm import preview_crm_records
from enrich_pipeline.warehouse.enrichment import StaleSelection, stale_for_leads
from enrich_pipeline.warehouse.suppression import unsuppressed

log = logging.getLogger(__name__)

# Requests answered at once; each mostly waits on the provider.
WORKERS = 4
# As the write-back: another process waiting for the write lock gets it within this.
MAX_HOLD_S = 2.0
# Kept open a moment after an answer: the next caller's look-up finds the file open (opening
# it costs more than the whole answer for a fresh person).
LINGER_S = 0.5

# The longest landing or a write-back pass waits for answers being worked on.
QUIET_WAIT_S = 0.1

Publish = Callable[[Mapping[str, dict[str, Any]]], None]


class EnrichOnRequest:
    def __init__(
        self,
        *,
        warehouse: WarehouseResource,
        enrichment: EnrichmentResource,
        pipeline: PipelineResource,
        in_flight: InFlight,
        publish: Publish,
    ) -> None:
        """``publish`` receives the CRM records by email, on a worker thread."""
        self._warehouse = warehouse
        self._enrichment = enrichment
        self._pipeline = pipeline
        self._in_flight = in_flight
        self._publish = publish
        self._workers = ThreadPoolExecutor(WORKERS, thread_name_prefix="enrich-on-request")
        # Answers being worked on, not waiting on the provider: see ``wait_until_quiet``.
        self._working = 0
        self._quiet = threading.Condition()

    def submit(self, leads: Sequence[tuple[Mapping[str, Any], datetime]]) -> None:
        """Enrich these journaled leads (each with the moment it was received) and publish
        their records. What they need looked up is claimed here, before the mover can land
        them, so the write-back's pass for them waits for these look-ups instead of repeating
        them. Leads without a valid email have no record to publish and are left to it."""
        contacts = [
            contact
            for lead, received_at in leads
            if (contact := clean_contact(landed_values(lead), received_at)) is not None
        ]
        if contacts:
            claimed = self._in_flight.claim(_lead_keys(contacts))
            self._work(+1)
            try:
                self._workers.submit(self._answer, contacts, claimed)
            except BaseException:
                # Not going to be looked up here (shutting down): nobody must wait for it.
                self._work(-1)
                self._in_flight.release(claimed)
                raise

    def wait_until_quiet(self, timeout_s: float = QUIET_WAIT_S) -> None:
        """Wait (at most ``timeout_s``) until no answer is being worked on here, other than
        waiting on the provider. Landing and the write-back call it first: on a machine with
        few cores, their milliseconds of CPU would come out of a waiting caller's."""
        with self._quiet:
            self._quiet.wait_for(lambda: self._working == 0, timeout_s)

    def _work(self, change: int) -> None:
        with self._quiet:
            self._working += change
            self._quiet.notify_all()

    def _answer(self, contacts: list[dict[str, Any]], claimed: set[Key]) -> None:
        try:
            with (
                hold_open(
                    self._warehouse.warehouse_path,
                    max_hold_s=MAX_HOLD_S,
                    linger_s=LINGER_S,
                    lock_timeout_s=self._warehouse.lock_timeout_s,
                ),
                self._warehouse.connect() as con,
            ):
                # A suppressed person is never looked up; landing refuses the lead, and the
                # caller gets 202 like any lead with no record.
                contacts = unsuppressed(con, contacts)
                self._look_up(con, contacts, claimed)
                records = preview_crm_records(con, contacts, utc_now(), self._pipeline.merge_policy)
            self._publish(records)
        except Exception:
            # The leads are journaled: the write-back enriches them; the caller gets 202.
            log.exception("enriching on request failed; the leads are enriched by the write-back")
        finally:
            self._release(claimed, set(claimed))
            self._work(-1)

    def _look_up(
        self, con: duckdb.DuckDBPyConnection, contacts: list[dict[str, Any]], claimed: set[Key]
    ) -> None:
        """Look up, once, what the leads' records need that is stale: their persons, their own
        domains' companies and their persons' employers. What this request claimed is looked
        up here (and released as soon as stored); what another path holds is waited for."""
        identities = [contact["identity"] for contact in contacts]
        domains = [contact["company_domain"] for contact in contacts if contact["company_domain"]]
        # A second round for the employers named by persons the first one matched.
        for _ in range(2):
            stale = stale_for_leads(con, identities, domains, utc_now(), self._pipeline.freshness)
            claimed |= self._in_flight.claim(stale)
            fresh = {("person", i) for i in identities} | {("company", d) for d in domains}
            self._release(claimed, fresh - stale)
            mine = stale & claimed
            if mine:
                self._work(-1)
                try:
                    asyncio.run(self._enrich(mine))
                finally:
                    self._work(+1)
                self._release(claimed, mine)
            self._in_flight.wait(stale - mine)
            if not any(kind == "person" for kind, _ in stale):
                return
            domains = []

    def _release(self, claimed: set[Key], keys: set[Key]) -> None:
        """Release ``keys`` if still in ``claimed``, once: released, another path may claim
        them, and releasing them again would drop that claim."""
        keys = keys & claimed
        claimed -= keys
        self._in_flight.release(keys)

    async def _enrich(self, stale: set[Key]) -> None:
        # A window's enrichment with its selection given: the look-ups do not read the window.
        today = utc_now().date()
        works = [
            WindowEnrichment(
                step,
                today,
                today,
                StaleSelection(queries=queries, total=len(queries)),
                PassReport(requested=len(queries)),
            )
            for step, queries in (
                (PERSON_STEP, [_person_query(key) for kind, key in stale if kind == "person"]),
                (
                    COMPANY_STEP,
                    [CompanyQuery(key, key) for kind, key in stale if kind == "company"],
                ),
            )
            if queries
        ]
        await run_together(works, self._enrichment, self._warehouse, self._pipeline, log)


def _person_query(identity: str) -> PersonQuery:
    return PersonQuery(key=identity, email=identity)  # email identities are the address


def _lead_keys(contacts: Sequence[Mapping[str, Any]]) -> set[Key]:
    """The person of each lead and the company of its own domain, looked up together."""
    persons: set[Key] = {("person", contact["identity"]) for contact in contacts}
    companies: set[Key] = {
        ("company", contact["company_domain"]) for contact in contacts if contact["company_domain"]
    }
    return persons | companies
