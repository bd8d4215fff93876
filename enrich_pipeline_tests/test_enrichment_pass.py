"""Streaming enrichment results into the warehouse in chunks, up to a run-ending error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from enrich_pipeline.enrichment_pass import PassReport, run_enrichment_pass
from enrich_pipeline.provider.errors import CreditsExhausted, ProviderError
from enrich_pipeline.provider.models import EnrichmentResult, Kind, Outcome, PersonQuery, Query
from enrich_pipeline.warehouse.connection import connect
from enrich_pipeline.warehouse.enrichment import store_persons

NOW = datetime(2026, 9, 10, 12, 0)
CYCLE = (Outcome.MATCHED, Outcome.NO_MATCH, Outcome.MATCHED, Outcome.ERROR)


class FakeClient:
    """Answers queries in order, then raises ``fail_with`` (if any) instead of the next one.
    Records, for each answer, how many results had been written when it was produced."""

    def __init__(self, answers: int, fail_with: Exception | None = None) -> None:
        self.answers = answers
        self.fail_with = fail_with
        self.written_before: list[int] = []
        self.written = 0

    async def enrich(self, kind: Kind, queries: Sequence[Query]) -> AsyncIterator[EnrichmentResult]:
        for index, query in enumerate(queries[: self.answers]):
            self.written_before.append(self.written)
            status = CYCLE[index % len(CYCLE)]
            yield EnrichmentResult(
                key=query.key,
                status=status,
                record={"job_title": "Engineer"} if status is Outcome.MATCHED else None,
                error="HTTP 500" if status is Outcome.ERROR else None,
            )
        if self.fail_with is not None:
            raise self.fail_with


def queries(count: int) -> list[PersonQuery]:
    return [PersonQuery(key=f"p{i}@example.com", email=f"p{i}@example.com") for i in range(count)]


def a_pass(
    client: object,
    write_chunk: Callable[[list[EnrichmentResult]], None],
    report: PassReport,
    *,
    chunk_size: int,
    save_every_s: float = 60,
) -> Coroutine[Any, Any, None]:
    """A pass over ``report.requested`` person queries."""
    return run_enrichment_pass(
        client,  # type: ignore[arg-type]
        "person",
        queries(report.requested),
        write_chunk,
        chunk_size=chunk_size,
        report=report,
        save_every_s=save_every_s,
    )


def run(
    client: FakeClient, count: int, chunk_size: int
) -> tuple[list[list[str]], PassReport, BaseException | None]:
    chunks: list[list[str]] = []

    def write_chunk(results: list[EnrichmentResult]) -> None:
        chunks.append([r.key for r in results])
        client.written += len(results)

    report = PassReport(requested=count)
    raised: BaseException | None = None
    try:
        asyncio.run(a_pass(client, write_chunk, report, chunk_size=chunk_size))
    except ProviderError as exc:
        raised = exc
    return chunks, report, raised


def test_results_before_a_run_ending_error_are_all_written() -> None:
    credits_gone = CreditsExhausted(endpoint="/v1/person/enrich", credits_available=0)
    client = FakeClient(answers=7, fail_with=credits_gone)

    chunks, report, raised = run(client, count=10, chunk_size=3)

    assert raised is credits_gone
    assert chunks == [
        ["p0@example.com", "p1@example.com", "p2@example.com"],
        ["p3@example.com", "p4@example.com", "p5@example.com"],
        ["p6@example.com"],
    ]
    assert (report.matched, report.no_match, report.errors) == (4, 2, 1)
    assert (report.written, report.chunks, report.requested) == (7, 3, 10)


def test_each_full_chunk_is_written_before_more_results_are_awaited() -> None:
    client = FakeClient(answers=7)

    run(client, count=7, chunk_size=3)

    assert client.written_before == [0, 0, 0, 3, 3, 3, 6]


def test_an_exact_number_of_chunks_writes_no_empty_chunk() -> None:
    chunks, report, raised = run(FakeClient(answers=6), count=6, chunk_size=3)

    assert raised is None
    assert [len(chunk) for chunk in chunks] == [3, 3]
    assert (report.written, report.chunks) == (6, 2)


def test_an_error_before_any_result_writes_nothing() -> None:
    credits_gone = CreditsExhausted(endpoint="/v1/person/enrich")

    chunks, report, raised = run(FakeClient(answers=0, fail_with=credits_gone), 4, 3)

    assert raised is credits_gone
    assert chunks == []
    assert (report.matched, report.no_match, report.errors, report.written) == (0, 0, 0, 0)


def test_results_before_the_error_reach_the_warehouse(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    client = FakeClient(answers=5, fail_with=CreditsExhausted(endpoint="/v1/person/enrich"))

    def write_chunk(results: list[EnrichmentResult]) -> None:
        with connect(warehouse) as con:
            store_persons(con, results, NOW)

    report = PassReport(requested=8)
    with pytest.raises(CreditsExhausted):
        asyncio.run(a_pass(client, write_chunk, report, chunk_size=2))

    with connect(warehouse, read_only=True) as con:
        stored: list[Any] = con.execute(
            "SELECT identity, status FROM person_enrichment ORDER BY identity"
        ).fetchall()
    assert stored == [
        ("p0@example.com", "matched"),
        ("p1@example.com", "no_match"),
        ("p2@example.com", "matched"),
        ("p3@example.com", "error"),
        ("p4@example.com", "matched"),
    ]
    assert (report.written, report.chunks) == (5, 3)


class StallingClient:
    """Answers one query, then waits for the test to let it answer the rest: a provider gone
    slow (rate-limited, retrying) with a chunk far from full."""

    def __init__(self) -> None:
        self.go_on = asyncio.Event()

    async def enrich(self, kind: Kind, queries: Sequence[Query]) -> AsyncIterator[EnrichmentResult]:
        for index, query in enumerate(queries):
            if index == 1:
                await self.go_on.wait()
            yield EnrichmentResult(key=query.key, status=Outcome.NO_MATCH)


def test_results_are_saved_while_the_provider_is_slow_not_only_per_chunk() -> None:
    client = StallingClient()
    chunks: list[list[str]] = []

    def write_chunk(results: list[EnrichmentResult]) -> None:
        chunks.append([r.key for r in results])
        # Saved while the provider still stalls: a crash now would repeat no paid call.
        client.go_on.set()

    report = PassReport(requested=3)

    async def enrich() -> None:
        await asyncio.wait_for(
            a_pass(client, write_chunk, report, chunk_size=200, save_every_s=0.01), timeout=30
        )

    asyncio.run(enrich())
    assert chunks[0] == ["p0@example.com"], "saved before the stalled answers came"
    assert [key for chunk in chunks for key in chunk] == [q.key for q in queries(3)]
    assert report.written == 3
