"""The intake service's HTTP API: ``POST /v1/leads`` and ``GET /healthz``.

A 2xx means the leads are in the durable journal; landing them in the warehouse happens after
the answer (``JournalMover``), so a Dagster run holding DuckDB never slows a caller down. Error
answers name the lead and the field, never a value: they end up in callers' logs.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enrich_pipeline.intake.enrich_now import (
    ReadyRecords,
    lead_email,
    preferred_wait,
    read_crm_records,
)
from enrich_pipeline.intake.journal import IdempotencyConflict, Journal
from enrich_pipeline.intake.mover import ReceivedLeads
from enrich_pipeline.intake.requests import (
    LeadsAccepted,
    Problem,
    accepted_answer,
    parse_json,
    read_body,
    validated_leads,
)

MAX_IDEMPOTENCY_KEY_CHARS = 255
DEFAULT_SOURCE = "api"

access_log = logging.getLogger("enrich_pipeline.intake.access")


class Mover(Protocol):
    """What moves accepted leads on: a ``JournalMover`` in this process, or a
    ``MoverProcess`` running one in a child."""

    @property
    def warehouse_path(self) -> str | Path: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def wake(self) -> None: ...

    def enrich_now(self, leads: ReceivedLeads) -> None: ...

    def is_done(self, seq: int) -> bool: ...

    def add_done_listener(self, listener: Callable[[], None]) -> None: ...

    def status(self) -> dict[str, Any]: ...


class Receiver(Protocol):
    """Another way in (a webhook): its routes, and any background work it starts and stops
    with the app."""

    router: APIRouter

    def start(self) -> None: ...

    def stop(self) -> None: ...


def create_intake_app(
    journal: Journal,
    *,
    token: str | None,
    mover: Mover,
    receivers: Sequence[Receiver] = (),
    ready: ReadyRecords | None = None,
) -> FastAPI:
    """The ASGI app. ``token``: the bearer token callers of ``/v1/leads`` must send (None: no
    auth, loopback only, which ``enrich-pipeline serve`` enforces). ``mover`` and the
    receivers' background work run while the app does. ``ready``: where the write-back
    publishes the records of callers who asked to wait (``Prefer: wait``)."""
    ready = ready or ReadyRecords()
    mover.add_done_listener(ready.poke)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        mover.start()
        for receiver in receivers:
            receiver.start()
        try:
            yield
        finally:
            for receiver in receivers:
                receiver.stop()
            mover.stop()

    app = FastAPI(
        title="enrich_pipeline intake",
        summary="Leads in, enriched CRM records out: every accepted lead is durable first.",
        lifespan=lifespan,
    )

    for receiver in receivers:
        app.include_router(receiver.router)
    app.add_middleware(AccessLog)

    @app.exception_handler(Problem)
    async def problem_answer(request: Request, exc: Problem) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)

    @app.post(
        "/v1/leads",
        status_code=202,
        response_model=LeadsAccepted,
        responses={200: {"description": "Prefer: wait=N, and the CRM records were ready"}},
    )
    async def post_leads(request: Request, response: Response) -> LeadsAccepted:
        """Accept one lead (a JSON object) or up to 1,000 (an array), with the same field names
        and aliases as CSV ingest. The answer comes once they are durable; they are landed,
        enriched and written back afterwards. Send an ``Idempotency-Key`` to make a retry
        safe: the same key lands once. With ``Prefer: wait=N`` (N up to 10 seconds) the answer
        is 200 with the merged CRM records (with provenance) if they are ready by then, else
        the usual 202: the leads are kept and enriched either way."""
        _authorise(request, token)
        key = request.headers.get("idempotency-key")
        if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_CHARS:
            raise Problem(422, f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} chars")
        leads = validated_leads(parse_json(await read_body(request)))
        wait_s = preferred_wait(request.headers.get("prefer"))
        waiting: list[str] = []
        if wait_s is not None:
            emails = [lead_email(lead) for lead in leads]
            # No email, no CRM record to wait for (records are keyed by email).
            if all(emails):
                waiting = [email for email in emails if email]
        ready.want(waiting)
        received_at = datetime.now(UTC).replace(tzinfo=None)
        try:
            try:
                accepted = await journal.append_async(
                    leads, source=DEFAULT_SOURCE, received_at=received_at, idempotency_key=key
                )
            except IdempotencyConflict:
                raise Problem(
                    422, "this Idempotency-Key was used before with a different body"
                ) from None
            if waiting and not accepted.replayed:
                # Durable now: answered without waiting to be landed (told before the wake).
                mover.enrich_now([(lead, received_at) for lead in leads])
            answer = accepted_answer(accepted, response, mover.wake)
            if wait_s is None:
                return answer
            response.headers["Preference-Applied"] = f"wait={wait_s:g}"
            started = time.monotonic()
            if not waiting:
                return answer
            # Answered as soon as the write-back publishes the records; a replay, merged
            # before anyone waited, is read from the warehouse once the mover is past it.
            records = await run_in_threadpool(
                ready.wait, waiting, wait_s, partial(mover.is_done, accepted.last_seq)
            )
            if records is None and mover.is_done(accepted.last_seq):
                records = await run_in_threadpool(
                    partial(
                        read_crm_records,
                        mover.warehouse_path,
                        waiting,
                        lock_timeout_s=max(wait_s - (time.monotonic() - started), 0.1),
                    )
                )
        finally:
            ready.unwant(waiting)
        if records is None:
            return answer
        return JSONResponse(
            {"status": "enriched", "records": records},
            headers={
                name: value
                for name, value in response.headers.items()
                if name in ("preference-applied", "idempotent-replayed")
            },
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness, and how far the journal has been landed in the warehouse."""
        last_seq = await run_in_threadpool(journal.last_seq)
        return {"status": "ok", "journal_last_seq": last_seq, **mover.status()}

    return app


class AccessLog:
    """One structured line per request: method, path, status and timing; never a body, a query
    string or a header value, which may carry personal data or the token. Plain ASGI rather
    than ``@app.middleware``, which runs every request in a task group of its own."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app fails before it answers

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, send_status)
        finally:
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    _encode_access(
                        {
                            "method": scope["method"],
                            "path": scope["path"],
                            "status": status,
                            "ms": round((time.perf_counter() - started) * 1000, 1),
                        }
                    )
                )


_encode_access = json.JSONEncoder().encode


def _authorise(request: Request, token: str | None) -> None:
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # Constant time, so the answer's timing says nothing about how much of a guess was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise Problem(
            401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )
