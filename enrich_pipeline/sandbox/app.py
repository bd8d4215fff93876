"""The sandbox provider: an ASGI imitation of the Data Legion enrichment API.

Per enrich request the checks run in the real API's order: auth, rate limit, injected faults,
body validation, credits, answer. ``GET /_sandbox/stats`` is sandbox-only: benchmarks read it as
the server-side judge of what was accepted and what was rate limited.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from enrich_pipeline.merge_policy import Confidence
from enrich_pipeline.provider.models import Kind
from enrich_pipeline.sandbox.config import SandboxConfig
from enrich_pipeline.sandbox.profiles import (
    COMPANY_INPUT_FIELDS,
    PERSON_INPUT_FIELDS,
    build_company,
    build_person,
    company_key,
    person_key,
    shape_record,
)
from enrich_pipeline.sandbox.ratelimit import Decision, make_limiter

MAX_BULK_ITEMS = 100
MAX_EVENTS = 200_000
OPTION_FIELDS = (
    "include_fields",
    "exclude_fields",
    "required_fields",
    "min_confidence",
    "multiple_results",
    "limit",
    "titlecase",
)
_INPUT_FIELDS: dict[Kind, tuple[str, ...]] = {
    "person": PERSON_INPUT_FIELDS,
    "company": COMPANY_INPUT_FIELDS,
}
_NO_IDENTIFIER: dict[Kind, str] = {
    "person": "No usable identifier: send one of email, phone, social_url, linkedin_id, "
    "legion_id or email_hash, or a name (full_name, or first_name and last_name) with context "
    "such as company, job_title, school, location or birth_date.",
    "company": "No usable identifier: send one of domain, name, linkedin_id, social_url, "
    "ticker_symbol or legion_id.",
}
_CONFIDENCES = frozenset(confidence.value for confidence in Confidence)
_NOT_FOUND = {
    "error": "not_found",
    "message": "No records were found matching your search criteria.",
}
_FAULTS = {
    500: {"error": "internal_error", "message": "An unexpected error occurred."},
    502: {"error": "bad_gateway", "message": "The upstream service returned an invalid response."},
    503: {"error": "service_unavailable", "message": "The service is temporarily unavailable."},
}


@dataclass
class SandboxStats:
    """What the sandbox answered. ``accepted`` is every enrich answer but 429s;
    ``items_enriched`` counts the look-ups made (1 per single call, 1 per valid bulk item)."""

    requests_total: int = 0
    accepted: int = 0
    rate_limited: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    items_enriched: int = 0
    # (arrived, status, answered): a limiter counts arrivals; a caller waits for answers.
    events: deque[tuple[float, int, float]] = field(
        default_factory=lambda: deque(maxlen=MAX_EVENTS)
    )

    def record(self, status: int, arrived: float, answered: float) -> None:
        self.requests_total += 1
        if status == 429:
            self.rate_limited += 1
        else:
            self.accepted += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        self.events.append((arrived, status, answered))

    def as_json(self) -> dict[str, Any]:
        return {
            "requests_total": self.requests_total,
            "accepted": self.accepted,
            "rate_limited": self.rate_limited,
            "by_status": {str(status): n for status, n in sorted(self.by_status.items())},
            "items_enriched": self.items_enriched,
            "events": [list(event) for event in self.events],
        }


class _Rejected(Exception):
    """An error answer, raised from deep in validation and turned into a response once."""

    def __init__(
        self, status: int, error: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.error, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


def _invalid(name: str, message: str) -> _Rejected:
    return _Rejected(422, "validation_error", f"{name} {message}", {"field": name})


def _check_options(options: Mapping[str, Any]) -> None:
    for name in ("include_fields", "exclude_fields", "required_fields"):
        value = options.get(name)
        if isinstance(value, list):
            raise _invalid(name, "must be a comma-separated string, not a list")
        if value is not None and not isinstance(value, str):
            raise _invalid(name, "must be a comma-separated string")
    confidence = options.get("min_confidence")
    if confidence is not None and confidence not in _CONFIDENCES:
        raise _invalid("min_confidence", "must be one of high, moderate, low")
    for name in ("multiple_results", "titlecase"):
        if options.get(name) is not None and not isinstance(options[name], bool):
            raise _invalid(name, "must be a boolean")
    limit = options.get("limit")
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10
    ):
        raise _invalid("limit", "must be an integer from 1 to 10")


def _check_query(kind: Kind, query: Mapping[str, Any]) -> None:
    if "linkedin_url" in query:
        raise _Rejected(
            400,
            "bad_request",
            "Unknown input field linkedin_url: send a LinkedIn profile URL as social_url.",
        )
    for name in _INPUT_FIELDS[kind]:
        value = query.get(name)
        if value is not None and not isinstance(value, str):
            raise _invalid(name, "must be a string")
    _check_options(query)


class _Sandbox:
    def __init__(
        self,
        config: SandboxConfig,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.config = config
        self.stats = SandboxStats()
        self._clock = clock
        self._sleep = sleep
        self._rng = random.Random(config.seed)
        self._credits_left = config.credits
        limit, window = config.rate_limit_per_min, config.rate_window_s
        self._limiter = (
            None
            if limit is None
            else make_limiter(config.limit_algorithm, limit, clock, window_s=window)
        )
        if config.header_style == "ietf":
            self._policy = f'"default";q={limit};w={window:g}'
        else:
            self._policy = f"{limit}/min" if window == 60 else f"{limit};w={window:g}"

    def _rate_headers(self, decision: Decision) -> dict[str, str]:
        if self.config.header_style == "draft":
            return {
                "RateLimit-Policy": self._policy,
                "RateLimit-Limit": str(decision.limit),
                "RateLimit-Remaining": str(decision.remaining),
                "RateLimit-Reset": str(decision.reset_epoch_s),
            }
        return {
            "RateLimit-Policy": self._policy,
            "RateLimit": f'"default";r={decision.remaining};t={decision.reset_after_s}',
        }

    def _answer(
        self, status: int, body: Mapping[str, Any], headers: dict[str, str], credits_used: int = 0
    ) -> Response:
        if status != 401:
            headers["Credits-Used"] = str(credits_used)
            if self._credits_left is not None:
                headers["Credits-Remaining"] = str(self._credits_left)
        return JSONResponse(body, status_code=status, headers=headers)

    async def enrich(self, request: Request, kind: Kind, bulk: bool) -> Response:
        arrived = self._clock()
        response = await self._enrich(request, kind, bulk)
        self.stats.record(response.status_code, arrived, self._clock())
        return response

    async def _enrich(self, request: Request, kind: Kind, bulk: bool) -> Response:
        headers = {"Request-ID": uuid.uuid4().hex}
        if correlation_id := request.headers.get("correlation-id"):
            headers["Correlation-ID"] = correlation_id
        api_key = request.headers.get("api-key", "")
        expected = self.config.accepted_api_key
        if not api_key or (
            expected is not None and not hmac.compare_digest(api_key.encode(), expected.encode())
        ):
            body = {"error": "unauthorized", "message": "Missing or invalid API key (API-Key)."}
            return self._answer(401, body, headers)

        raw = await request.body()
        try:
            payload: Any = json.loads(raw)
        except ValueError:
            payload = _Rejected(400, "bad_request", "The request body is not valid JSON.")

        if self._limiter is not None:
            cost = 1
            if bulk and self.config.bulk_cost == "item" and isinstance(payload, dict):
                items = payload.get("items")
                cost = max(1, len(items)) if isinstance(items, list) else 1
            decision = self._limiter.acquire(cost)
            headers.update(self._rate_headers(decision))
            if not decision.allowed:
                headers["Retry-After"] = str(decision.retry_after_s)
                body = {
                    "error": "rate_limit_exceeded",
                    "message": f"Rate limit exceeded. Retry in {decision.retry_after_s} seconds.",
                }
                return self._answer(429, body, headers)

        delay_ms = self.config.latency_ms
        if self.config.slow_rate and self._rng.random() < self.config.slow_rate:
            delay_ms += self.config.slow_ms
        if delay_ms:
            await self._sleep(delay_ms / 1000)
        if self.config.error_rate and self._rng.random() < self.config.error_rate:
            status = self._rng.choice(tuple(_FAULTS))
            return self._answer(status, _FAULTS[status], headers)

        try:
            if isinstance(payload, _Rejected):
                raise payload
            if not isinstance(payload, dict):
                raise _Rejected(422, "validation_error", "The request body must be a JSON object.")
            if bulk:
                return self._bulk(kind, payload, headers)
            return self._single(kind, payload, headers)
        except _Rejected as rejected:
            return self._answer(rejected.status, rejected.body(), headers)

    def _lookup(self, kind: Kind, query: Mapping[str, Any]) -> tuple[dict[str, Any] | None, bool]:
        """The match for one query (or None) and, for no match, whether to say ``not_found``."""
        _check_query(kind, query)
        key = person_key(query) if kind == "person" else company_key(query)
        if key is None:
            raise _Rejected(400, "bad_request", _NO_IDENTIFIER[kind])
        self.stats.items_enriched += 1
        # The bulk no-match form is fixed per identifier, so both forms show up across items.
        not_found = bool(key.digest[8] & 1)
        min_confidence = Confidence(query.get("min_confidence") or Confidence.LOW)
        if not key.matches(self.config.match_rate) or key.confidence.rank < min_confidence.rank:
            return None, not_found
        record = (build_person if kind == "person" else build_company)(key, query)
        shaped = shape_record(
            record,
            include_fields=query.get("include_fields"),
            exclude_fields=query.get("exclude_fields"),
            required_fields=query.get("required_fields"),
        )
        if shaped is None:
            return None, not_found
        return {kind: shaped, "match_metadata": key.metadata()}, not_found

    def _charge(self, matches: int) -> None:
        if self._credits_left is None:
            return
        if matches > self._credits_left:
            raise _Rejected(
                402,
                "insufficient_credits",
                "Not enough credits left on the contract for this request.",
                {"credits_required": matches, "credits_available": self._credits_left},
            )
        self._credits_left -= matches

    def _single(self, kind: Kind, payload: dict[str, Any], headers: dict[str, str]) -> Response:
        match, _ = self._lookup(kind, payload)
        if match is None:
            return self._answer(404, _NOT_FOUND, headers)
        self._charge(1)
        return self._answer(200, {"matches": [match], "total": 1}, headers, credits_used=1)

    def _bulk(self, kind: Kind, payload: dict[str, Any], headers: dict[str, str]) -> Response:
        items = payload.get("items")
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BULK_ITEMS:
            raise _invalid("items", f"must be a list of 1 to {MAX_BULK_ITEMS} objects")
        defaults = {name: payload[name] for name in OPTION_FIELDS if name in payload}
        _check_options(defaults)
        results = [self._bulk_item(kind, item, defaults) for item in items]
        matched = sum(result["total"] for result in results)
        self._charge(matched)
        return self._answer(200, {"results": results}, headers, credits_used=matched)

    def _bulk_item(self, kind: Kind, item: Any, defaults: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(item, dict):
            return _bulk_result(error="validation_error: each item must be a JSON object")
        metadata = item.get("metadata")
        try:
            match, not_found = self._lookup(kind, {**defaults, **item})
        except _Rejected as rejected:
            prefix = "validation_error" if rejected.status == 422 else "invalid_request"
            return _bulk_result(error=f"{prefix}: {rejected.message}", metadata=metadata)
        if match is not None:
            return _bulk_result(matches=[match], metadata=metadata)
        return _bulk_result(error="not_found" if not_found else None, metadata=metadata)


def _bulk_result(
    *,
    matches: list[dict[str, Any]] | None = None,
    error: str | None = None,
    metadata: Any = None,
) -> dict[str, Any]:
    matches = matches or []
    return {"matches": matches, "total": len(matches), "error": error, "metadata": metadata}


async def _health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "database": "ok"})


async def _http_error(request: Request, exc: HTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    return JSONResponse(
        {"error": code, "message": exc.detail}, status_code=exc.status_code, headers=exc.headers
    )


def create_app(
    config: SandboxConfig | None = None,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Starlette:
    """The sandbox ASGI app. ``clock`` drives the rate limiter and the stats timestamps;
    ``sleep`` serves the simulated latency (tests inject both)."""
    sandbox = _Sandbox(config or SandboxConfig(), clock, sleep)

    def endpoint(kind: Kind, bulk: bool) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            return await sandbox.enrich(request, kind, bulk)

        return handle

    async def stats(request: Request) -> Response:
        return JSONResponse(sandbox.stats.as_json())

    app = Starlette(
        routes=[
            Route("/health", _health, methods=["GET"]),
            Route("/person/enrich", endpoint("person", False), methods=["POST"]),
            Route("/person/enrich/bulk", endpoint("person", True), methods=["POST"]),
            Route("/company/enrich", endpoint("company", False), methods=["POST"]),
            Route("/company/enrich/bulk", endpoint("company", True), methods=["POST"]),
            Route("/_sandbox/stats", stats, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.stats = sandbox.stats
    return app
