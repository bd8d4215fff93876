"""HubSpot contact write-back: batch upserts by email, paced to HubSpot's rate limit; reading
contacts back by id (for the intake's HubSpot webhooks); and GDPR deletes by email.

What was last sent (change tracking) lives in the warehouse; this module sends the records it is
given and says, per record, what HubSpot did with each. A record that failed is reported, never
raised, so the caller keeps it for the next run; upserting by email makes re-sending harmless.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Self

import httpx

from enrich_pipeline.masking import mask_emails_in
from enrich_pipeline.provider.http import REDACTED, USER_AGENT
from enrich_pipeline.provider.models import CallStats
from enrich_pipeline.provider.transports import (
    TRANSIENT_ERRORS,
    Clock,
    RetryTransport,
    Sleep,
    StatsTransport,
    header_int,
)
from enrich_pipeline.settings import SecretSettings
from enrich_pipeline.settings_base import env_name

TOKEN_SETTING = env_name(SecretSettings, "hubspot_access_token")
UPSERT_PATH = "/crm/v3/objects/contacts/batch/upsert"
READ_PATH = "/crm/v3/objects/contacts/batch/read"
ERASE_PATH = "/crm/v3/objects/contacts/gdpr-delete"
MAX_BATCH_SIZE = 100
RATE_WINDOW_S = 10.0
REQUEST_TIMEOUT_S = 30.0
WRITE_SCOPE = "crm.objects.contacts.write"
READ_SCOPE = "crm.objects.contacts.read"

logger = logging.getLogger(__name__)


class HubSpotAuthError(Exception):
    """401 (token missing or wrong) or 403 (token lacks the scope); never retried."""

    def __init__(
        self, status_code: int, hubspot_message: str | None, *, scope: str = WRITE_SCOPE
    ) -> None:
        self.status_code = status_code
        if status_code == 401:
            problem = f"HubSpot rejected the access token (HTTP 401): {TOKEN_SETTING} is wrong"
        else:
            action = "write" if scope == WRITE_SCOPE else "read"
            problem = (
                f"HubSpot refused the {action} (HTTP {status_code}): the private app token in "
                f"{TOKEN_SETTING} needs the {scope} scope"
            )
        detail = f"; HubSpot says: {hubspot_message}" if hubspot_message else ""
        super().__init__(f"{problem}{detail}")


@dataclass(frozen=True)
class UpsertOutcome:
    email: str
    status: Literal["created", "updated", "failed"]
    hubspot_id: str | None
    error: str | None


@dataclass(frozen=True)
class EraseOutcome:
    """``not_found``: HubSpot holds no contact with that email, a result rather than a failure."""

    email: str
    status: Literal["erased", "not_found", "failed"]
    error: str | None


class RequestWindow:
    """At most ``limit`` request starts in any ``window_s`` seconds, counted across every
    client that shares it: a service delivering pass after pass keeps one, so back-to-back
    deliveries stay under HubSpot's limit together. Thread-safe; it holds timestamps only, so
    event loops may come and go around it."""

    def __init__(self, *, limit: int, window_s: float = RATE_WINDOW_S) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._window_s = window_s
        self._lock = threading.Lock()
        self._started: deque[float] = deque()
        self._held_until = 0.0

    def reserve(self, now: float) -> float:
        """Take a slot at ``now`` and return 0, or return the seconds until one frees."""
        with self._lock:
            if now < self._held_until:
                return self._held_until - now
            while self._started and self._started[0] <= now - self._window_s:
                self._started.popleft()
            if len(self._started) < self.limit:
                self._started.append(now)
                return 0.0
            return self._started[0] + self._window_s - now

    def learn(self, headers: httpx.Headers, now: float) -> None:
        """What HubSpot says of the portal's limit on every answer: ``X-HubSpot-RateLimit-Max``
        requests per ``-Interval-Milliseconds``, ``-Remaining`` of them left. Other apps on the
        portal spend the same budget, so none left means waiting out an interval, whatever
        this window counted."""
        limit = header_int(headers, "X-HubSpot-RateLimit-Max")
        interval_ms = header_int(headers, "X-HubSpot-RateLimit-Interval-Milliseconds")
        remaining = header_int(headers, "X-HubSpot-RateLimit-Remaining")
        with self._lock:
            if limit is not None and limit >= 1:
                self.limit = limit
            if interval_ms is not None and interval_ms > 0:
                self._window_s = interval_ms / 1000
            if remaining is not None and remaining <= 0:
                self._held_until = max(self._held_until, now + self._window_s)


class SlidingWindowTransport(httpx.AsyncBaseTransport):
    """Lets a request start only when its ``RequestWindow`` has a slot, and tells the window
    what each answer's rate-limit headers say.

    HubSpot states its limit as a plain count per interval, so counting our own requests keeps
    us under it without waiting for a 429 first; its headers correct the count (another plan's
    limit, other apps on the portal).
    """

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        *,
        window: RequestWindow,
        stats: CallStats,
        clock: Clock,
        sleep: Sleep,
    ) -> None:
        self._inner = inner
        self._window = window
        self._stats = stats
        self._clock = clock
        self._sleep = sleep

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._wait_for_slot()
        response = await self._inner.handle_async_request(request)
        self._window.learn(response.headers, self._clock())
        return response

    async def _wait_for_slot(self) -> None:
        # Re-check after every pause: a concurrent request may have taken the slot meanwhile.
        while pause := self._window.reserve(self._clock()):
            self._stats.throttle_waits += 1
            self._stats.throttle_wait_s += pause
            await self._sleep(pause)

    async def aclose(self) -> None:
        await self._inner.aclose()


class HubSpotClient:
    """What a delivery upserts through, built once for all of its calls: one rate window, so
    calls made back to back stay under HubSpot's limit together, and one ``stats``.

    Use it as ``async with HubSpotClient(...) as hubspot``. ``transport`` carries the requests
    (a mock in tests); by default the network.
    """

    def __init__(
        self,
        *,
        token: str,
        base_url: str,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        requests_per_10s: int = 100,
        window: RequestWindow | None = None,
        max_attempts: int = 5,
    ) -> None:
        """``window``: one shared with other clients (else its own of ``requests_per_10s``)."""
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._token = token
        self._max_attempts = max_attempts
        self.stats = CallStats()
        # The window inside the retries, so that retries count against HubSpot's limit too.
        paced = SlidingWindowTransport(
            transport or httpx.AsyncHTTPTransport(),
            window=window or RequestWindow(limit=requests_per_10s),
            stats=self.stats,
            clock=clock,
            sleep=sleep,
        )
        counted = StatsTransport(paced, stats=self.stats)
        self._http = httpx.AsyncClient(
            base_url=base_url,
            transport=RetryTransport(
                counted, max_attempts=max_attempts, sleep=sleep, on_retry=counted.count_retry
            ),
            timeout=httpx.Timeout(REQUEST_TIMEOUT_S),
            headers={
                "Authorization": f"Bearer {token}",
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
            },
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.aclose()

    async def upsert_contacts(
        self, records: Sequence[Mapping[str, str | None]]
    ) -> list[UpsertOutcome]:
        """Create or update HubSpot contacts by email, at most 100 per call; outcomes in input
        order.

        Each record maps HubSpot property names to values and must carry ``email``. Empty values
        are not sent, so they never blank out what HubSpot already holds. 429, 5xx and network
        failures are retried (bounded); once a batch has used up its attempts the remaining
        batches are not sent and all those records come back failed. Raises ``HubSpotAuthError``
        at the first 401/403 and ``ValueError`` for a record without an email or two records
        sharing one.
        """
        inputs = _upsert_inputs(records)
        if not inputs:
            return []
        # The stats add up over every call through this client; the log speaks of this one.
        before = replace(self.stats)
        batches = [inputs[i : i + MAX_BATCH_SIZE] for i in range(0, len(inputs), MAX_BATCH_SIZE)]
        outcomes: list[UpsertOutcome] = []
        for index, batch in enumerate(batches):
            batch_outcomes, gave_up = await _send_batch(self._http, batch, self._token)
            outcomes.extend(batch_outcomes)
            if gave_up is not None:
                # HubSpot still refused after every retry: more batches would only wait out the
                # same failure. The records stay unsent and are picked up by the next run.
                unsent = [item for later in batches[index + 1 :] for item in later]
                outcomes.extend(_failed(unsent, self._not_sent("batch", gave_up)))
                break
        counts = Counter(outcome.status for outcome in outcomes)
        logger.info(
            "HubSpot upsert: %d created, %d updated, %d failed in %d requests "
            "(%d rate-limited, %d paced waits)",
            counts["created"],
            counts["updated"],
            counts["failed"],
            *self._spent_since(before),
        )
        return outcomes

    async def gdpr_delete(self, emails: Sequence[str]) -> list[EraseOutcome]:
        """Permanently delete each contact by email through HubSpot's GDPR delete, one request
        per email (the endpoint takes one); outcomes in input order.

        429, 5xx and network failures are retried (bounded); once an email has used up its
        attempts the remaining emails are not sent and come back failed. Raises
        ``HubSpotAuthError`` at the first 401/403 (the outcomes so far are lost with it).
        """
        before = replace(self.stats)
        outcomes: list[EraseOutcome] = []
        for index, email in enumerate(emails):
            outcome, gave_up = await self._erase(email)
            outcomes.append(outcome)
            if gave_up is not None:
                reason = self._not_sent("erase", gave_up)
                outcomes.extend(
                    EraseOutcome(later, "failed", reason) for later in emails[index + 1 :]
                )
                break
        counts = Counter(outcome.status for outcome in outcomes)
        logger.info(
            "HubSpot GDPR delete: %d erased, %d not found, %d failed in %d requests "
            "(%d rate-limited, %d paced waits)",
            counts["erased"],
            counts["not_found"],
            counts["failed"],
            *self._spent_since(before),
        )
        return outcomes

    async def _erase(self, email: str) -> tuple[EraseOutcome, str | None]:
        """The email's outcome, and why when retries were used up (else ``None``): a reason
        naming no one, as it is given to the emails left unsent."""
        try:
            response = await self._http.post(
                ERASE_PATH, json={"objectId": email, "idProperty": "email"}
            )
        except TRANSIENT_ERRORS as exc:
            error = _transport_error(exc)
            return EraseOutcome(email, "failed", error), error
        status = response.status_code
        if status == 204:
            return EraseOutcome(email, "erased", None), None
        if status == 404:
            return EraseOutcome(email, "not_found", None), None
        body = _json_object(response)
        if status in (401, 403):
            raise HubSpotAuthError(status, _redact(body.get("message"), self._token))
        # HubSpot's text is about this one email's request, so it may name this person only.
        # Kept in the erasure's audit, which names nobody: HubSpot's text may quote addresses.
        error = mask_emails_in(_status_error(status, body, response.reason_phrase, self._token))
        gave_up = f"HTTP {status}" if status == 429 or status >= 500 else None
        return EraseOutcome(email, "failed", error), gave_up

    def _not_sent(self, what: str, gave_up: str) -> str:
        attempts = self._max_attempts
        return f"not sent: an earlier {what} still failed after {attempts} attempts ({gave_up})"

    def _spent_since(self, before: CallStats) -> tuple[int, int, int]:
        """Requests, 429s and paced waits since ``before``: the stats add up over every call
        through this client, a call's log line speaks of that call."""
        return (
            self.stats.requests - before.requests,
            self.stats.rate_limited - before.rate_limited,
            self.stats.throttle_waits - before.throttle_waits,
        )

    async def read_contacts(
        self, ids: Sequence[str], properties: Sequence[str]
    ) -> dict[str, dict[str, str | None]]:
        """The current ``properties`` of each contact by HubSpot id, at most 100 ids per call.

        Ids HubSpot does not hold (deleted, merged away) are simply absent. 429, 5xx and network
        failures are retried (bounded), then raised as ``httpx.HTTPStatusError`` or
        ``httpx.TransportError``; nothing read by earlier calls is returned then, so callers
        wanting progress pass 100 ids at a time. Raises ``HubSpotAuthError`` at a 401/403.
        """
        unique = list(dict.fromkeys(ids))
        found: dict[str, dict[str, str | None]] = {}
        for start in range(0, len(unique), MAX_BATCH_SIZE):
            inputs = [{"id": contact_id} for contact_id in unique[start : start + MAX_BATCH_SIZE]]
            response = await self._http.post(
                READ_PATH, json={"inputs": inputs, "properties": list(properties)}
            )
            body = _json_object(response)
            if response.status_code in (401, 403):
                message = _redact(body.get("message"), self._token)
                raise HubSpotAuthError(response.status_code, message, scope=READ_SCOPE)
            # A 207 (some ids not found) is a success: those ids are just not in the results.
            response.raise_for_status()
            for result in _objects(body.get("results")):
                values = result.get("properties")
                if isinstance(values, Mapping):
                    found[str(result.get("id"))] = {
                        name: None if value is None else str(value)
                        for name, value in values.items()
                    }
        return found


def _sendable_properties(record: Mapping[str, str | None]) -> dict[str, str]:
    return {
        name: str(value)
        for name, value in record.items()
        if value is not None and str(value).strip()
    }


def _upsert_inputs(records: Sequence[Mapping[str, str | None]]) -> list[dict[str, Any]]:
    inputs: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for position, record in enumerate(records):
        properties = _sendable_properties(record)
        email = properties.get("email")
        if email is None:
            raise ValueError(f"record {position} has no email; HubSpot contacts upsert by email")
        # HubSpot rejects a whole batch that names one contact twice, and emails match
        # case-insensitively there.
        if (first := seen.setdefault(email.casefold(), position)) != position:
            raise ValueError(f"records {first} and {position} have the same email")
        inputs.append({"idProperty": "email", "id": email, "properties": properties})
    return inputs


async def _send_batch(
    client: httpx.AsyncClient, batch: list[dict[str, Any]], token: str
) -> tuple[list[UpsertOutcome], str | None]:
    """The batch's outcomes, and the error when retries were used up (else ``None``)."""
    try:
        response = await client.post(UPSERT_PATH, json={"inputs": batch})
    except TRANSIENT_ERRORS as exc:
        error = _transport_error(exc)
        return _failed(batch, error), error
    body = _json_object(response)
    status = response.status_code
    if status in (401, 403):
        raise HubSpotAuthError(status, _redact(body.get("message"), token))
    if status == 429 or status >= 500:
        error = _status_error(status, body, response.reason_phrase, token)
        return _failed(batch, error), error
    if status not in (200, 207):
        return _failed(batch, _status_error(status, body, response.reason_phrase, token)), None
    return _read_answer(batch, body, status, token), None


def _read_answer(
    batch: list[dict[str, Any]], body: Mapping[str, Any], status: int, token: str
) -> list[UpsertOutcome]:
    """Match a 200/207 answer back to the batch by email: HubSpot keeps no input order."""
    results: dict[str, Mapping[str, Any]] = {}
    for result in _objects(body.get("results")):
        properties = result.get("properties")
        email = properties.get("email") if isinstance(properties, Mapping) else None
        if isinstance(email, str):
            results[email.casefold()] = result
    batch_emails = {item["id"].casefold() for item in batch}
    errors_by_email: dict[str, list[str]] = {}
    unplaced: list[str] = []
    for error in _objects(body.get("errors")):
        text = _error_text(error, "error", token)
        named = _error_emails(error) & batch_emails
        for email in named:
            errors_by_email.setdefault(email, []).append(text)
        if not named:
            unplaced.append(text)
    # A record neither named by an error nor in the results did not get written as far as we can
    # tell: failing it means it is sent again next run, which an upsert makes harmless.
    fallback = "; ".join(unplaced) or f"missing from HubSpot's answer (HTTP {status})"
    outcomes: list[UpsertOutcome] = []
    for item in batch:
        email: str = item["id"]
        key = email.casefold()
        if key in errors_by_email:
            outcomes.append(UpsertOutcome(email, "failed", None, "; ".join(errors_by_email[key])))
        elif (result := results.get(key)) is not None:
            status_word: Literal["created", "updated"] = (
                "created" if result.get("new") is True else "updated"
            )
            hubspot_id = result.get("id")
            outcomes.append(
                UpsertOutcome(
                    email, status_word, None if hubspot_id is None else str(hubspot_id), None
                )
            )
        else:
            outcomes.append(UpsertOutcome(email, "failed", None, fallback))
    return outcomes


def _error_emails(error: Mapping[str, Any]) -> set[str]:
    """Every string an error names in ``id`` or in its ``context`` lists, casefolded.

    HubSpot's batch errors carry ``context`` as a map of names to string lists (``{"ids": [...]}``
    is the documented form for batch reads; upserts are not documented beyond the map's shape),
    so every value is tried and only those equal to an email of the batch count.
    """
    names: set[str] = set()
    if isinstance(error_id := error.get("id"), str):
        names.add(error_id.casefold())
    context = error.get("context")
    if isinstance(context, Mapping):
        for values in context.values():
            items = [values] if isinstance(values, str) else values
            if isinstance(items, list):
                names.update(item.casefold() for item in items if isinstance(item, str))
    return names


def _transport_error(exc: Exception) -> str:
    return f"{type(exc).__name__} talking to HubSpot"


def _status_error(status: int, body: Mapping[str, Any], reason: str, token: str) -> str:
    return f"HTTP {status}: {_error_text(body, reason, token)}"


def _error_text(body: Mapping[str, Any], default: str, token: str) -> str:
    message = body.get("message")
    category = body.get("category")
    text = str(message) if message else default
    if category:
        text = f"{category}: {text}"
    return _redact(text, token) or default


def _redact(text: object, token: str) -> str | None:
    # HubSpot is not known to echo the token, but nothing that reaches a log or metadata may.
    if not isinstance(text, str) or not text:
        return None
    return text.replace(token, REDACTED) if token else text


def _failed(batch: list[dict[str, Any]], error: str) -> list[UpsertOutcome]:
    return [UpsertOutcome(item["id"], "failed", None, error) for item in batch]


def _objects(value: object) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _json_object(response: httpx.Response) -> Mapping[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, Mapping) else {}
