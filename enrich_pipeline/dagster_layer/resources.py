"""Typed resources: the warehouse, the enrichment provider, and the pipeline's settings."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import duckdb
import httpx
from dagster import ConfigurableResource
from pydantic import Field

from enrich_pipeline.field_profiles import DEFAULT_PROFILE, field_profile
from enrich_pipeline.merge_policy import DEFAULT_RULES, Confidence, MergePolicy
from enrich_pipeline.provider.client import (
    DEFAULT_COMPANY_FIELDS,
    DEFAULT_PERSON_FIELDS,
    EnrichmentClient,
)
from enrich_pipeline.provider.http import build_http_client
from enrich_pipeline.provider.models import CallStats
from enrich_pipeline.provider.shared_limit import default_state_dir
from enrich_pipeline.sandbox import SandboxConfig, create_app
from enrich_pipeline.settings import DEFAULT_BASE_URL
from enrich_pipeline.warehouse.connection import connect
from enrich_pipeline.warehouse.enrichment import Freshness

SANDBOX_LABEL = "sandbox"
_SANDBOX_BASE_URL = "http://sandbox.invalid"


class WarehouseResource(ConfigurableResource):
    """The DuckDB file. Connections are opened per unit of work and closed straight after."""

    path: str = Field(default="data/warehouse.duckdb", description="DuckDB file")
    lock_timeout_s: float = Field(
        default=30.0, description="how long to wait for another process's write lock"
    )
    memory_limit: str = Field(default="1GB", description="DuckDB memory cap per connection")

    @property
    def exists(self) -> bool:
        return Path(self.path).exists()

    @contextmanager
    def read(self, max_wait_s: float) -> Iterator[duckdb.DuckDBPyConnection]:
        """Read-only, for sensors and schedules: a writer holding the file longer than
        ``max_wait_s`` raises ``WarehouseBusy`` instead of stalling the daemon."""
        with connect(
            self.path,
            read_only=True,
            lock_timeout_s=min(self.lock_timeout_s, max_wait_s),
            memory_limit=self.memory_limit,
        ) as con:
            yield con

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with connect(
            self.path, lock_timeout_s=self.lock_timeout_s, memory_limit=self.memory_limit
        ) as con:
            yield con


class EnrichmentResource(ConfigurableResource):
    """The person/company enrichment API. With no API key it is the built-in sandbox,
    in process; the client cannot tell the difference."""

    api_key: str | None = Field(
        default=None, description="DATA_LEGION_API_KEY; unset means the built-in sandbox"
    )
    base_url: str = DEFAULT_BASE_URL
    use_bulk: bool = True
    bulk_size: int = 100
    max_concurrency: int = 32
    max_credits_per_run: int | None = None
    max_attempts: int = 5
    request_timeout_s: float = 30.0
    person_fields: str = DEFAULT_PERSON_FIELDS
    company_fields: str = DEFAULT_COMPANY_FIELDS

    @property
    def provider(self) -> str:
        return self.base_url if self.api_key else SANDBOX_LABEL

    @asynccontextmanager
    async def client(
        self, stats: CallStats, logger: logging.Logger
    ) -> AsyncIterator[EnrichmentClient]:
        transport: httpx.AsyncBaseTransport | None = None
        base_url, api_key = self.base_url, self.api_key
        if not api_key:
            logger.info(
                "DATA_LEGION_API_KEY is not set: using the built-in sandbox provider "
                "(synthetic profiles, no real people)"
            )
            transport = httpx.ASGITransport(app=create_app(SandboxConfig.from_env()))
            base_url, api_key = _SANDBOX_BASE_URL, SANDBOX_LABEL
        http = build_http_client(
            base_url=base_url,
            api_key=api_key,
            stats=stats,
            transport=transport,
            timeout_s=self.request_timeout_s,
            max_attempts=self.max_attempts,
            # Every run on this machine using this key paces from one shared budget. The
            # in-process sandbox is private to its run, so it keeps its own.
            shared_state_dir=default_state_dir() if transport is None else None,
        )
        async with http:
            yield EnrichmentClient(
                http,
                stats=stats,
                include_fields={"person": self.person_fields, "company": self.company_fields},
                use_bulk=self.use_bulk,
                bulk_size=self.bulk_size,
                max_concurrency=self.max_concurrency,
                max_credits=self.max_credits_per_run,
                logger=logger,
            )


class PipelineSettings(ConfigurableResource):
    """Freshness windows, chunking, the merge policy's confidence bar, what is exported where."""

    person_ttl_days: int = 30
    company_ttl_days: int = 90
    no_match_retry_days: int = 14
    chunk_size: int = 200
    field_profile: str = DEFAULT_PROFILE
    min_match_confidence: str = Confidence.MODERATE.value
    crm_destinations: list[str] = Field(default_factory=lambda: ["file"])

    @property
    def merge_policy(self) -> MergePolicy:
        return MergePolicy(
            rules=DEFAULT_RULES, min_confidence=Confidence(self.min_match_confidence)
        )

    @property
    def export_columns(self) -> tuple[str, ...]:
        return field_profile(self.field_profile).crm_columns

    @property
    def freshness(self) -> Freshness:
        return Freshness(
            person_ttl_days=self.person_ttl_days,
            company_ttl_days=self.company_ttl_days,
            no_match_retry_days=self.no_match_retry_days,
        )
