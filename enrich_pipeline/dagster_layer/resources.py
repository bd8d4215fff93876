"""Typed resources: the warehouse, the enrichment provider (real or sandbox), and the pipeline's
settings. Each inherits its settings group, so its configuration and the descriptions shown in
the UI are the settings' own; ``from_settings`` fills it from a ``Settings``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import duckdb
import httpx
from dagster import ConfigurableResource, EnvVar
from pydantic import Field

from enrich_pipeline.field_profiles import FieldProfile, field_profile
from enrich_pipeline.in_flight import InFlight, claims_path
from enrich_pipeline.merge_policy import DEFAULT_RULES, MergePolicy
from enrich_pipeline.provider.client import EnrichmentClient
from enrich_pipeline.provider.http import build_http_client
from enrich_pipeline.provider.models import CallStats
from enrich_pipeline.sandbox import SandboxConfig, create_app
from enrich_pipeline.settings import (
    DataLegionSettings,
    FieldProfileSettings,
    PipelineSettings,
    PrivacySettings,
    ProviderClientSettings,
    SecretSettings,
    Settings,
    WarehouseSettings,
)
from enrich_pipeline.settings_base import env_name, group_values
from enrich_pipeline.warehouse import postgres
from enrich_pipeline.warehouse.connection import connect
from enrich_pipeline.warehouse.connection import exists as warehouse_exists
from enrich_pipeline.warehouse.enrichment import Freshness
from enrich_pipeline.warehouse.postgres import is_postgres

SANDBOX_LABEL = "sandbox"
# Never resolved: the in-process sandbox's transport answers every request.
_SANDBOX_BASE_URL = "http://sandbox.invalid"


class SettingsResource(ConfigurableResource):
    """A resource configured from the settings groups it inherits."""

    @classmethod
    def from_settings(cls, settings: Settings, **values: Any) -> Self:
        return cls(**{**group_values(settings, cls), **values})


class WarehouseResource(SettingsResource, WarehouseSettings):
    """The DuckDB file. Connections are opened per unit of work and closed straight after."""

    lock_timeout_s: float = Field(
        default=30.0, description="how long to wait for another process's write lock"
    )

    @property
    def exists(self) -> bool:
        return warehouse_exists(self.warehouse_path)

    def in_flight(self, holder: str) -> InFlight:
        """Claims on look-ups, shared by every process on this machine writing this warehouse,
        in a file beside it."""
        return InFlight(claims_path(self.warehouse_path), holder=holder)

    @contextmanager
    def read(self, max_wait_s: float) -> Iterator[duckdb.DuckDBPyConnection]:
        """Read-only, for sensors and schedules: a writer holding the file longer than
        ``max_wait_s`` raises ``WarehouseBusy`` instead of stalling the daemon."""
        with connect(
            self.warehouse_path,
            read_only=True,
            lock_timeout_s=min(self.lock_timeout_s, max_wait_s),
            memory_limit=self.duckdb_memory_limit,
        ) as con:
            yield con

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with connect(
            self.warehouse_path,
            lock_timeout_s=self.lock_timeout_s,
            memory_limit=self.duckdb_memory_limit,
        ) as con:
            yield con


@dataclass(frozen=True)
class ProviderEndpoint:
    """Where an enrichment client's requests go and with which key."""

    base_url: str
    api_key: str
    # What carries the requests; None is the network.
    transport: httpx.AsyncBaseTransport | None
    # Where runs sharing this key keep one rate-limit budget, a folder on this machine or the
    # Postgres database of every machine (at most one); neither keeps it in the process.
    shared_state_dir: Path | None
    shared_state_url: str | None


class EnrichmentResource(SettingsResource, ProviderClientSettings, FieldProfileSettings):
    """The person/company enrichment API. Two kinds, chosen in ``definitions.py``: the real
    provider (``DataLegionResource``) and the built-in sandbox (``SandboxEnrichmentResource``);
    the client cannot tell the difference."""

    @property
    def provider(self) -> str:
        """What asset metadata reports as ``provider``."""
        raise NotImplementedError

    def endpoint(self, logger: logging.Logger) -> ProviderEndpoint:
        raise NotImplementedError

    @property
    def profile(self) -> FieldProfile:
        """The fields asked of the provider, and so the only ones kept of its answers."""
        return field_profile(self.field_profile)

    @asynccontextmanager
    async def client(
        self, stats: CallStats, logger: logging.Logger
    ) -> AsyncIterator[EnrichmentClient]:
        endpoint = self.endpoint(logger)
        profile = self.profile
        http = build_http_client(
            base_url=endpoint.base_url,
            api_key=endpoint.api_key,
            stats=stats,
            transport=endpoint.transport,
            timeout_s=self.request_timeout_s,
            max_attempts=self.max_attempts,
            shared_state_dir=endpoint.shared_state_dir,
            shared_state_url=endpoint.shared_state_url,
        )
        async with http:
            yield EnrichmentClient(
                http,
                stats=stats,
                include_fields={
                    "person": profile.person_include_fields,
                    "company": profile.company_include_fields,
                },
                use_bulk=self.use_bulk,
                bulk_size=self.bulk_size,
                max_concurrency=self.max_concurrency,
                max_credits=self.max_credits_per_run,
                logger=logger,
            )


class DataLegionResource(EnrichmentResource, DataLegionSettings):
    """The real enrichment API at ``base_url``, with the key from the environment."""

    api_key: str = Field(
        description=f"{env_name(SecretSettings, 'data_legion_api_key')}, read through EnvVar "
        "when a run starts"
    )
    warehouse_path: str | None = Field(
        default=None,
        description=f"{env_name(WarehouseSettings, 'warehouse_path')}: when it is Postgres, "
        "runs on every machine using this key share its rate-limit budget there",
    )

    @property
    def provider(self) -> str:
        return self.base_url

    def endpoint(self, logger: logging.Logger) -> ProviderEndpoint:
        # Every run using this key paces from one shared budget: on every machine in a Postgres
        # warehouse, else on this machine in a file.
        shared_in_postgres = self.warehouse_path is not None and is_postgres(self.warehouse_path)
        return ProviderEndpoint(
            base_url=self.base_url,
            api_key=self.api_key,
            transport=None,
            shared_state_dir=None if shared_in_postgres else Path(self.limiter_dir).expanduser(),
            shared_state_url=self.warehouse_path if shared_in_postgres else None,
        )


class SandboxEnrichmentResource(EnrichmentResource, SandboxConfig):
    """The built-in sandbox provider, in process: synthetic profiles, no real people, the same
    wire format and rate limiting as the real API. Used when no API key is set."""

    @property
    def provider(self) -> str:
        return SANDBOX_LABEL

    def endpoint(self, logger: logging.Logger) -> ProviderEndpoint:
        logger.info(
            f"{env_name(SecretSettings, 'data_legion_api_key')} is not set: using the built-in "
            "sandbox provider (synthetic profiles, no real people)"
        )
        sandbox = SandboxConfig(**group_values(self, SandboxConfig))
        return ProviderEndpoint(
            base_url=_SANDBOX_BASE_URL,
            api_key=sandbox.accepted_api_key or SANDBOX_LABEL,
            transport=httpx.ASGITransport(app=create_app(sandbox)),
            # The in-process sandbox is private to its run, so it keeps its own budget.
            shared_state_dir=None,
            shared_state_url=None,
        )


class PipelineResource(SettingsResource, PipelineSettings, PrivacySettings, FieldProfileSettings):
    """Freshness windows, chunking, how long raw answers are kept, the merge policy's confidence
    bar, what is exported where."""

    @property
    def merge_policy(self) -> MergePolicy:
        return MergePolicy(rules=DEFAULT_RULES, min_confidence=self.min_match_confidence)

    @property
    def export_columns(self) -> tuple[str, ...]:
        return field_profile(self.field_profile).crm_columns

    @property
    def keep_raw(self) -> bool:
        """Whether the provider's raw answer is stored at all: a retention of 0 keeps none."""
        return self.raw_retention_days > 0

    @property
    def freshness(self) -> Freshness:
        return Freshness(
            person_ttl_days=self.person_ttl_days,
            company_ttl_days=self.company_ttl_days,
            no_match_retry_days=self.no_match_retry_days,
        )


def run_time_secret(settings: Settings, name: str) -> EnvVar | None:
    """For a resource in the definitions: a reference Dagster resolves when a run starts, so
    the value is in no definition, log or UI; None when the secret is unset."""
    return EnvVar(env_name(Settings, name)) if settings.secret(name) else None


def run_time_warehouse(settings: Settings) -> dict[str, Any]:
    """For a resource in the definitions: a warehouse URL with a password in it is read through
    EnvVar when a run starts, as a secret is, so the UI never shows the password."""
    if postgres.has_password(settings.warehouse_path):
        return {"warehouse_path": EnvVar(env_name(WarehouseSettings, "warehouse_path"))}
    return {}


def enrichment_resource(
    settings: Settings, api_key: str | EnvVar | None, **values: Any
) -> EnrichmentResource:
    """The real provider when there is an API key, else the built-in sandbox."""
    if api_key is None:
        return SandboxEnrichmentResource.from_settings(settings)
    return DataLegionResource.from_settings(settings, api_key=api_key, **values)
