"""Where CRM records go after the merge: one resource per destination, chosen by the
``crm_destinations`` setting. Each delivers only what changed since it last delivered (state per
destination in ``crm_sync_state``) and reports records created, updated, unchanged and failed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dagster import Failure, MetadataValue
from pydantic import Field, PrivateAttr

from enrich_pipeline.clock import utc_now
from enrich_pipeline.dagster_layer.resources import (
    PipelineResource,
    SettingsResource,
    WarehouseResource,
)
from enrich_pipeline.destinations.files import export_paths, write_crm_files
from enrich_pipeline.destinations.hubspot import (
    TOKEN_SETTING,
    WRITE_SCOPE,
    HubSpotAuthError,
    HubSpotClient,
    RequestWindow,
    UpsertOutcome,
)
from enrich_pipeline.masking import mask_email, mask_emails_in
from enrich_pipeline.provider.transports import Clock, Sleep
from enrich_pipeline.settings import FileExportSettings, HubSpotSettings, PipelineSettings
from enrich_pipeline.settings_base import env_name
from enrich_pipeline.warehouse.crm_sync import (
    PendingRecord,
    SyncOutcome,
    SyncSpec,
    file_spec,
    hubspot_spec,
    prepare_pending,
    read_pending,
    record_full_export,
    record_outcomes,
)

FAILURES_SHOWN = 50
_DESTINATIONS = env_name(PipelineSettings, "crm_destinations")
_HUBSPOT_URL = env_name(HubSpotSettings, "hubspot_base_url")


@dataclass
class DestinationReport:
    """One delivery. ``failures`` holds the first ``FAILURES_SHOWN`` (email, error) pairs,
    emails masked; ``failed`` counts them all."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def add_failure(self, email: str, error: str) -> None:
        self.failed += 1
        if len(self.failures) < FAILURES_SHOWN:
            # Shown in Dagster's event log, which no erasure reaches: masked.
            self.failures.append((mask_email(email), mask_emails_in(error, email)))

    def metadata(self, destination: str) -> dict[str, Any]:
        """Asset metadata, every key prefixed with the destination's name."""
        figures: dict[str, Any] = {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "failed": self.failed,
            **self.extra,
        }
        if self.failures:
            figures["failures"] = MetadataValue.md(_failures_markdown(self.failures, self.failed))
        return {f"{destination}/{key}": value for key, value in figures.items()}


def _failures_markdown(failures: list[tuple[str, str]], total: int) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| email | error |", "|---|---|"]
    lines += [f"| {cell(email)} | {cell(error)} |" for email, error in failures]
    if total > len(failures):
        lines.append(f"\n{len(failures)} of {total} failures shown.")
    return "\n".join(lines)


def deliver_to_each(
    destinations: Mapping[str, FileDestination | HubSpotDestination],
    pipeline: PipelineResource,
    warehouse: WarehouseResource,
    logger: logging.Logger,
) -> tuple[dict[str, Any], list[str]]:
    """Deliver to every destination ``pipeline`` names: the metadata of each, and a line per
    destination that failed. Every destination gets its turn even when another fails (a HubSpot
    outage must not hold back the files); the caller fails afterwards, naming each."""
    metadata: dict[str, Any] = {}
    failed: list[str] = []
    for name in pipeline.crm_destinations:
        if name not in destinations:
            failed.append(f"{name}: unknown destination; choose from {', '.join(destinations)}")
            continue
        try:
            report = destinations[name].deliver(warehouse, pipeline.export_columns, logger)
        except Failure as exc:
            logger.error(f"{name}: {exc.description}")
            failed.append(f"{name}: {exc.description}")
            metadata.update(exc.metadata)
            continue
        metadata.update(report.metadata(name))
    return metadata, failed


class FileDestination(SettingsResource, FileExportSettings):
    """``crm_contacts.csv`` (HubSpot import labels, formula-looking cells escaped) and
    ``crm_contacts.parquet`` (typed, as stored) in ``export_dir``, each replaced atomically.
    Both are rewritten when a record was created, changed or removed since they were last
    written, or when either is missing; otherwise they are left as they are."""

    def deliver(
        self, warehouse: WarehouseResource, columns: Sequence[str], logger: logging.Logger
    ) -> DestinationReport:
        spec = file_spec(columns)
        csv_path, parquet_path = export_paths(self.export_dir)
        with warehouse.connect() as con:
            counts = prepare_pending(con, spec)
            rewrite = bool(counts.pending or counts.removed) or not (
                csv_path.exists() and parquet_path.exists()
            )
            if rewrite:
                write_crm_files(con, self.export_dir, columns)
                record_full_export(con, spec, utc_now())
        logger.info(
            f"file: {counts.new} new, {counts.changed + counts.retry} changed, "
            f"{counts.removed} removed, {counts.unchanged} unchanged; {csv_path} and "
            f"{parquet_path} " + (f"rewritten ({counts.records} rows)" if rewrite else "current")
        )
        return DestinationReport(
            created=counts.new,
            updated=counts.changed + counts.retry,
            unchanged=counts.unchanged,
            extra={
                "removed": counts.removed,
                "rewritten": rewrite,
                "rows": counts.records,
                "csv_path": MetadataValue.path(str(csv_path.resolve())),
                "parquet_path": MetadataValue.path(str(parquet_path.resolve())),
            },
        )


class HubSpotDestination(SettingsResource, HubSpotSettings):
    """HubSpot contacts, upserted by email (``POST /crm/v3/objects/contacts/batch/upsert``, at
    most 100 per call, paced to ``requests_per_10s``, 429 and 5xx retried).

    Only records that are new, changed since they were last sent, or failed last time are sent,
    in rounds of ``records_per_round``: read from the warehouse, connection closed, sent, then
    the outcomes recorded on a fresh connection. A record HubSpot rejects (207) stays pending and
    is sent again next run. CRM columns are sent as HubSpot's default contact properties
    (``crm_sync.HUBSPOT_PROPERTIES``: email, firstname, lastname, phone, mobilephone, jobtitle,
    company, website, city, state, country, industry, numemployees as its band,
    hs_linkedin_url); columns with no default property (seniority, job_function,
    job_changed_at) are not sent. Empty values are not sent, so they never blank HubSpot's.
    """

    access_token: str | None = Field(
        default=None,
        description=f"{TOKEN_SETTING}, read through EnvVar when a run starts: a private app "
        f"token with the {WRITE_SCOPE} scope",
    )
    requests_per_10s: int = Field(
        default=100, description="HubSpot's limit: 100 per 10 s on Free/Starter, 150 on Pro"
    )
    max_attempts: int = 5
    records_per_round: int = Field(
        default=5000, description="records read, sent and recorded per round"
    )
    # One window for every delivery made with this resource: the intake service's write-back
    # delivers pass after pass, and together they must stay under HubSpot's limit.
    _window: RequestWindow | None = PrivateAttr(default=None)

    def deliver(
        self,
        warehouse: WarehouseResource,
        columns: Sequence[str],
        logger: logging.Logger,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
    ) -> DestinationReport:
        token = self.access_token
        if not token:
            raise Failure(
                description=(
                    f"hubspot is in {_DESTINATIONS} but {TOKEN_SETTING} is not set: set it to a "
                    f"private app token with the {WRITE_SCOPE} scope, or remove hubspot from "
                    f"{_DESTINATIONS}"
                )
            )
        spec = hubspot_spec(columns)
        with warehouse.connect() as con:
            counts = prepare_pending(con, spec)
        report = DestinationReport(
            unchanged=counts.unchanged,
            extra={"retried_from_last_run": counts.retry, "api_calls": 0, "rate_limited_429": 0},
        )
        if counts.pending:
            logger.info(
                f"hubspot: {counts.pending} records to send ({counts.new} new, "
                f"{counts.changed} changed, {counts.retry} failed last run), "
                f"{counts.unchanged} unchanged"
            )
            try:
                asyncio.run(
                    self._send(token, warehouse, spec, counts.pending, report, sleep, clock)
                )
            except HubSpotAuthError as exc:
                raise Failure(description=str(exc), metadata=report.metadata("hubspot")) from exc
            if report.failed and not report.created + report.updated:
                raise Failure(
                    description=f"none of {counts.pending} records could be delivered to "
                    f"HubSpot at {self.hubspot_base_url} (check {_HUBSPOT_URL} and HubSpot's "
                    "status); they are sent again on the next run",
                    metadata=report.metadata("hubspot"),
                )
        logger.info(
            f"hubspot: {report.created} created, {report.updated} updated, {report.failed} "
            f"failed, {report.unchanged} unchanged in {report.extra['api_calls']} requests"
        )
        return report

    async def _send(
        self,
        token: str,
        warehouse: WarehouseResource,
        spec: SyncSpec,
        pending: int,
        report: DestinationReport,
        sleep: Sleep,
        clock: Clock,
    ) -> None:
        """Round after round until nothing is left. A round in which every record failed (HubSpot
        down, or refusing everything) ends the run: the rest stay pending, counted as failed."""
        if self._window is None:
            self._window = RequestWindow(limit=self.requests_per_10s)
        async with HubSpotClient(
            token=token,
            base_url=self.hubspot_base_url,
            sleep=sleep,
            clock=clock,
            window=self._window,
            max_attempts=self.max_attempts,
        ) as hubspot:
            attempted, after = 0, ""
            try:
                while True:
                    with warehouse.connect() as con:
                        batch = read_pending(con, spec, after=after, limit=self.records_per_round)
                    if not batch:
                        break
                    after = batch[-1].email
                    outcomes = await hubspot.upsert_contacts([record.values for record in batch])
                    with warehouse.connect() as con:
                        record_outcomes(con, spec, _sync_outcomes(batch, outcomes), utc_now())
                    attempted += len(batch)
                    _tally(report, outcomes)
                    if all(outcome.status == "failed" for outcome in outcomes):
                        not_sent = max(pending - attempted, 0)
                        report.failed += not_sent
                        report.extra["not_sent"] = not_sent
                        break
            finally:
                # Also when HubSpot refused the token: the failure's metadata shows the calls.
                report.extra["api_calls"] = hubspot.stats.requests
                report.extra["rate_limited_429"] = hubspot.stats.rate_limited


def _sync_outcomes(
    batch: Sequence[PendingRecord], outcomes: Sequence[UpsertOutcome]
) -> list[SyncOutcome]:
    # HubSpotClient.upsert_contacts answers in input order, one outcome per record.
    return [
        SyncOutcome(
            email=record.email,
            fingerprint=record.fingerprint,
            record_updated_at=record.record_updated_at,
            sent=outcome.status != "failed",
            remote_id=outcome.hubspot_id,
            error=outcome.error,
        )
        for record, outcome in zip(batch, outcomes, strict=True)
    ]


def _tally(report: DestinationReport, outcomes: Sequence[UpsertOutcome]) -> None:
    for outcome in outcomes:
        if outcome.status == "created":
            report.created += 1
        elif outcome.status == "updated":
            report.updated += 1
        else:
            report.add_failure(outcome.email, outcome.error or "failed")
