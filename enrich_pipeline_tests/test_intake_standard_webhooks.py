"""POST /v1/webhooks/generic as a form tool meets it, through httpx's ASGI transport: deliveries
are signed with the ``standardwebhooks`` package's own ``sign``, so these tests do not lean on
the receiver's verification code."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from enrich_pipeline.intake.app import create_intake_app
from enrich_pipeline.intake.journal import IntakeJournal
from enrich_pipeline.intake.mover import JournalMover
from enrich_pipeline.intake.standard_webhooks import StandardWebhookReceiver
from enrich_pipeline.settings import Settings
from enrich_pipeline_tests.helpers import read_warehouse

pytestmark = pytest.mark.anyio

SECRET = "whsec_" + base64.b64encode(b"form-tool-signing-secret-0123456").decode()
URL = "/v1/webhooks/generic"
ADA = {"Email": "ada@analytical-engines.io", "First Name": "Ada", "Company Name": "AE"}
GRACE = {"email": "grace@navy.mil", "first_name": "Grace", "company": "US Navy"}


@pytest.fixture
def wakes() -> list[None]:
    return []


def app_with(
    journal: IntakeJournal, mover: JournalMover, wakes: list[None], secret: str | None
) -> httpx.AsyncClient:
    receiver = StandardWebhookReceiver(journal, secret=secret, wake=lambda: wakes.append(None))
    app = create_intake_app(journal, token=None, mover=mover, receivers=[receiver])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake")


@pytest.fixture
async def client(
    journal: IntakeJournal, mover: JournalMover, wakes: list[None]
) -> AsyncIterator[httpx.AsyncClient]:
    async with app_with(journal, mover, wakes, SECRET) as http:
        yield http


def signed(
    payload: Any, msg_id: str = "msg_1", *, age: timedelta = timedelta(0), secret: str = SECRET
) -> dict[str, Any]:
    """The body and headers a Standard Webhooks sender would post."""
    body = json.dumps(payload)
    sent_at = datetime.now(UTC) - age
    return {
        "content": body.encode(),
        "headers": {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, sent_at, body),
        },
    }


def event(data: Any) -> dict[str, Any]:
    return {"type": "form.submitted", "timestamp": "2024-05-01T12:00:00Z", "data": data}


def landed(settings: Settings) -> list[tuple[Any, ...]]:
    with read_warehouse(settings.warehouse_path) as con:
        return con.execute(
            "SELECT email, first_name, company_name, source FROM raw_contacts ORDER BY ingest_id"
        ).fetchall()


async def test_a_signed_delivery_is_durable_then_lands_with_mapped_fields(
    client: httpx.AsyncClient,
    journal: IntakeJournal,
    mover: JournalMover,
    settings: Settings,
    wakes: list[None],
) -> None:
    answer = await client.post(URL, **signed(event(ADA)))
    assert answer.status_code == 202
    assert answer.json() == {
        "accepted": 1,
        "first_seq": journal.last_seq(),
        "last_seq": journal.last_seq(),
        "replayed": False,
        "status": "pending",
    }
    assert len(wakes) == 1, "the mover is told there is something to land"
    assert mover.land_pending() == 1
    assert landed(settings) == [("ada@analytical-engines.io", "Ada", "AE", "webhook")]


@pytest.mark.parametrize(
    "payload",
    [event(ADA), event([ADA, GRACE]), ADA, [ADA, GRACE]],
    ids=["event-object", "event-array", "bare-object", "bare-array"],
)
async def test_event_wrapped_and_bare_payloads_are_both_accepted(
    client: httpx.AsyncClient, mover: JournalMover, settings: Settings, payload: Any
) -> None:
    answer = await client.post(URL, **signed(payload))
    assert answer.status_code == 202
    mover.land_pending()
    emails = [row[0] for row in landed(settings)]
    assert emails == ["ada@analytical-engines.io", "grace@navy.mil"][: answer.json()["accepted"]]


def tampered(delivery: dict[str, Any]) -> dict[str, Any]:
    return {**delivery, "content": delivery["content"].replace(b"Ada", b"Eve")}


def unsigned(delivery: dict[str, Any]) -> dict[str, Any]:
    return {**delivery, "headers": {"content-type": "application/json"}}


def malformed_signature(delivery: dict[str, Any]) -> dict[str, Any]:
    return {**delivery, "headers": {**delivery["headers"], "webhook-signature": "v1"}}


@pytest.mark.parametrize(
    ("delivery", "kind"),
    [
        (
            lambda: signed(ADA, secret="whsec_" + base64.b64encode(b"another-secret").decode()),
            "signature",
        ),
        (lambda: tampered(signed(ADA)), "signature"),
        (lambda: signed(ADA, age=timedelta(minutes=6)), "too old"),
        (lambda: signed(ADA, age=-timedelta(minutes=6)), "too new"),
        (lambda: unsigned(signed(ADA)), "headers"),
        (lambda: malformed_signature(signed(ADA)), "webhook-signature"),
    ],
    ids=["other-secret", "tampered-body", "stale", "future", "no-headers", "malformed"],
)
async def test_an_unverified_delivery_is_refused_and_lands_nothing(
    client: httpx.AsyncClient,
    journal: IntakeJournal,
    wakes: list[None],
    delivery: Callable[[], dict[str, Any]],
    kind: str,
) -> None:
    # Signed when the test runs, not when it is collected: a suite taking a minute or more
    # would bring a delivery signed six minutes ahead within the five minutes allowed.
    answer = await client.post(URL, **delivery())
    assert answer.status_code == 401
    assert kind in answer.json()["detail"], "the answer says what kind of problem it was"
    assert "ada@" not in answer.text
    assert journal.last_seq() == 0 and not wakes


async def test_a_retried_delivery_lands_once(
    client: httpx.AsyncClient, mover: JournalMover, settings: Settings, wakes: list[None]
) -> None:
    first = await client.post(URL, **signed(event(ADA), "msg_retry"))
    # A retry is signed again, later: a new timestamp and signature, the same id and body.
    again = await client.post(URL, **signed(event(ADA), "msg_retry", age=timedelta(seconds=-5)))
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json() == first.json() | {"replayed": True}
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(wakes) == 1
    mover.land_pending()
    assert len(landed(settings)) == 1


async def test_the_same_id_with_other_leads_is_refused(
    client: httpx.AsyncClient, journal: IntakeJournal
) -> None:
    assert (await client.post(URL, **signed(ADA, "msg_7"))).status_code == 202
    last_seq = journal.last_seq()
    other = await client.post(URL, **signed({**ADA, "First Name": "A."}, "msg_7"))
    assert other.status_code == 422 and "webhook-id" in other.json()["detail"]
    assert journal.last_seq() == last_seq


async def test_a_lead_without_identity_is_refused_naming_the_lead(
    client: httpx.AsyncClient, journal: IntakeJournal
) -> None:
    answer = await client.post(URL, **signed(event([ADA, {"City": "Paris"}])))
    assert answer.status_code == 422
    (problem,) = answer.json()["detail"]
    assert problem["lead"] == 1 and "identifying" in problem["problem"]
    assert "Paris" not in answer.text
    assert journal.last_seq() == 0


async def test_without_a_secret_the_endpoint_says_which_setting_to_set(
    journal: IntakeJournal, mover: JournalMover, wakes: list[None]
) -> None:
    async with app_with(journal, mover, wakes, None) as http:
        answer = await http.post(URL, **signed(ADA))
    assert answer.status_code == 503
    assert "ENRICH_WEBHOOK_SECRET" in answer.json()["detail"]
    assert journal.last_seq() == 0


def test_a_secret_that_is_not_base64_fails_at_start_without_showing_it(
    journal: IntakeJournal,
) -> None:
    with pytest.raises(ValueError, match="ENRICH_WEBHOOK_SECRET") as raised:
        StandardWebhookReceiver(journal, secret="whsec_x", wake=lambda: None)
    assert "whsec_x" not in str(raised.value)


async def test_the_secret_never_appears_in_an_answer(
    client: httpx.AsyncClient, journal: IntakeJournal, mover: JournalMover, wakes: list[None]
) -> None:
    deliveries = [
        signed(ADA, "msg_a"),
        signed(ADA, "msg_a"),
        signed(GRACE, "msg_a"),
        signed([{"City": "Paris"}], "msg_b"),
        tampered(signed(ADA, "msg_c")),
        signed(ADA, "msg_d", age=timedelta(minutes=6)),
        unsigned(signed(ADA)),
        {"content": b'{"email": ', "headers": signed(ADA)["headers"]},
    ]
    answers = [await client.post(URL, **delivery) for delivery in deliveries]
    answers.append(await client.get("/openapi.json"))
    secret_bytes = SECRET.removeprefix("whsec_")
    for answer in answers:
        assert secret_bytes not in answer.text
        assert all(secret_bytes not in value for value in answer.headers.values())


async def test_a_body_over_one_megabyte_is_refused_before_it_is_verified(
    client: httpx.AsyncClient, journal: IntakeJournal
) -> None:
    answer = await client.post(URL, **signed([{**ADA, "Notes": "x" * 1000}] * 1000))
    assert answer.status_code == 413
    assert journal.last_seq() == 0
