"""A HubSpot stand-in: an ASGI imitation of the CRM contact endpoints the project uses (batch
upsert by email, batch read, GDPR delete), so deliveries run with no network and no account.

Same paths, status codes, JSON shapes, 207 partial failures, rolling rate limit and rate-limit
headers as HubSpot (see PROVIDER_API.md). Per API request the checks run in HubSpot's order:
auth, rate limit, body validation, answer. ``/_sandbox/...`` routes are the stand-in's own
(HubSpot has none): tests and benchmarks read what was stored there, with no auth, rate limit
or latency.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MAX_INPUTS = 100
DAILY_LIMIT = 250_000
DAY_S = 86_400.0
# What HubSpot's batch read returns when the request names no properties.
DEFAULT_READ_PROPERTIES = ("email", "firstname", "lastname")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_AUTH_MESSAGE = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you "
    "can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)
_NOT_FOUND_MESSAGE = (
    "Could not get some CONTACT objects, they may be deleted or not exist. "
    "Check that ids are valid."
)

Clock = Callable[[], float]
Handler = Callable[[Request, Mapping[str, Any]], Awaitable[Response]]


@dataclass
class StoredContact:
    id: str
    properties: dict[str, str]
    created_at: str
    updated_at: str

    def snapshot(self) -> dict[str, Any]:
        return {"id": self.id, "properties": dict(self.properties), "updatedAt": self.updated_at}


class BadInput(Exception):
    """One upsert input HubSpot would refuse; the rest of its batch is still written."""

    def __init__(self, message: str, ids: list[str]) -> None:
        super().__init__(message)
        self.ids = ids


class HubSpotSandbox:
    """The portal: contacts by lower-cased email, the rate windows and counters.

    Nothing here awaits, so each request's rate decision and writes are atomic under asyncio.
    """

    def __init__(self, *, requests_per_interval: int, interval_ms: int, clock: Clock) -> None:
        if requests_per_interval < 1 or interval_ms < 1:
            raise ValueError("requests_per_interval and interval_ms must be at least 1")
        self.limit = requests_per_interval
        self.interval_ms = interval_ms
        self.contacts: dict[str, StoredContact] = {}
        # GDPR-deleted emails: HubSpot blocks them from being re-created.
        self.erased: set[str] = set()
        self.requests = 0
        self.rate_limited = 0
        self._clock = clock
        self._emails_by_id: dict[str, str] = {}
        self._next_id = 1
        self._window: deque[float] = deque()
        self._day = -1
        self._day_used = 0

    def take(self) -> str | None:
        """Counts one request against the limits; the refusing policy's name, or None."""
        now = self._advance()
        if self._day_used >= DAILY_LIMIT:
            return "DAILY"
        if len(self._window) >= self.limit:
            return "TEN_SECONDLY_ROLLING"
        self._window.append(now)
        self._day_used += 1
        return None

    def rate_headers(self) -> dict[str, str]:
        self._advance()
        return {
            "X-HubSpot-RateLimit-Max": str(self.limit),
            "X-HubSpot-RateLimit-Remaining": str(max(0, self.limit - len(self._window))),
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(self.interval_ms),
            "X-HubSpot-RateLimit-Daily": str(DAILY_LIMIT),
            "X-HubSpot-RateLimit-Daily-Remaining": str(max(0, DAILY_LIMIT - self._day_used)),
        }

    def _advance(self) -> float:
        now = self._clock()
        while self._window and self._window[0] <= now - self.interval_ms / 1000:
            self._window.popleft()
        if (day := int(now // DAY_S)) != self._day:
            self._day, self._day_used = day, 0
        return now

    def upsert(self, item: object) -> dict[str, Any]:
        """Writes one upsert input and returns its result; raises ``BadInput``."""
        if not isinstance(item, Mapping):
            raise BadInput("Each input must be an object", [])
        email = item.get("id")
        if not isinstance(email, str) or not email:
            raise BadInput("Missing id: each input needs an id (the contact's email)", [])
        if item.get("idProperty") != "email":
            raise BadInput("The sandbox upserts by idProperty email only", [email])
        properties = item.get("properties", {})
        if not isinstance(properties, Mapping):
            raise BadInput("properties must be an object", [email])
        if not _EMAIL.fullmatch(email):
            raise BadInput(
                _invalid_property("email", f"Email address {email} is invalid", "INVALID_EMAIL"),
                [email],
            )
        for name, value in properties.items():
            if not isinstance(value, str):
                raise BadInput(
                    _invalid_property(
                        name, f"{json.dumps(value)} is not a string", "INVALID_PROPERTY_VALUE"
                    ),
                    [email],
                )
        key = email.lower()
        if key in self.erased:
            raise BadInput(
                f"Contact {email} was permanently deleted (GDPR) and cannot be re-created",
                [email],
            )
        now = _timestamp()
        contact = self.contacts.get(key)
        new = contact is None
        if contact is None:
            contact = StoredContact(str(self._next_id), {}, now, now)
            self._next_id += 1
            self.contacts[key] = contact
            self._emails_by_id[contact.id] = key
        # An empty string clears a property in HubSpot.
        merged = {**contact.properties, **properties, "email": key}
        contact.properties = {name: value for name, value in merged.items() if value != ""}
        contact.updated_at = now
        return {
            "id": contact.id,
            "new": new,
            "properties": {
                **properties,
                "email": key,
                "hs_object_id": contact.id,
                "createdate": contact.created_at,
                "lastmodifieddate": contact.updated_at,
            },
            "createdAt": contact.created_at,
            "updatedAt": contact.updated_at,
            "archived": False,
        }

    def find(self, object_id: str, id_property: str | None) -> tuple[str, StoredContact] | None:
        key = object_id.lower() if id_property == "email" else self._emails_by_id.get(object_id)
        if key is None or (contact := self.contacts.get(key)) is None:
            return None
        return key, contact

    def erase(self, key: str) -> None:
        contact = self.contacts.pop(key)
        del self._emails_by_id[contact.id]
        self.erased.add(key)


def create_hubspot_sandbox(
    *,
    token: str | None = None,
    requests_per_interval: int = 100,
    interval_ms: int = 10_000,
    clock: Clock = time.monotonic,
    latency_ms: float = 0,
) -> Starlette:
    """The stand-in as an ASGI app. ``token`` None accepts any bearer token (one must be sent,
    as HubSpot requires); ``clock`` (seconds) drives the rate windows; ``latency_ms`` delays
    every API answer, to imitate the network."""
    sandbox = HubSpotSandbox(
        requests_per_interval=requests_per_interval, interval_ms=interval_ms, clock=clock
    )

    def authorised(request: Request) -> bool:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credentials:
            return False
        return token is None or hmac.compare_digest(credentials.encode(), token.encode())

    def api(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            sandbox.requests += 1
            if latency_ms > 0:
                await asyncio.sleep(latency_ms / 1000)
            if not authorised(request):
                response: Response = _error(401, "INVALID_AUTHENTICATION", _AUTH_MESSAGE)
            elif (policy := sandbox.take()) is not None:
                sandbox.rate_limited += 1
                response = _rate_limited(policy)
            else:
                body = _json_object(await request.body())
                response = body if isinstance(body, Response) else await handler(request, body)
            response.headers.update(sandbox.rate_headers())
            return response

        return endpoint

    async def upsert(request: Request, body: Mapping[str, Any]) -> Response:
        started = _timestamp()
        inputs = body.get("inputs")
        if (refusal := _batch_refusal(inputs)) is not None:
            return refusal
        emails = Counter(
            item["id"].lower()
            for item in inputs
            if isinstance(item, Mapping) and isinstance(item.get("id"), str)
        )
        if duplicates := sorted(email for email, count in emails.items() if count > 1):
            return _error(
                400, "VALIDATION_ERROR", f"Duplicate IDs found in batch input: {duplicates}"
            )
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for item in inputs:
            try:
                results.append(sandbox.upsert(item))
            except BadInput as exc:
                errors.append(_batch_error("VALIDATION_ERROR", str(exc), exc.ids))
        return _batch_answer(results, errors, started)

    async def read(request: Request, body: Mapping[str, Any]) -> Response:
        started = _timestamp()
        inputs = body.get("inputs")
        if (refusal := _batch_refusal(inputs)) is not None:
            return refusal
        requested = body.get("properties") or DEFAULT_READ_PROPERTIES
        if not isinstance(requested, list | tuple):
            return _error(400, "VALIDATION_ERROR", "properties must be a list of names")
        id_property = body.get("idProperty")
        results: list[dict[str, Any]] = []
        missing: list[str] = []
        for item in inputs:
            object_id = str(item.get("id")) if isinstance(item, Mapping) else str(item)
            if (found := sandbox.find(object_id, id_property)) is None:
                missing.append(object_id)
                continue
            contact = found[1]
            properties = {
                name: contact.properties[name]
                for name in requested
                if isinstance(name, str) and name in contact.properties
            }
            results.append(
                {
                    "id": contact.id,
                    "properties": {**properties, "hs_object_id": contact.id},
                    "createdAt": contact.created_at,
                    "updatedAt": contact.updated_at,
                    "archived": False,
                }
            )
        errors = [_batch_error("OBJECT_NOT_FOUND", _NOT_FOUND_MESSAGE, missing)] if missing else []
        return _batch_answer(results, errors, started)

    async def gdpr_delete(request: Request, body: Mapping[str, Any]) -> Response:
        object_id = body.get("objectId")
        if not isinstance(object_id, str | int) or isinstance(object_id, bool):
            return _error(400, "VALIDATION_ERROR", "objectId is required")
        found = sandbox.find(str(object_id), body.get("idProperty"))
        if found is None:
            return _error(404, "OBJECT_NOT_FOUND", "resource not found")
        sandbox.erase(found[0])
        return Response(status_code=204)

    async def all_contacts(request: Request) -> Response:
        return JSONResponse(
            {
                "contacts": {
                    email: contact.snapshot() for email, contact in sandbox.contacts.items()
                },
                "requests": sandbox.requests,
                "rate_limited": sandbox.rate_limited,
            }
        )

    async def one_contact(request: Request) -> Response:
        contact = sandbox.contacts.get(request.path_params["email"].lower())
        if contact is None:
            return JSONResponse({"error": "no such contact in the sandbox"}, status_code=404)
        return JSONResponse(contact.snapshot())

    return Starlette(
        routes=[
            Route("/crm/v3/objects/contacts/batch/upsert", api(upsert), methods=["POST"]),
            Route("/crm/v3/objects/contacts/batch/read", api(read), methods=["POST"]),
            Route("/crm/v3/objects/contacts/gdpr-delete", api(gdpr_delete), methods=["POST"]),
            Route("/_sandbox/contacts", all_contacts, methods=["GET"]),
            Route("/_sandbox/contacts/{email}", one_contact, methods=["GET"]),
        ]
    )


def serve_hubspot_sandbox(
    host: str,
    port: int,
    *,
    token: str | None,
    requests_per_interval: int,
    interval_ms: int,
    latency_ms: float,
) -> None:
    """Run the HubSpot stand-in until interrupted."""
    app = create_hubspot_sandbox(
        token=token,
        requests_per_interval=requests_per_interval,
        interval_ms=interval_ms,
        latency_ms=latency_ms,
    )
    auth = "its token required" if token else "any bearer token accepted"
    print(
        f"HubSpot sandbox listening on http://{host}:{port} with {requests_per_interval} "
        f"requests per {interval_ms} ms, {auth}"
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def _timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _invalid_property(name: str, message: str, error: str) -> str:
    detail = {"isValid": False, "message": message, "error": error, "name": name}
    return f"Property values were not valid: {json.dumps([detail])}"


def _json_object(raw: bytes) -> Mapping[str, Any] | Response:
    """The request's JSON object, or HubSpot's 400 for a body that is not one."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        return _error(400, "VALIDATION_ERROR", f"Invalid input JSON: {exc}")
    if not isinstance(body, Mapping):
        return _error(400, "VALIDATION_ERROR", "The request body must be a JSON object")
    return body


def _batch_refusal(inputs: object) -> Response | None:
    if not isinstance(inputs, list):
        return _error(400, "VALIDATION_ERROR", "inputs must be a list")
    if len(inputs) > MAX_INPUTS:
        return _error(
            400,
            "VALIDATION_ERROR",
            f"Batch size {len(inputs)} exceeds the limit of {MAX_INPUTS} inputs",
        )
    return None


def _batch_error(category: str, message: str, ids: list[str]) -> dict[str, Any]:
    return {"status": "error", "category": category, "message": message, "context": {"ids": ids}}


def _batch_answer(
    results: list[dict[str, Any]], errors: list[dict[str, Any]], started: str
) -> JSONResponse:
    body: dict[str, Any] = {
        "status": "COMPLETE",
        "results": results,
        "startedAt": started,
        "completedAt": _timestamp(),
    }
    if errors:
        body |= {"numErrors": len(errors), "errors": errors}
    return JSONResponse(body, status_code=207 if errors else 200)


def _error(status: int, category: str, message: str) -> JSONResponse:
    body = {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
    }
    return JSONResponse(body, status_code=status)


def _rate_limited(policy: str) -> JSONResponse:
    window = "daily" if policy == "DAILY" else "secondly"
    body = {
        "status": "error",
        "message": f"You have reached your {window} limit.",
        "errorType": "RATE_LIMIT",
        "correlationId": str(uuid.uuid4()),
        "policyName": policy,
        "groupName": "api-calls",
    }
    return JSONResponse(body, status_code=429)
