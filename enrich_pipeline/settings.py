"""Every non-secret setting, read from the environment once, with a clear error naming the
variable when a value cannot be used. Secrets (API keys) are not here: they reach the
resources through Dagster's ``EnvVar`` so they are resolved at run time and never logged."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import date
from typing import Any

from enrich_pipeline.field_profiles import field_profile
from enrich_pipeline.merge_policy import Confidence

DEFAULT_BASE_URL = "https://api.datalegion.ai"


class SettingError(ValueError):
    """A setting's value cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Setting:
    env: str
    default: Any
    meaning: str


def _optional_positive_int(raw: str) -> int | None:
    return None if raw.strip().lower() in {"", "none", "unlimited"} else _positive_int(raw)


def _share(raw: str) -> float:
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        raise ValueError("expected a share between 0 and 1")
    return value


def _profile(raw: str) -> str:
    return field_profile(raw.strip()).name


DESTINATIONS = ("file", "hubspot")


def _destinations(raw: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(part.strip().lower() for part in raw.split(",") if part.strip()))
    unknown = [name for name in chosen if name not in DESTINATIONS]
    if unknown or not chosen:
        raise ValueError(f"expected a comma-separated list of {', '.join(DESTINATIONS)}")
    return chosen


def _confidence(raw: str) -> str:
    return Confidence(raw.strip().lower()).value


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("expected a whole number above 0")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("expected a whole number, 0 or more")
    return value


_PARSERS: dict[str, Callable[[str], Any]] = {
    "warehouse_path": str,
    "export_dir": str,
    "duckdb_memory_limit": lambda raw: raw.strip(),
    "partition_start": lambda raw: date.fromisoformat(raw.strip()).isoformat(),
    "person_ttl_days": _positive_int,
    "company_ttl_days": _positive_int,
    "no_match_retry_days": _non_negative_int,
    "base_url": lambda raw: raw.strip().rstrip("/"),
    "use_bulk": _bool,
    "bulk_size": lambda raw: min(_positive_int(raw), 100),
    "max_concurrency": _positive_int,
    "chunk_size": _positive_int,
    "max_attempts": _positive_int,
    "max_credits_per_run": _optional_positive_int,
    "request_timeout_s": _positive_int,
    "sensor_interval_s": _positive_int,
    "sensor_max_rows_per_tick": _positive_int,
    "min_match_rate": _share,
    "max_quarantine_share": _share,
    "max_stale_share": _share,
    "field_profile": _profile,
    "crm_destinations": _destinations,
    "min_match_confidence": _confidence,
    "hubspot_base_url": lambda raw: raw.strip().rstrip("/"),
}


@dataclass(frozen=True)
class Settings:
    warehouse_path: str = "data/warehouse.duckdb"
    export_dir: str = "data/exports"
    duckdb_memory_limit: str = "1GB"
    partition_start: str = "2024-01-01"
    person_ttl_days: int = 30
    company_ttl_days: int = 90
    no_match_retry_days: int = 14
    base_url: str = DEFAULT_BASE_URL
    use_bulk: bool = True
    bulk_size: int = 100
    max_concurrency: int = 32
    chunk_size: int = 200
    max_attempts: int = 5
    max_credits_per_run: int | None = None
    request_timeout_s: int = 30
    sensor_interval_s: int = 15
    sensor_max_rows_per_tick: int = 100_000
    min_match_rate: float = 0.5
    max_quarantine_share: float = 0.05
    max_stale_share: float = 0.2
    field_profile: str = "sales_prospecting"
    crm_destinations: tuple[str, ...] = ("file",)
    min_match_confidence: str = "moderate"
    hubspot_base_url: str = "https://api.hubapi.com"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = SETTINGS[f.name].env
            raw = environ.get(name)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[f.name] = _PARSERS[f.name](raw)
            except ValueError as exc:
                raise SettingError(f"{name}={raw!r} is not usable: {exc}") from None
        return cls(**values)


SETTINGS: dict[str, Setting] = {
    "warehouse_path": Setting(
        "ENRICH_WAREHOUSE_PATH", Settings.warehouse_path, "DuckDB warehouse file"
    ),
    "export_dir": Setting(
        "ENRICH_EXPORT_DIR", Settings.export_dir, "where crm_contacts.csv is written"
    ),
    "duckdb_memory_limit": Setting(
        "ENRICH_DUCKDB_MEMORY_LIMIT",
        Settings.duckdb_memory_limit,
        "DuckDB memory cap per connection (beyond it, DuckDB spills to disk)",
    ),
    "partition_start": Setting(
        "ENRICH_PARTITION_START", Settings.partition_start, "first daily partition (UTC date)"
    ),
    "person_ttl_days": Setting(
        "ENRICH_PERSON_TTL_DAYS", Settings.person_ttl_days, "a matched person is fresh this long"
    ),
    "company_ttl_days": Setting(
        "ENRICH_COMPANY_TTL_DAYS", Settings.company_ttl_days, "a matched company is fresh this long"
    ),
    "no_match_retry_days": Setting(
        "ENRICH_NO_MATCH_RETRY_DAYS",
        Settings.no_match_retry_days,
        "a no-match is asked again after this long (errors: on the next run)",
    ),
    "base_url": Setting(
        "DATA_LEGION_BASE_URL",
        Settings.base_url,
        "enrichment API base URL (used when DATA_LEGION_API_KEY is set)",
    ),
    "use_bulk": Setting(
        "ENRICH_USE_BULK", Settings.use_bulk, "use the bulk endpoints (up to 100 per call)"
    ),
    "bulk_size": Setting("ENRICH_BULK_SIZE", Settings.bulk_size, "items per bulk call (max 100)"),
    "max_concurrency": Setting(
        "ENRICH_MAX_CONCURRENCY",
        Settings.max_concurrency,
        "cap on requests in flight (the client sizes it to rate x latency below the cap)",
    ),
    "chunk_size": Setting(
        "ENRICH_CHUNK_SIZE",
        Settings.chunk_size,
        "results written to the warehouse per chunk (a crash loses at most one)",
    ),
    "max_attempts": Setting(
        "ENRICH_MAX_ATTEMPTS", Settings.max_attempts, "attempts per request (429, 5xx, timeouts)"
    ),
    "max_credits_per_run": Setting(
        "ENRICH_MAX_CREDITS_PER_RUN",
        "unlimited",
        "a run stops cleanly once it has used this many credits; the rest waits for the next run",
    ),
    "request_timeout_s": Setting(
        "ENRICH_REQUEST_TIMEOUT_S", Settings.request_timeout_s, "per-request timeout, seconds"
    ),
    "sensor_interval_s": Setting(
        "ENRICH_SENSOR_INTERVAL_S",
        Settings.sensor_interval_s,
        "how often new_contacts_sensor looks for newly landed rows, seconds",
    ),
    "sensor_max_rows_per_tick": Setting(
        "ENRICH_SENSOR_MAX_ROWS_PER_TICK",
        Settings.sensor_max_rows_per_tick,
        "landed rows one sensor tick takes on at most (a bigger backlog takes more ticks)",
    ),
    "min_match_rate": Setting(
        "ENRICH_MIN_MATCH_RATE",
        Settings.min_match_rate,
        "asset check warns when the person match rate falls below this share",
    ),
    "max_quarantine_share": Setting(
        "ENRICH_MAX_QUARANTINE_SHARE",
        Settings.max_quarantine_share,
        "asset check warns when more than this share of landed rows is quarantined",
    ),
    "max_stale_share": Setting(
        "ENRICH_MAX_STALE_SHARE",
        Settings.max_stale_share,
        "asset check warns when more than this share of records is past its TTL",
    ),
    "field_profile": Setting(
        "ENRICH_FIELD_PROFILE",
        Settings.field_profile,
        "sales_prospecting, lead_scoring or data_hygiene: fields asked for and columns exported",
    ),
    "crm_destinations": Setting(
        "ENRICH_CRM_DESTINATIONS",
        "file",
        "where CRM records go, comma-separated: file, hubspot",
    ),
    "min_match_confidence": Setting(
        "ENRICH_MIN_MATCH_CONFIDENCE",
        Settings.min_match_confidence,
        "enrichment replaces a lead's title, company, seniority, location only at this confidence",
    ),
    "hubspot_base_url": Setting(
        "HUBSPOT_BASE_URL", Settings.hubspot_base_url, "HubSpot API base URL"
    ),
}
