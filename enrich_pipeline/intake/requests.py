"""What every intake endpoint does with a request body: a size limit, JSON, leads that can land.

Refusals are ``Problem``s: their messages name the lead and the field, never a value, since
they end up in callers' logs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import Request, Response
from pydantic import BaseModel

from enrich_pipeline.intake.journal import Accepted
from enrich_pipeline.intake.landing import lead_problems

MAX_BODY_BYTES = 1_000_000
MAX_LEADS_PER_REQUEST = 1_000


class LeadsAccepted(BaseModel):
    """What an endpoint that takes leads answers with 202."""

    accepted: int
    first_seq: int
    last_seq: int
    replayed: bool
    status: str = "pending"


def accepted_answer(
    accepted: Accepted, response: Response, wake: Callable[[], None]
) -> LeadsAccepted:
    """The 202's body. A replay says so in a header and has nothing new to land."""
    if accepted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    else:
        wake()
    return LeadsAccepted(
        accepted=accepted.count,
        first_seq=accepted.first_seq,
        last_seq=accepted.last_seq,
        replayed=accepted.replayed,
    )


class Problem(Exception):
    """An answer other than 2xx, with a message safe to show (no lead values)."""

    def __init__(self, status_code: int, detail: Any, headers: dict[str, str] | None = None):
        super().__init__(str(detail))
        self.status_code = status_code
        self.detail = detail
        self.headers = headers


async def read_body(request: Request) -> bytes:
    """The request body, refused with 413 past ``MAX_BODY_BYTES`` before it is all read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise Problem(413, f"the body is over {MAX_BODY_BYTES:,} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise Problem(413, f"the body is over {MAX_BODY_BYTES:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Problem(
            422, f"malformed JSON: {type(exc).__name__} at position {_position(exc)}"
        ) from None


def validated_leads(parsed: Any) -> list[dict[str, Any]]:
    """A lead object or an array of them, every one able to land; else 422 naming every lead
    and field that cannot."""
    leads = parsed if isinstance(parsed, list) else [parsed]
    if not leads:
        raise Problem(422, "no leads: send a lead object or a non-empty array of them")
    if len(leads) > MAX_LEADS_PER_REQUEST:
        raise Problem(422, f"at most {MAX_LEADS_PER_REQUEST:,} leads per request")
    problems = [
        {"lead": index, "problem": problem}
        for index, problem in enumerate(lead_problems(leads))
        if problem is not None
    ]
    if problems:
        raise Problem(422, problems)
    return leads


def _position(exc: ValueError) -> int:
    return getattr(exc, "pos", None) or getattr(exc, "start", 0)
