"""``POST /v1/webhooks/generic``: leads from form tools that send Standard Webhooks.

A delivery is accepted only with a valid ``webhook-signature`` over the raw body and a
``webhook-timestamp`` within five minutes (the ``standardwebhooks`` package checks both).
``webhook-id`` stays the same when a sender retries, so it is the idempotency key: a retried
delivery lands once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook, WebhookVerificationError

from enrich_pipeline.intake.journal import IdempotencyConflict, Journal
from enrich_pipeline.intake.requests import (
    LeadsAccepted,
    Problem,
    accepted_answer,
    parse_json,
    read_body,
    validated_leads,
)
from enrich_pipeline.settings import IntakeSettings, SettingError
from enrich_pipeline.settings_base import env_name

SOURCE = "webhook"


class StandardWebhookReceiver:
    """The route for Standard Webhooks senders (an ``app.Receiver``). ``secret``: the signing
    secret (``whsec_`` + base64); None answers 503, naming the setting. ``wake``: tells the
    mover there are new leads to land."""

    def __init__(self, journal: Journal, *, secret: str | None, wake: Callable[[], None]) -> None:
        self._journal = journal
        self._wake = wake
        self._webhook = None if secret is None else _webhook(secret)
        self.router = APIRouter()
        self.router.add_api_route(
            "/v1/webhooks/generic",
            self._receive,
            methods=["POST"],
            status_code=202,
            response_model=LeadsAccepted,
        )

    def start(self) -> None:
        """Nothing to start: deliveries arrive as requests and are journalled while the caller
        waits, so no background work is left."""

    def stop(self) -> None:
        """Nothing to stop (see ``start``)."""

    async def _receive(self, request: Request, response: Response) -> LeadsAccepted:
        """Accept the leads of one signed delivery: a Standard Webhooks event whose ``data`` is
        a lead object or an array of them, or the lead object or array itself. Field names and
        aliases are those of CSV ingest. A retried delivery (same ``webhook-id``) lands once."""
        if self._webhook is None:
            raise Problem(
                503,
                f"generic webhooks are off: set {env_name(IntakeSettings, 'webhook_secret')}",
            )
        body = await read_body(request)
        signatures = request.headers.get("webhook-signature")
        if signatures is not None and not _WELL_FORMED_SIGNATURES.fullmatch(signatures):
            # Told apart here: from version 1.3 the package reports it as no matching signature.
            raise Problem(
                401,
                "webhook not verified: malformed webhook-signature (expected space-separated "
                '"v1,<base64>" entries)',
            )
        try:
            self._webhook.verify(body, dict(request.headers), json_parse=False)
        except WebhookVerificationError as exc:
            # The package's messages name the kind of failure (missing headers, timestamp too
            # old or too new, no matching signature) and never a header value.
            raise Problem(401, f"webhook not verified: {exc}") from None
        except ValueError:
            # Before version 1.3 the package raises these for a signature that is not valid
            # base64 and for a body that is not UTF-8 (UnicodeDecodeError is a ValueError).
            raise Problem(
                401, "webhook not verified: malformed webhook-signature or a non-UTF-8 body"
            ) from None
        leads = validated_leads(_unwrapped(parse_json(body)))
        try:
            accepted = await self._journal.append_async(
                leads,
                source=SOURCE,
                received_at=datetime.now(UTC).replace(tzinfo=None),
                idempotency_key=f"webhook:{request.headers['webhook-id']}",
            )
        except IdempotencyConflict:
            raise Problem(422, "this webhook-id was delivered before with other leads") from None
        return accepted_answer(accepted, response, self._wake)


# Space-separated "<version>,<signature>" entries.
_WELL_FORMED_SIGNATURES = re.compile(r"[^\s,]+,\S+(?: [^\s,]+,\S+)*")


def _webhook(secret: str) -> Webhook:
    # Checked when the service starts, so a mistyped secret fails there and not as a 401 on
    # every delivery. The message names the setting, never the secret.
    try:
        return Webhook(secret)
    except (ValueError, EmptyWebhookSecretError):
        raise SettingError(
            f"{env_name(IntakeSettings, 'webhook_secret')} is not a Standard Webhooks secret "
            "(whsec_ followed by base64)"
        ) from None


def _unwrapped(payload: Any) -> Any:
    """The leads in a delivery: an event's ``data`` (the Standard Webhooks convention, with
    ``type`` beside it), else the payload itself as a bare lead or array."""
    if (
        isinstance(payload, dict)
        and "type" in payload
        and isinstance(payload.get("data"), dict | list)
    ):
        return payload["data"]
    return payload
