"""The configured httpx client the enrichment client talks through."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from functools import cache
from typing import Any

import httpx

from enrich_pipeline.provider.models import CallStats
from enrich_pipeline.provider.pacing import Clock, Pacer, Sleep, StateStore
from enrich_pipeline.provider.shared_limit import DEFAULT_IN_FLIGHT_TTL_S, SharedStateStore
from enrich_pipeline.provider.shared_limit_postgres import PostgresStateStore
from enrich_pipeline.provider.transports import (
    DeadlineTransport,
    RetryTransport,
    StatsTransport,
    ThrottleTransport,
)

USER_AGENT = "enrich-pipeline/0.1"
API_KEY_HEADER = "API-Key"
REDACTED = "[redacted]"


@cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default verification, built once: loading the CA bundle takes about 30 ms, paid
    by every client otherwise (one per look-up an intake caller waits for)."""
    return httpx.create_ssl_context()


class ProviderHttpClient(httpx.AsyncClient):
    """The ``httpx.AsyncClient`` that ``build_http_client`` returns, with its ``pacer`` exposed
    so the enrichment client can cap how many requests it lets into flight."""

    def __init__(self, *, pacer: Pacer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pacer = pacer


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
    shared_state_dir: str | os.PathLike[str] | None = None,
    shared_state_url: str | None = None,
) -> ProviderHttpClient:
    """An ``httpx.AsyncClient`` with the key set, rate-limit pacing and bounded retries, every
    attempt counted in ``stats``.

    ``transport`` is what carries the requests (the sandbox's ``httpx.ASGITransport``, a mock);
    by default the network, with a connection pool of ``max_connections``.

    ``shared_state_dir`` makes every process using this key on this machine share one
    rate-limit budget through a file there (the ``ENRICH_LIMITER_DIR`` setting names the usual
    place). ``shared_state_url``, a Postgres warehouse's URL, makes every process on every
    machine share it there instead. Neither keeps the pacing state in this process.
    """
    if shared_state_dir is not None and shared_state_url is not None:
        raise ValueError("the rate-limit budget is shared through a folder or a database, not both")
    # The network transport times each request itself; any other is held to the same timeout.
    inner = (
        DeadlineTransport(transport)
        if transport is not None
        else httpx.AsyncHTTPTransport(
            verify=_tls_context(),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )
    )
    # httpx times each phase of an attempt (pool, connect, write, read) separately.
    in_flight_ttl_s = max(DEFAULT_IN_FLIGHT_TTL_S, 4 * timeout_s)
    store: StateStore | None = None
    if shared_state_url is not None:
        store = PostgresStateStore(
            base_url=base_url,
            api_key=api_key,
            location=shared_state_url,
            in_flight_ttl_s=in_flight_ttl_s,
        )
    elif shared_state_dir is not None:
        store = SharedStateStore(
            base_url=base_url,
            api_key=api_key,
            directory=shared_state_dir,
            in_flight_ttl_s=in_flight_ttl_s,
        )
    throttled = ThrottleTransport(inner, stats=stats, clock=clock, sleep=sleep, store=store)
    counted = StatsTransport(throttled, stats=stats)
    retrying = RetryTransport(
        counted, max_attempts=max_attempts, sleep=sleep, clock=clock, on_retry=counted.count_retry
    )
    return ProviderHttpClient(
        pacer=throttled.pacer,
        base_url=base_url,
        transport=retrying,
        timeout=httpx.Timeout(timeout_s),
        headers={
            API_KEY_HEADER: api_key,
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        },
    )
