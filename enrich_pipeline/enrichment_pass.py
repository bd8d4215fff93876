"""One enrichment pass: stream results from the client and hand them to the warehouse in
chunks as they arrive, and at least every few seconds, so a crash or a stop repeats at most one
chunk, or a few seconds, of paid look-ups."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from enrich_pipeline.provider.client import EnrichmentClient
from enrich_pipeline.provider.models import EnrichmentResult, Kind, Outcome, Query


@dataclass
class PassReport:
    requested: int
    matched: int = 0
    no_match: int = 0
    errors: int = 0
    written: int = 0
    chunks: int = 0
    # The first error's text (never a query's values): what a failed run reports.
    first_error: str | None = None

    def count(self, result: EnrichmentResult) -> None:
        if result.status is Outcome.MATCHED:
            self.matched += 1
        elif result.status is Outcome.NO_MATCH:
            self.no_match += 1
        else:
            self.errors += 1
            self.first_error = self.first_error or result.error

    @property
    def all_failed(self) -> bool:
        """Look-ups were made and not one was answered: the provider could not be reached, or
        refused everything."""
        return self.errors > 0 and self.matched == self.no_match == 0


async def run_enrichment_pass(
    client: EnrichmentClient,
    kind: Kind,
    queries: Sequence[Query],
    write_chunk: Callable[[list[EnrichmentResult]], None],
    *,
    chunk_size: int,
    report: PassReport,
    save_every_s: float,
) -> None:
    """Enrich ``queries``; every ``chunk_size`` results are written before more are awaited,
    and what has arrived is written every ``save_every_s`` however few it is (a slow or
    rate-limited provider fills a chunk in minutes). ``report`` is counted as results arrive,
    so it is true even when the client stops with an error (bad key, credits gone): what
    already arrived is written, then the error propagates."""
    buffer: list[EnrichmentResult] = []

    def flush() -> None:
        if buffer:
            write_chunk(list(buffer))
            report.written += len(buffer)
            report.chunks += 1
            buffer.clear()

    async def flush_regularly() -> None:
        while True:
            await asyncio.sleep(save_every_s)
            flush()

    saver = asyncio.create_task(flush_regularly())
    try:
        async for result in client.enrich(kind, queries):
            report.count(result)
            buffer.append(result)
            if len(buffer) >= chunk_size:
                flush()
    finally:
        saver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await saver
        flush()
