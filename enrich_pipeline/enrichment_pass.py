"""One enrichment pass: stream results from the client and hand them to the warehouse in
chunks as they arrive, so a crash or a stop loses at most one chunk of paid look-ups."""

from __future__ import annotations

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

    def count(self, result: EnrichmentResult) -> None:
        if result.status is Outcome.MATCHED:
            self.matched += 1
        elif result.status is Outcome.NO_MATCH:
            self.no_match += 1
        else:
            self.errors += 1


async def run_enrichment_pass(
    client: EnrichmentClient,
    kind: Kind,
    queries: Sequence[Query],
    write_chunk: Callable[[list[EnrichmentResult]], None],
    *,
    chunk_size: int,
    report: PassReport,
) -> None:
    """Enrich ``queries``; every ``chunk_size`` results are written before more are awaited.
    ``report`` is counted as results arrive, so it is true even when the client stops with an
    error (bad key, credits gone): what already arrived is written, then the error propagates."""
    buffer: list[EnrichmentResult] = []

    def flush() -> None:
        if buffer:
            write_chunk(list(buffer))
            report.written += len(buffer)
            report.chunks += 1
            buffer.clear()

    try:
        async for result in client.enrich(kind, queries):
            report.count(result)
            buffer.append(result)
            if len(buffer) >= chunk_size:
                flush()
    finally:
        flush()
