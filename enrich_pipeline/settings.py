"""Every setting, declared once: its type, default, environment variable and meaning.

Settings come in groups, one per part of the pipeline. A group is a plain pydantic model; the
Dagster resource for that part inherits it, so the UI shows each resource's configuration with
the same descriptions. ``Settings`` joins the groups and reads them from the environment
(pydantic-settings) when it is created, never at import. Secrets are declared here too, but only
to know whether they are set: their values reach the resources through Dagster's ``EnvVar``.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from enrich_pipeline.field_profiles import PROFILES
from enrich_pipeline.merge_policy import Confidence
from enrich_pipeline.provider.models import MAX_BULK_SIZE
from enrich_pipeline.sandbox.config import SandboxConfig
from enrich_pipeline.settings_base import (
    SETTING_GROUP_CONFIG,
    env_name,
    group_values,
    setting,
    unlimited_as_none,
)

DESTINATIONS = ("file", "hubspot")


class SettingError(ValueError):
    """A setting's value cannot be used; the message names the variable."""


class WarehouseSettings(BaseModel):
    model_config = SETTING_GROUP_CONFIG

    warehouse_path: str = setting(
        "ENRICH_WAREHOUSE_URL",
        "data/warehouse.duckdb",
        "the warehouse: a DuckDB file's path, or a postgresql://user:password@host/db URL",
    )
    duckdb_memory_limit: str = setting(
        "ENRICH_DUCKDB_MEMORY_LIMIT",
        "2GB",
        "DuckDB memory cap per connection of the pipeline's steps (beyond it, DuckDB spills to "
        "disk; building a million contacts' days in one run needs more than 1 GB on DuckDB 1.5)",
    )
    ingest_memory_limit: str = setting(
        "ENRICH_INGEST_MEMORY_LIMIT",
        "640MB",
        "DuckDB memory cap while landing a CSV; with the process's own 100 MB or so, a file of "
        "any size lands in under 1 GB",
    )


class ProviderClientSettings(BaseModel):
    """How look-ups are sent, whichever provider answers them."""

    model_config = SETTING_GROUP_CONFIG

    use_bulk: bool = setting("ENRICH_USE_BULK", True, "use the bulk endpoints (up to 100 per call)")
    bulk_size: int = setting(
        "ENRICH_BULK_SIZE", MAX_BULK_SIZE, f"items per bulk call (at most {MAX_BULK_SIZE})", ge=1
    )
    max_concurrency: int = setting(
        "ENRICH_MAX_CONCURRENCY",
        32,
        "cap on requests in flight (the client sizes it to rate × latency below the cap)",
        ge=1,
    )
    max_credits_per_run: int | None = setting(
        "ENRICH_MAX_CREDITS_PER_RUN",
        None,
        "a run stops cleanly once it has used this many credits; the rest waits for the next "
        "run (unset: unlimited)",
        ge=1,
    )
    max_attempts: int = setting(
        "ENRICH_MAX_ATTEMPTS", 5, "attempts per request (429, 5xx, timeouts)", ge=1
    )
    request_timeout_s: float = setting(
        "ENRICH_REQUEST_TIMEOUT_S", 30.0, "per-request timeout, seconds", gt=0
    )

    @field_validator("bulk_size")
    @classmethod
    def _bulk_size_at_most_a_bulk_call(cls, value: int) -> int:
        return min(value, MAX_BULK_SIZE)

    @field_validator("max_credits_per_run", mode="before")
    @classmethod
    def _credits_per_run_may_be_unlimited(cls, value: Any) -> Any:
        return unlimited_as_none(value)


class DataLegionSettings(BaseModel):
    """The real provider."""

    model_config = SETTING_GROUP_CONFIG

    base_url: str = setting(
        "DATA_LEGION_BASE_URL",
        "https://api.datalegion.ai",
        "enrichment API base URL (used when the API key is set)",
    )
    limiter_dir: str = setting(
        "ENRICH_LIMITER_DIR",
        "~/.cache/enrich_pipeline/ratelimit",
        "where runs using one API key on this machine share its rate-limit state (with a "
        "Postgres warehouse, every machine shares it there instead)",
    )

    @field_validator("base_url")
    @classmethod
    def _base_url_without_slash(cls, value: str) -> str:
        return value.strip().rstrip("/")


class FieldProfileSettings(BaseModel):
    model_config = SETTING_GROUP_CONFIG

    field_profile: str = setting(
        "ENRICH_FIELD_PROFILE",
        "sales_prospecting",
        f"{', '.join(PROFILES)}: the fields asked of the provider and the columns exported",
    )

    @field_validator("field_profile")
    @classmethod
    def _field_profile_is_known(cls, value: str) -> str:
        if value not in PROFILES:
            raise ValueError(f"expected one of {', '.join(PROFILES)}")
        return value


class PipelineSettings(BaseModel):
    """Freshness windows, chunking, the merge policy's confidence bar, where records go."""

    model_config = SETTING_GROUP_CONFIG

    person_ttl_days: int = setting(
        "ENRICH_PERSON_TTL_DAYS", 30, "a matched person is fresh this long", ge=1
    )
    company_ttl_days: int = setting(
        "ENRICH_COMPANY_TTL_DAYS", 90, "a matched company is fresh this long", ge=1
    )
    no_match_retry_days: int = setting(
        "ENRICH_NO_MATCH_RETRY_DAYS",
        14,
        "a no-match is asked again after this long; errors are retried on the next run",
        ge=0,
    )
    chunk_size: int = setting(
        "ENRICH_CHUNK_SIZE",
        200,
        "results written to the warehouse per chunk (a crash loses at most one)",
        ge=1,
    )
    save_every_s: float = setting(
        "ENRICH_SAVE_EVERY_S",
        2.0,
        "results are also written at least this often, however few (a crash repeats at most "
        "this much of paid look-ups)",
        gt=0,
    )
    full_previews: bool = setting(
        "ENRICH_FULL_PREVIEWS",
        False,
        "show emails, phones and names unmasked in asset previews (a development machine only: "
        "Dagster's event log keeps them and no erasure reaches it)",
    )
    min_match_confidence: Confidence = setting(
        "ENRICH_MIN_MATCH_CONFIDENCE",
        Confidence.MODERATE,
        "enrichment replaces a lead's title, company, seniority and location only at this "
        "match confidence (low, moderate, high)",
    )
    crm_destinations: list[str] = setting(
        "ENRICH_CRM_DESTINATIONS",
        ["file"],
        f"where CRM records go, comma-separated: {', '.join(DESTINATIONS)}",
    )

    @field_validator("crm_destinations", mode="before")
    @classmethod
    def _destinations_comma_separated(cls, value: Any) -> list[str]:
        parts = value.split(",") if isinstance(value, str) else value
        chosen = list(
            dict.fromkeys(str(part).strip().lower() for part in parts if str(part).strip())
        )
        if not chosen or any(name not in DESTINATIONS for name in chosen):
            raise ValueError(f"expected a comma-separated list of {', '.join(DESTINATIONS)}")
        return chosen

    @field_validator("min_match_confidence", mode="before")
    @classmethod
    def _confidence_in_any_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


class AutomationSettings(BaseModel):
    """The partitions, and how often the sensor looks for new rows."""

    model_config = SETTING_GROUP_CONFIG

    partition_start: str = setting(
        "ENRICH_PARTITION_START", "2024-01-01", "first daily partition (UTC date)"
    )
    sensor_interval_s: int = setting(
        "ENRICH_SENSOR_INTERVAL_S",
        15,
        "how often new_contacts_sensor looks for newly landed rows, seconds",
        ge=1,
    )
    sensor_max_rows_per_tick: int = setting(
        "ENRICH_SENSOR_MAX_ROWS_PER_TICK",
        100_000,
        "landed rows one sensor tick takes on at most (a bigger backlog takes more ticks)",
        ge=1,
    )

    @field_validator("partition_start")
    @classmethod
    def _partition_start_is_a_date(cls, value: str) -> str:
        return date.fromisoformat(value.strip()).isoformat()


class QualitySettings(BaseModel):
    """What the warning checks accept, as shares between 0 and 1."""

    model_config = SETTING_GROUP_CONFIG

    min_match_rate: float = setting(
        "ENRICH_MIN_MATCH_RATE",
        0.5,
        "asset check warns when the person match rate falls below this share",
        ge=0,
        le=1,
    )
    max_quarantine_share: float = setting(
        "ENRICH_MAX_QUARANTINE_SHARE",
        0.05,
        "asset check warns when more than this share of landed rows is quarantined",
        ge=0,
        le=1,
    )
    max_stale_share: float = setting(
        "ENRICH_MAX_STALE_SHARE",
        0.2,
        "asset check warns when more than this share of records is past its TTL",
        ge=0,
        le=1,
    )


class PrivacySettings(BaseModel):
    """How long personal data nobody typed in is kept."""

    model_config = SETTING_GROUP_CONFIG

    raw_retention_days: int = setting(
        "ENRICH_RAW_RETENTION_DAYS",
        30,
        "the provider's raw JSON answer is kept this long, then cleared by the stale refresh "
        "(the profile's columns stay); 0 keeps none",
        ge=0,
    )


class FileExportSettings(BaseModel):
    model_config = SETTING_GROUP_CONFIG

    export_dir: str = setting(
        "ENRICH_EXPORT_DIR", "data/exports", "where crm_contacts.csv and .parquet are written"
    )


class HubSpotSettings(BaseModel):
    model_config = SETTING_GROUP_CONFIG

    hubspot_base_url: str = setting(
        "HUBSPOT_BASE_URL", "https://api.hubapi.com", "HubSpot API base URL"
    )

    @field_validator("hubspot_base_url")
    @classmethod
    def _hubspot_url_without_slash(cls, value: str) -> str:
        return value.strip().rstrip("/")


class IntakeSettings(BaseModel):
    """The intake service (``enrich-pipeline serve``)."""

    model_config = SETTING_GROUP_CONFIG

    intake_host: str = setting(
        "ENRICH_INTAKE_HOST",
        "127.0.0.1",
        "address the intake service listens on; anything but loopback needs a token",
    )
    intake_port: int = setting(
        "ENRICH_INTAKE_PORT", 8000, "port the intake service listens on", ge=1, le=65535
    )
    intake_journal_path: str = setting(
        "ENRICH_INTAKE_JOURNAL_PATH",
        "data/intake.sqlite3",
        "durable journal of accepted leads (SQLite), landed from there into raw_contacts (with "
        "a Postgres warehouse, every replica's journal is there instead)",
    )
    intake_token: SecretStr | None = setting(
        "ENRICH_INTAKE_TOKEN",
        None,
        "bearer token callers of POST /v1/leads must send (secret); required off loopback",
    )
    webhook_secret: SecretStr | None = setting(
        "ENRICH_WEBHOOK_SECRET",
        None,
        "Standard Webhooks signing secret (whsec_...) for POST /v1/webhooks/generic (secret)",
    )
    hubspot_client_secret: SecretStr | None = setting(
        "HUBSPOT_CLIENT_SECRET",
        None,
        "the HubSpot app's client secret, verifying POST /v1/webhooks/hubspot (secret)",
    )


class SecretSettings(BaseModel):
    """Read only to know whether each is set; resources get them through ``EnvVar``."""

    model_config = SETTING_GROUP_CONFIG

    data_legion_api_key: SecretStr | None = setting(
        "DATA_LEGION_API_KEY",
        None,
        "enrichment API key (secret, via EnvVar); unset means the built-in sandbox",
    )
    hubspot_access_token: SecretStr | None = setting(
        "HUBSPOT_ACCESS_TOKEN",
        None,
        "HubSpot private app token with crm.objects.contacts.write (secret, via EnvVar); "
        "required when hubspot is a destination",
    )


# Validators of every group end up on one class: their names must differ.
class Settings(
    BaseSettings,
    SecretSettings,
    DataLegionSettings,
    WarehouseSettings,
    FileExportSettings,
    AutomationSettings,
    PipelineSettings,
    PrivacySettings,
    ProviderClientSettings,
    FieldProfileSettings,
    HubSpotSettings,
    QualitySettings,
    IntakeSettings,
    SandboxConfig,
):
    """All settings: ``Settings()`` reads the environment; unset or empty variables keep their
    defaults, and keyword arguments (by field name) win over both."""

    model_config = SettingsConfigDict(
        **SETTING_GROUP_CONFIG,
        env_ignore_empty=True,
        extra="ignore",
        # Lists such as ENRICH_CRM_DESTINATIONS are comma-separated, not JSON.
        enable_decoding=False,
    )

    @classmethod
    def from_env(cls) -> Settings:
        """``Settings()``, with an unusable value reported as a ``SettingError`` naming its
        variable."""
        try:
            return cls()
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                name = ".".join(str(part) for part in error["loc"])
                problems.append(f"{name}={error.get('input')!r} is not usable: {error['msg']}")
            raise SettingError("; ".join(problems)) from None

    @property
    def sandbox(self) -> SandboxConfig:
        return SandboxConfig(**group_values(self, SandboxConfig))

    def secret(self, name: str) -> str | None:
        """A secret's value, None when unset or empty. For code that runs outside Dagster (the
        intake service); resources get ``EnvVar`` references instead."""
        value: SecretStr | None = getattr(self, name)
        return (value.get_secret_value() or None) if value is not None else None


def environment_for(**values: Any) -> dict[str, str]:
    """The variables that give these settings (by field name) these values, for a process
    started with them."""
    return {
        env_name(Settings, name): "none" if value is None else str(value)
        for name, value in values.items()
    }


def declared_settings() -> dict[str, str]:
    """Every environment variable the project reads, with the setting it fills."""
    return {env_name(Settings, name): name for name in Settings.model_fields}
