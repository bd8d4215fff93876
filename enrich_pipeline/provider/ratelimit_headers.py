"""Pure parsing of rate-limit response headers, in every form servers send them.

Two families exist in the wild: the de-facto ``RateLimit-Limit/-Remaining/-Reset`` trio with a
``RateLimit-Policy: 100/min`` policy, and the IETF draft's structured ``RateLimit-Policy:
"default";q=100;w=60`` plus ``RateLimit: "default";r=50;t=30``. Both are read; a value that does
not parse is ignored rather than raised, because a bad header must never fail an enrichment call.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

import httpx

# Below this a reset value is a delta in seconds; above it, a Unix timestamp (10^9 is 2001).
_TIMESTAMP_THRESHOLD = 1_000_000_000

_UNIT_SECONDS: dict[str, float] = {
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hour": 3600,
    "hours": 3600,
}

_SIMPLE_POLICY = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """What one response said about the rate limit; ``None`` fields were absent or malformed."""

    limit: int | None = None
    remaining: int | None = None
    reset_at: float | None = None
    window_s: float | None = None
    policy_quota: int | None = None
    retry_after_s: float | None = None


def parse_rate_limit(
    headers: httpx.Headers | Mapping[str, str], now: float
) -> RateLimitInfo | None:
    """Read every rate-limit header form; ``None`` when the response carried none usable."""
    # One pass over the headers: this runs for every response.
    found = {
        lowered: value
        for name, value in headers.items()
        if (lowered := name.lower()).startswith("ratelimit") or lowered == "retry-after"
    }
    if not found:
        return None
    quota, window_s = _parse_policy(found.get("ratelimit-policy"))
    remaining = _parse_count(found.get("ratelimit-remaining"))
    reset_at = _parse_reset(found.get("ratelimit-reset"), now)
    structured_remaining, structured_reset_at = _parse_structured_ratelimit(
        found.get("ratelimit"), now
    )
    info = RateLimitInfo(
        limit=_parse_count(_first_item(found.get("ratelimit-limit"))),
        remaining=remaining if remaining is not None else structured_remaining,
        reset_at=reset_at if reset_at is not None else structured_reset_at,
        window_s=window_s,
        policy_quota=quota,
        retry_after_s=_parse_retry_after(found.get("retry-after"), now),
    )
    return None if info == RateLimitInfo() else info


def _first_item(value: str | None) -> str | None:
    # Older drafts sent "RateLimit-Limit: 100, 100;w=60": the first item is the active limit.
    if value is None:
        return None
    return value.split(",")[0].split(";")[0]


def _parse_count(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        count = int(value.strip())
    except ValueError:
        return None
    return count if count >= 0 else None


def _parse_seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _parse_reset(value: str | None, now: float) -> float | None:
    seconds = _parse_seconds(value)
    if seconds is None:
        return None
    return seconds if seconds > _TIMESTAMP_THRESHOLD else now + seconds


def _parse_retry_after(value: str | None, now: float) -> float | None:
    seconds = _parse_seconds(value)
    if seconds is not None:
        return seconds
    if value is None:
        return None
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT; "-0000" parses as naive
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def _parse_params(item: str) -> dict[str, str]:
    """Parameters of one structured-field item, e.g. ``"default";q=100;w=60`` → {q: 100, w: 60}."""
    params: dict[str, str] = {}
    for part in item.split(";")[1:]:
        name, sep, value = part.partition("=")
        if sep:
            params[name.strip().lower()] = value.strip()
    return params


def _parse_policy(value: str | None) -> tuple[int | None, float | None]:
    """(quota, window seconds) of the most restrictive policy listed, i.e. the lowest rate."""
    if value is None:
        return None, None
    candidates: list[tuple[int, float | None]] = []
    for item in value.split(","):
        if simple := _SIMPLE_POLICY.match(item):
            unit = _UNIT_SECONDS.get(simple.group(2).lower())
            if unit is not None:
                candidates.append((int(simple.group(1)), unit))
            continue
        params = _parse_params(item)
        # Draft 03 wrote "100;w=60" (bare quota); later drafts write "name";q=100;w=60.
        quota = _parse_count(params.get("q", item.split(";")[0]))
        if quota is None:
            continue
        window = _parse_seconds(params.get("w"))
        candidates.append((quota, window if window else None))
    if not candidates:
        return None, None
    # A policy without a window cannot be compared as a rate; its quota alone still counts.
    return min(candidates, key=lambda c: c[0] / c[1] if c[1] else float(c[0]))


def _parse_structured_ratelimit(value: str | None, now: float) -> tuple[int | None, float | None]:
    """(remaining, reset_at) from the IETF ``RateLimit`` field; the item with least left wins."""
    if value is None:
        return None, None
    best: tuple[int, float | None] | None = None
    for item in value.split(","):
        params = _parse_params(item)
        remaining = _parse_count(params.get("r"))
        if remaining is None:
            continue
        reset_s = _parse_seconds(params.get("t"))
        if best is None or remaining < best[0]:
            best = (remaining, now + reset_s if reset_s is not None else None)
    return best if best is not None else (None, None)
