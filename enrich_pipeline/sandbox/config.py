"""How the sandbox provider behaves: match rate, latency, rate limit, credits, injected faults.

``SandboxConfig`` is one settings group (read from ``ENRICH_SANDBOX_*`` with the pipeline's
other settings) and, through the sandbox enrichment resource, Dagster resource configuration.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, field_validator

from enrich_pipeline.settings_base import SETTING_GROUP_CONFIG, setting, unlimited_as_none

LimitAlgorithm = Literal["token_bucket", "fixed_window"]
HeaderStyle = Literal["draft", "ietf"]
BulkCost = Literal["request", "item"]


class SandboxConfig(BaseModel):
    model_config = SETTING_GROUP_CONFIG

    match_rate: float = setting(
        "ENRICH_SANDBOX_MATCH_RATE",
        0.85,
        "fraction of identifiers that match (deterministic per identifier)",
        ge=0,
        le=1,
    )
    latency_ms: float = setting(
        "ENRICH_SANDBOX_LATENCY_MS", 20.0, "milliseconds added to every enrich answer", ge=0
    )
    rate_limit_per_min: int | None = setting(
        "ENRICH_SANDBOX_RATE_LIMIT",
        600,
        "requests per window; 0 or none means unlimited (no rate-limit headers)",
        ge=1,
    )
    # A minute unless shortened, e.g. so a test can cross several windows quickly.
    rate_window_s: float = setting(
        "ENRICH_SANDBOX_RATE_WINDOW_S",
        60.0,
        "seconds in a rate-limit window: ENRICH_SANDBOX_RATE_LIMIT requests per window",
        gt=0,
    )
    limit_algorithm: LimitAlgorithm = setting(
        "ENRICH_SANDBOX_LIMIT_ALGORITHM",
        "fixed_window",
        "fixed_window (windows of ENRICH_SANDBOX_RATE_WINDOW_S) or token_bucket",
    )
    header_style: HeaderStyle = setting(
        "ENRICH_SANDBOX_HEADER_STYLE",
        "draft",
        "draft (RateLimit-Limit/Remaining/Reset, reset as Unix time) or ietf (structured, t in "
        "seconds)",
    )
    bulk_cost: BulkCost = setting(
        "ENRICH_SANDBOX_BULK_COST",
        "request",
        "a bulk call counts as one request or as one per item against the limit",
    )
    accepted_api_key: str | None = setting(
        "ENRICH_SANDBOX_API_KEY",
        None,
        "the only API key the sandbox accepts; unset accepts any non-empty key",
    )
    credits: int | None = setting(
        "ENRICH_SANDBOX_CREDITS",
        None,
        "credits on the contract, one per match; 402 once exhausted (unset: unlimited)",
        ge=0,
    )
    error_rate: float = setting(
        "ENRICH_SANDBOX_ERROR_RATE",
        0.0,
        "fraction of enrich requests answered 500/502/503",
        ge=0,
        le=1,
    )
    slow_rate: float = setting(
        "ENRICH_SANDBOX_SLOW_RATE",
        0.0,
        "fraction of enrich requests delayed by ENRICH_SANDBOX_SLOW_MS",
        ge=0,
        le=1,
    )
    slow_ms: float = setting(
        "ENRICH_SANDBOX_SLOW_MS", 2000.0, "extra milliseconds for a slow request", ge=0
    )
    seed: int = setting("ENRICH_SANDBOX_SEED", 0, "seed for the fault and slowness draws")

    @field_validator("rate_limit_per_min", mode="before")
    @classmethod
    def _sandbox_rate_limit_may_be_off(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip() == "0":
            return None
        return unlimited_as_none(value)

    @field_validator("credits", mode="before")
    @classmethod
    def _sandbox_credits_may_be_unlimited(cls, value: Any) -> Any:
        return unlimited_as_none(value)

    @field_validator("rate_window_s")
    @classmethod
    def _sandbox_window_is_finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number of seconds")
        return value

    @field_validator("limit_algorithm", "header_style", "bulk_cost", mode="before")
    @classmethod
    def _sandbox_choices_in_any_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value
