"""Person/company enrichment over the Data Legion wire format, sandbox or real API alike."""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from enrich_pipeline.provider.errors import CreditsExhausted, ProviderAuthError
from enrich_pipeline.provider.http import API_KEY_HEADER, REDACTED, ProviderHttpClient
from enrich_pipeline.provider.models import (
    MAX_BULK_SIZE,
    CallStats,
    EnrichmentResult,
    Kind,
    Outcome,
    Query,
)
from enrich_pipeline.provider.pacing import DEFAULT_MAX_IN_FLIGHT
from enrich_pipeline.provider.transports import ITEMS_EXTENSION, header_int

# How a plan without bulk access answers a bulk call; the single endpoints may still work.
BULK_REFUSED_STATUSES = frozenset({403, 404, 405})
_MAX_MESSAGE_CHARS = 200


@dataclass(frozen=True, slots=True)
class _Single:
    query: Query


@dataclass(frozen=True, slots=True)
class _Bulk:
    queries: tuple[Query, ...]


_Work = _Single | _Bulk


def _size(item: _Work) -> int:
    return 1 if isinstance(item, _Single) else len(item.queries)


class _CreditBudget:
    """Admits look-ups while the credits used plus those that calls in flight may still cost
    (one per look-up, at most) stay within the budget, so the budget is never overspent."""

    def __init__(self, max_credits: int, stats: CallStats) -> None:
        self._max = max_credits
        self._stats = stats
        self._at_risk = 0
        self._settled = asyncio.Event()

    @property
    def spent(self) -> bool:
        return self._stats.credits_used >= self._max

    def _room(self) -> int:
        return self._max - self._stats.credits_used - self._at_risk

    async def admit(self, wanted: int) -> int:
        """How many of ``wanted`` look-ups may go out now; 0 once the budget is spent."""
        while not self.spent and self._room() <= 0:
            # Calls in flight hold what is left; once one is answered there may be room.
            self._settled.clear()
            await self._settled.wait()
        if self.spent:
            return 0
        granted = min(wanted, self._room())
        self._at_risk += granted
        return granted

    def settle(self, granted: int) -> None:
        self._at_risk -= granted
        self._settled.set()


class _BulkRefused(Exception):
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


class _Progress:
    """Logs progress about every 10% of the queries."""

    def __init__(self, kind: Kind, total: int, logger: logging.Logger) -> None:
        self._kind = kind
        self._total = total
        self._step = max(1, math.ceil(total / 10))
        self._logger = logger
        self._counts: Counter[Outcome] = Counter()

    def add(self, result: EnrichmentResult) -> None:
        self._counts[result.status] += 1
        done = self._counts.total()
        if done % self._step == 0 or done == self._total:
            self._logger.info(
                "Enriching %s: %d/%d done (%d matched, %d no match, %d errors)",
                self._kind,
                done,
                self._total,
                self._counts[Outcome.MATCHED],
                self._counts[Outcome.NO_MATCH],
                self._counts[Outcome.ERROR],
            )


class EnrichmentClient:
    """Enriches queries with bounded concurrency, in bulk where the provider allows it.

    Per-record problems (no match, invalid input, a call that kept failing) become results;
    only an unusable key (401/403) or exhausted credits (402) end the run, after the calls
    already in flight have been answered and yielded.

    ``max_concurrency`` caps the requests in flight; within it the pacer of a client from
    ``build_http_client`` sizes them to the provider's rate and latency. ``max_credits`` is a
    per-run credit budget: once reached, no new call starts and the run ends cleanly.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        stats: CallStats,
        include_fields: Mapping[Kind, str] | None = None,
        use_bulk: bool = True,
        bulk_size: int = MAX_BULK_SIZE,
        max_concurrency: int = DEFAULT_MAX_IN_FLIGHT,
        logger: logging.Logger | None = None,
        max_credits: int | None = None,
    ) -> None:
        if not 1 <= bulk_size <= MAX_BULK_SIZE:
            raise ValueError(f"bulk_size must be between 1 and {MAX_BULK_SIZE}, got {bulk_size}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if max_credits is not None and max_credits < 0:
            raise ValueError(f"max_credits must not be negative, got {max_credits}")
        self._http = http
        self._stats = stats
        self._fields: dict[Kind, str] = dict(include_fields or {})
        self._use_bulk = use_bulk
        self._bulk_size = bulk_size
        self._max_concurrency = max_concurrency
        self._max_credits = max_credits
        self._logger = logger or logging.getLogger(__name__)
        self._pacer = http.pacer if isinstance(http, ProviderHttpClient) else None
        if self._pacer is not None:
            self._pacer.max_in_flight = max_concurrency
            if logger is not None:
                self._pacer.logger = logger
        # Only to scrub provider-supplied text that might echo it; never logged.
        self._secret = http.headers.get(API_KEY_HEADER)

    async def enrich(self, kind: Kind, queries: Sequence[Query]) -> AsyncIterator[EnrichmentResult]:
        """Yield one result per query as soon as it is known, in completion order.

        Raises ``ProviderAuthError`` or ``CreditsExhausted`` after yielding everything that was
        answered before the run had to stop. Reaching ``max_credits`` is not an error: the
        queries not attempted are counted in ``stats.deferred`` and the iteration just ends.
        """
        work: asyncio.Queue[_Work] = asyncio.Queue()
        for item in self._plan(queries):
            work.put_nowait(item)
        finished: asyncio.Queue[EnrichmentResult | None] = asyncio.Queue()
        fatal: list[Exception] = []
        budget = (
            None if self._max_credits is None else _CreditBudget(self._max_credits, self._stats)
        )
        deferred_before = self._stats.deferred
        # The first call goes alone. A wrong key or spent credits then cost one request, not
        # one per worker; and a bulk answer says how the provider counts bulk calls against
        # the rate limit, which sizes the rest (``Pacer.bulk_items``).
        first_done = asyncio.Event()

        async def worker(index: int) -> None:
            if index:
                await first_done.wait()
            while True:
                item = await work.get()
                try:
                    # After a fatal answer, queued work is drained without calling.
                    if not fatal:
                        await self._run_within_budget(kind, item, work, finished, budget)
                except Exception as exc:  # re-raised below once in-flight work is yielded
                    fatal.append(exc)
                finally:
                    work.task_done()
                    first_done.set()

        async def signal_end() -> None:
            await work.join()
            finished.put_nowait(None)

        # One request per worker: the worker count is the bound on requests in flight.
        tasks = [asyncio.create_task(worker(index)) for index in range(self._max_concurrency)]
        tasks.append(asyncio.create_task(signal_end()))
        progress = _Progress(kind, len(queries), self._logger)
        try:
            while (result := await finished.get()) is not None:
                progress.add(result)
                yield result
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if deferred := self._stats.deferred - deferred_before:
            self._logger.info(
                "Credit budget reached (%d of %d credits used): stopped calling; "
                "%d %s look-ups not attempted wait for the next run",
                self._stats.credits_used,
                self._max_credits,
                deferred,
                kind,
            )
        if fatal:
            raise fatal[0]

    async def _run_within_budget(
        self,
        kind: Kind,
        item: _Work,
        work: asyncio.Queue[_Work],
        finished: asyncio.Queue[EnrichmentResult | None],
        budget: _CreditBudget | None,
    ) -> None:
        if isinstance(item, _Bulk) and self._pacer is not None:
            # When the provider counts bulk calls per item, calls are cut to what the limit
            # affords; the rest goes back in the queue.
            affordable = self._pacer.bulk_items(len(item.queries))
            if affordable < len(item.queries):
                work.put_nowait(_Bulk(item.queries[affordable:]))
                item = _Bulk(item.queries[:affordable])
        if budget is None:
            for result in await self._run(kind, item, work):
                finished.put_nowait(result)
            return
        granted = await budget.admit(_size(item))
        if not granted:
            self._stats.budget_exhausted = True
            self._stats.deferred += _size(item)
            return
        if isinstance(item, _Bulk) and granted < len(item.queries):
            # Only part of the chunk fits the budget left: send that, queue the rest.
            work.put_nowait(_Bulk(item.queries[granted:]))
            item = _Bulk(item.queries[:granted])
        try:
            for result in await self._run(kind, item, work):
                finished.put_nowait(result)
        finally:
            budget.settle(granted)

    def _plan(self, queries: Sequence[Query]) -> list[_Work]:
        if not self._use_bulk:
            return [_Single(query) for query in queries]
        return [
            _Bulk(tuple(queries[start : start + self._bulk_size]))
            for start in range(0, len(queries), self._bulk_size)
        ]

    async def _run(
        self, kind: Kind, item: _Work, work: asyncio.Queue[_Work]
    ) -> list[EnrichmentResult]:
        if isinstance(item, _Single):
            result = await self._enrich_one(kind, item.query)
            return [] if result is None else [result]
        if self._use_bulk:
            try:
                return await self._enrich_bulk(kind, item.queries, work)
            except _BulkRefused as refused:
                self._stop_using_bulk(kind, refused.status_code)
        # Requeued rather than run here, so idle workers share the single calls.
        for query in item.queries:
            work.put_nowait(_Single(query))
        return []

    def _stop_using_bulk(self, kind: Kind, status_code: int) -> None:
        if not self._use_bulk:  # another chunk in flight was refused first
            return
        self._use_bulk = False
        self._stats.bulk_fallbacks += 1
        self._logger.warning(
            "The provider refused bulk %s enrichment (HTTP %d); "
            "switching to one call per record from now on",
            kind,
            status_code,
        )

    def _options(self, kind: Kind) -> dict[str, str]:
        # An empty field list means "whatever the provider returns by default".
        fields = self._fields.get(kind)
        return {"include_fields": fields} if fields else {}

    async def _enrich_one(self, kind: Kind, query: Query) -> EnrichmentResult | None:
        """The look-up's result; None when it is still rate-limited after every retry (it is
        pending, for the next run, not an error)."""
        path = f"/{kind}/enrich"
        try:
            response = await self._http.post(
                path, json={**query.identifiers(), **self._options(kind)}
            )
        except httpx.HTTPError as exc:
            return self._failed(query.key, f"{type(exc).__name__} calling {path}")
        self._raise_if_fatal(response, path)
        if response.status_code == 429:
            self._defer([query])
            return None
        if response.status_code == 404:
            return EnrichmentResult(query.key, Outcome.NO_MATCH)
        if response.status_code != 200:
            return self._failed(query.key, self._describe(response))
        body = _json_object(response)
        if body is None:
            return self._failed(query.key, "HTTP 200 with an unreadable body")
        matches = body.get("matches")
        if not matches:
            return EnrichmentResult(query.key, Outcome.NO_MATCH)
        result = self._matched(kind, query.key, matches)
        self._count_unreported_credits(response, [result])
        return result

    async def _enrich_bulk(
        self, kind: Kind, queries: Sequence[Query], work: asyncio.Queue[_Work]
    ) -> list[EnrichmentResult]:
        path = f"/{kind}/enrich/bulk"
        items = [{**query.identifiers(), "metadata": {"key": query.key}} for query in queries]
        try:
            response = await self._http.post(
                path,
                json={"items": items, **self._options(kind)},
                extensions={ITEMS_EXTENSION: len(items)},
            )
        except httpx.HTTPError as exc:
            return self._all_failed(queries, f"{type(exc).__name__} calling {path}")
        if response.status_code in BULK_REFUSED_STATUSES:
            raise _BulkRefused(response.status_code)
        self._raise_if_fatal(response, path)
        if response.status_code == 429:
            return self._rate_limited_bulk(queries, work)
        if response.status_code != 200:
            return self._all_failed(queries, self._describe(response))
        body = _json_object(response)
        answers = body.get("results") if body is not None else None
        if not isinstance(answers, list):
            return self._all_failed(queries, "HTTP 200 with an unreadable bulk answer")
        by_key = _answers_by_key(answers, queries)
        results = [self._bulk_item(kind, query.key, by_key.get(query.key)) for query in queries]
        self._count_unreported_credits(response, results)
        return results

    def _rate_limited_bulk(
        self, queries: Sequence[Query], work: asyncio.Queue[_Work]
    ) -> list[EnrichmentResult]:
        """Still refused with 429 after every retry. When the limit the refusals stated cannot
        take a call this big (a provider counting bulk calls per item), it is split and its
        parts queued; otherwise its records are pending, for the next run. Never errors:
        nothing is wrong with them."""
        affordable = self._pacer.bulk_items(len(queries)) if self._pacer is not None else 0
        if 0 < affordable < len(queries):
            # Queued whole: taken again, it is cut to what fits (``_run_within_budget``).
            work.put_nowait(_Bulk(tuple(queries)))
        else:
            self._defer(queries)
        return []

    def _defer(self, queries: Sequence[Query]) -> None:
        self._stats.rate_limited_pending += len(queries)
        self._logger.debug("%d look-ups still rate-limited: left for the next run", len(queries))

    def _count_unreported_credits(
        self, response: httpx.Response, results: Sequence[EnrichmentResult]
    ) -> None:
        # Billing is a credit per match: assume exactly that when the answer does not say.
        if header_int(response.headers, "Credits-Used") is None:
            self._stats.credits_used += sum(r.status is Outcome.MATCHED for r in results)

    def _bulk_item(self, kind: Kind, key: str, answer: dict[str, Any] | None) -> EnrichmentResult:
        if answer is None:
            return self._failed(key, "missing from the bulk answer")
        error = answer.get("error")
        if error == "not_found":
            return EnrichmentResult(key, Outcome.NO_MATCH)
        if error:
            message = answer.get("message")
            return self._failed(key, self._scrub(f"{error}: {message}" if message else str(error)))
        matches = answer.get("matches")
        if not matches:
            return EnrichmentResult(key, Outcome.NO_MATCH)
        return self._matched(kind, key, matches)

    def _matched(self, kind: Kind, key: str, matches: Any) -> EnrichmentResult:
        best = matches[0] if isinstance(matches, list) else None
        if not isinstance(best, dict) or not isinstance(record := best.get(kind), dict):
            return self._failed(key, f"match without a {kind} record")
        metadata = best.get("match_metadata")
        return EnrichmentResult(
            key,
            Outcome.MATCHED,
            record=record,
            match_metadata=metadata if isinstance(metadata, dict) else None,
        )

    def _raise_if_fatal(self, response: httpx.Response, path: str) -> None:
        status = response.status_code
        request_id = response.headers.get("Request-ID")
        endpoint = f"POST {path}"
        if status in (401, 403):
            message = _error_body(response)[1]
            raise ProviderAuthError(
                status,
                endpoint=endpoint,
                request_id=request_id,
                provider_message=self._scrub(message) if message else None,
            )
        if status == 402:
            body = _json_object(response) or {}
            details = body.get("details")
            details = details if isinstance(details, dict) else {}
            raise CreditsExhausted(
                endpoint=endpoint,
                credits_required=_as_int(details.get("credits_required")),
                credits_available=_as_int(details.get("credits_available")),
                request_id=request_id,
            )

    def _describe(self, response: httpx.Response) -> str:
        """Short, key-free description of a failed call: status, the API's message, Request-ID."""
        code, message = _error_body(response)
        text = f"HTTP {response.status_code}"
        if code or message:
            text += ": " + ": ".join(part for part in (code, message) if part)
        if request_id := response.headers.get("Request-ID"):
            text += f" (Request-ID: {request_id})"
        return self._scrub(text)

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, REDACTED) if self._secret else text

    def _failed(self, key: str, message: str) -> EnrichmentResult:
        self._logger.debug("Enrichment of %s failed: %s", key, message)
        return EnrichmentResult(key, Outcome.ERROR, error=message)

    def _all_failed(self, queries: Sequence[Query], message: str) -> list[EnrichmentResult]:
        self._logger.debug("Bulk enrichment of %d records failed: %s", len(queries), message)
        return [EnrichmentResult(query.key, Outcome.ERROR, error=message) for query in queries]


def _answers_by_key(answers: list[Any], queries: Sequence[Query]) -> dict[str, dict[str, Any]]:
    """Bulk answers by our key: the echoed metadata, else the item's position."""
    by_key: dict[str, dict[str, Any]] = {}
    for index, answer in enumerate(answers):
        if not isinstance(answer, dict):
            continue
        metadata = answer.get("metadata")
        key = metadata.get("key") if isinstance(metadata, dict) else None
        if not isinstance(key, str) and index < len(queries):
            key = queries[index].key
        if isinstance(key, str):
            by_key.setdefault(key, answer)
    return by_key


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _error_body(response: httpx.Response) -> tuple[str | None, str | None]:
    """(error code, message) from the API's error body, shortened; (None, None) if unreadable."""
    body = _json_object(response) or {}
    code, message = body.get("error"), body.get("message")
    return (
        str(code)[:_MAX_MESSAGE_CHARS] if code else None,
        str(message)[:_MAX_MESSAGE_CHARS] if message else None,
    )


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None
