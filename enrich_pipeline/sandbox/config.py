"""How the sandbox provider behaves: match rate, latency, rate limit, credits, injected faults."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args

LimitAlgorithm = Literal["token_bucket", "fixed_window"]
HeaderStyle = Literal["draft", "ietf"]
BulkCost = Literal["request", "item"]


@dataclass(frozen=True)
class SandboxConfig:
    match_rate: float = 0.85
    latency_ms: float = 20.0
    rate_limit_per_min: int | None = 600
    # The limit above applies per window of this many seconds (a minute unless shortened, e.g.
    # so a test can cross several windows quickly).
    rate_window_s: float = 60.0
    limit_algorithm: LimitAlgorithm = "fixed_window"
    header_style: HeaderStyle = "draft"
    bulk_cost: BulkCost = "request"
    api_key: str | None = None
    credits: int | None = None
    error_rate: float = 0.0
    slow_rate: float = 0.0
    slow_ms: float = 2000.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("match_rate", "error_rate", "slow_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        for name in ("latency_ms", "slow_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.rate_limit_per_min is not None and self.rate_limit_per_min < 1:
            raise ValueError("rate_limit_per_min must be at least 1, or None for unlimited")
        if not 0 < self.rate_window_s < math.inf:
            raise ValueError("rate_window_s must be a positive number of seconds")
        if self.credits is not None and self.credits < 0:
            raise ValueError("credits must not be negative")
        _check_choice("limit_algorithm", self.limit_algorithm, LimitAlgorithm)
        _check_choice("header_style", self.header_style, HeaderStyle)
        _check_choice("bulk_cost", self.bulk_cost, BulkCost)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> SandboxConfig:
        """Build a config from ``ENRICH_SANDBOX_*`` variables; unset ones keep their default."""
        values: dict[str, Any] = {}
        for var in ENV_VARS:
            raw = environ.get(var.name)
            if raw is None or raw.strip() == "":
                continue
            try:
                value = var.parse(raw.strip())
                # Range checks live in __post_init__; run them per variable to name the culprit.
                cls(**{var.field: value})
            except ValueError as exc:
                raise ValueError(f"{var.name}={raw!r} is not valid: {exc}") from None
            values[var.field] = value
        return cls(**values)


def _check_choice(name: str, value: str, choices: Any) -> None:
    allowed = get_args(choices)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}")


def _choice(choices: Any) -> Callable[[str], str]:
    allowed = get_args(choices)

    def parse(raw: str) -> str:
        value = raw.lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return value

    return parse


def _rate_limit(raw: str) -> int | None:
    if raw.lower() in ("0", "none"):
        return None
    value = int(raw)
    if value < 0:
        raise ValueError("expected a positive integer, 0 or none")
    return value


class EnvVar(NamedTuple):
    name: str
    field: str
    default: str
    meaning: str
    parse: Callable[[str], Any]


# The README table of sandbox settings is generated from (and checked against) this tuple.
ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar(
        "ENRICH_SANDBOX_MATCH_RATE",
        "match_rate",
        "0.85",
        "Fraction of identifiers that match (deterministic per identifier).",
        float,
    ),
    EnvVar(
        "ENRICH_SANDBOX_LATENCY_MS",
        "latency_ms",
        "20",
        "Milliseconds added to every enrich answer.",
        float,
    ),
    EnvVar(
        "ENRICH_SANDBOX_RATE_LIMIT",
        "rate_limit_per_min",
        "600",
        "Requests per minute; `0` or `none` means unlimited (no rate-limit headers).",
        _rate_limit,
    ),
    EnvVar(
        "ENRICH_SANDBOX_RATE_WINDOW_S",
        "rate_window_s",
        "60",
        "Seconds in a rate-limit window: `ENRICH_SANDBOX_RATE_LIMIT` requests per window.",
        float,
    ),
    EnvVar(
        "ENRICH_SANDBOX_LIMIT_ALGORITHM",
        "limit_algorithm",
        "fixed_window",
        "`fixed_window` (minute windows) or `token_bucket` (refills limit/60 per second).",
        _choice(LimitAlgorithm),
    ),
    EnvVar(
        "ENRICH_SANDBOX_HEADER_STYLE",
        "header_style",
        "draft",
        "`draft` (`RateLimit-Limit/Remaining/Reset`, reset as Unix time) or `ietf` "
        "(structured `RateLimit`, `t` in delta seconds).",
        _choice(HeaderStyle),
    ),
    EnvVar(
        "ENRICH_SANDBOX_BULK_COST",
        "bulk_cost",
        "request",
        "A bulk call counts as one `request` or as one per `item` against the limit.",
        _choice(BulkCost),
    ),
    EnvVar(
        "ENRICH_SANDBOX_API_KEY",
        "api_key",
        "(any non-empty key)",
        "The only API key accepted; unset accepts any non-empty key.",
        str,
    ),
    EnvVar(
        "ENRICH_SANDBOX_CREDITS",
        "credits",
        "(unlimited)",
        "Credits on the contract, one per matched record; 402 once exhausted.",
        int,
    ),
    EnvVar(
        "ENRICH_SANDBOX_ERROR_RATE",
        "error_rate",
        "0",
        "Fraction of enrich requests answered with a 500/502/503.",
        float,
    ),
    EnvVar(
        "ENRICH_SANDBOX_SLOW_RATE",
        "slow_rate",
        "0",
        "Fraction of enrich requests delayed by `ENRICH_SANDBOX_SLOW_MS`.",
        float,
    ),
    EnvVar(
        "ENRICH_SANDBOX_SLOW_MS",
        "slow_ms",
        "2000",
        "Extra milliseconds for a slow request.",
        float,
    ),
    EnvVar(
        "ENRICH_SANDBOX_SEED",
        "seed",
        "0",
        "Seed for the fault and slowness draws.",
        int,
    ),
)
