"""The configured httpx client the enrichment client talks through."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import httpx

from enrich_pipeline.provider.models import CallStats
from enrich_pipeline.provider.transports import Clock, RetryTransport, Sleep, ThrottleTransport

USER_AGENT = "enrich-pipeline/0.1"
API_KEY_HEADER = "API-Key"
# Headers whose values are credentials. httpx's own repr hides only Authorization, so anything
# of ours that describes a request goes through redact_headers().
SENSITIVE_HEADERS = frozenset(
    {API_KEY_HEADER.lower(), "authorization", "proxy-authorization", "cookie", "set-cookie"}
)
REDACTED = "[redacted]"


def build_http_client(
    *,
    base_url: str,
    api_key: str,
    stats: CallStats,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout_s: float = 30.0,
    max_attempts: int = 5,
    max_connections: int = 64,
    sleep: Sleep = asyncio.sleep,
    clock: Clock = time.time,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` with the key set, rate-limit pacing and bounded retries.

    ``transport`` is what carries the requests (the sandbox's ``httpx.ASGITransport``, a mock);
    by default the network, with a connection pool of ``max_connections``.
    """
    inner = transport or httpx.AsyncHTTPTransport(
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
    )
    throttled = ThrottleTransport(inner, stats=stats, clock=clock, sleep=sleep)
    retrying = RetryTransport(
        throttled, stats=stats, max_attempts=max_attempts, sleep=sleep, clock=clock
    )
    return httpx.AsyncClient(
        base_url=base_url,
        transport=retrying,
        timeout=httpx.Timeout(timeout_s),
        headers={
            API_KEY_HEADER: api_key,
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        },
    )


def redact_headers(headers: httpx.Headers | Mapping[str, str]) -> dict[str, str]:
    """Headers safe to log or show: credential values replaced by ``[redacted]``."""
    return {
        name: REDACTED if name.lower() in SENSITIVE_HEADERS else value
        for name, value in httpx.Headers(headers).items()
    }
