"""The baseline of ``make bench``: the rate-limit strategy of a widely shared enrichment article,
reimplemented from its description.

Five worker threads take the contacts in batches of five, with a 1.5 s pause between batches;
a 429 is retried after a delay that starts at 1 s and doubles on every further 429. It never
reads the rate-limit headers, and (as described) never gives up on a 429.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

WORKERS = 5
BATCH_SIZE = 5
PAUSE_BETWEEN_BATCHES_S = 1.5
FIRST_RETRY_DELAY_S = 1.0


@dataclass(frozen=True, slots=True)
class _Call:
    status: int | None  # None: stopped before an answer other than 429
    requests: int
    rate_limited: int


@dataclass(slots=True)
class ArticleRun:
    done: int = 0
    errors: int = 0
    requests: int = 0
    rate_limited: int = 0


def _enrich_one(http: httpx.Client, payload: dict[str, Any], stop: threading.Event) -> _Call:
    delay_s = FIRST_RETRY_DELAY_S
    requests = rate_limited = 0
    while True:
        response = http.post("/person/enrich", json=payload)
        requests += 1
        if response.status_code != 429:
            return _Call(response.status_code, requests, rate_limited)
        rate_limited += 1
        # Event.wait is the article's sleep, cut short only by the benchmark's deadline.
        if stop.wait(delay_s):
            return _Call(None, requests, rate_limited)
        delay_s *= 2


def enrich_all(
    base_url: str, api_key: str, payloads: Sequence[dict[str, Any]], stop: threading.Event
) -> ArticleRun:
    """Enrich every payload the article's way, or until ``stop`` is set."""
    run = ArticleRun()
    with (
        httpx.Client(base_url=base_url, headers={"API-Key": api_key}, timeout=30.0) as http,
        ThreadPoolExecutor(max_workers=WORKERS) as pool,
    ):
        for start in range(0, len(payloads), BATCH_SIZE):
            if start and stop.wait(PAUSE_BETWEEN_BATCHES_S):
                break
            batch = payloads[start : start + BATCH_SIZE]
            for call in pool.map(lambda payload: _enrich_one(http, payload, stop), batch):
                run.requests += call.requests
                run.rate_limited += call.rate_limited
                if call.status in (200, 404):
                    run.done += 1
                elif call.status is not None:
                    run.errors += 1
    return run
