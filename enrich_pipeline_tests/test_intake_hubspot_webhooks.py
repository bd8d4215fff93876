"""POST /v1/webhooks/hubspot as HubSpot meets it (signature v3, retries, duplicates), and the
read-back that turns stored events into journaled leads landing in raw_contacts."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import respx

from enrich_pipeline.cli import main
from enrich_pipeline.destinations.hubspot import TOKEN_SETTING, HubSpotClient
from enrich_pipeline.intake.app import create_intake_app
from enrich_pipeline.intake.hubspot_webhooks import CLIENT_SECRET_SETTING, HubSpotWebhookReceiver
from enrich_pipeline.intake.journal import IntakeJournal
from enrich_pipeline.intake.mover import JournalMover
from enrich_pipeline.sandbox import SandboxConfig
from enrich_pipeline.settings import Settings
from enrich_pipeline_tests.helpers import (
    FakeTime,
    materialise_range,
    read_warehouse,
    sandbox_over_http,
)

pytestmark = pytest.mark.anyio

SECRET = "hubspot-client-secret-0123456789"
INTAKE = "https://intake.example"
URL = f"{INTAKE}/v1/webhooks/hubspot"
NOW_S = 1_760_000_000.0
NOW_MS = int(NOW_S * 1000)
HUBSPOT = "https://hubspot.test"
READ_PATH = "/crm/v3/objects/contacts/batch/read"

ADA = {
    "email": "ada@analytical-engines.io",
    "firstname": "Ada",
    "lastname": "Lovelace",
    "phone": "",
    "mobilephone": "+44 20 7946 0001",
    "company": "Analytical Engines",
    "website": "analytical-engines.io",
    "jobtitle": "Engineer",
    "city": "London",
    "state": None,
    "country": "United Kingdom",
    "hs_linkedin_url": "https://www.linkedin.com/in/ada-lovelace/",
    "createdate": "2025-10-01T09:30:00.000Z",
    "hs_object_id": "101",
}


def sign(body: bytes, timestamp: str, *, uri: str = URL, secret: str = SECRET) -> str:
    """HubSpot's recipe read off its docs, as text: method + URI + body + timestamp, UTF-8."""
    source = "POST" + uri + body.decode("utf-8") + timestamp
    mac = hmac.new(secret.encode("utf-8"), source.encode("utf-8"), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("ascii")


def signed(body: bytes, *, at_ms: int = NOW_MS, **options: str) -> dict[str, str]:
    timestamp = str(at_ms)
    return {
        "Content-Type": "application/json",
        "X-HubSpot-Request-Timestamp": timestamp,
        "X-HubSpot-Signature-v3": sign(body, timestamp, **options),
    }


def event(
    kind: str, object_id: int, occurred_at: int = NOW_MS - 60_000, **fields: Any
) -> dict[str, Any]:
    return {
        "eventId": 1,  # HubSpot's eventId is not unique: every event here has the same one
        "subscriptionId": 7,
        "portalId": 62515,
        "appId": 54321,
        "occurredAt": occurred_at,
        "subscriptionType": kind,
        "attemptNumber": 0,
        "objectId": object_id,
        **fields,
    }


def created(object_id: int, **fields: Any) -> dict[str, Any]:
    return event("contact.creation", object_id, changeSource="CRM_UI", **fields)


def changed(object_id: int, name: str, source: str) -> dict[str, Any]:
    return event(
        "contact.propertyChange",
        object_id,
        propertyName=name,
        propertyValue="new@acme.io",
        changeSource=source,
    )


def hubspot_holding(
    contacts: Mapping[str, Mapping[str, str | None]],
) -> Callable[[httpx.Request], httpx.Response]:
    """A batch/read answer with the contacts asked for that exist; the rest simply absent."""

    def answer(request: httpx.Request) -> httpx.Response:
        asked = [item["id"] for item in json.loads(request.content)["inputs"]]
        results = [{"id": i, "properties": dict(contacts[i])} for i in asked if i in contacts]
        return httpx.Response(200, json={"status": "COMPLETE", "results": results})

    return answer


class Setup:
    def __init__(self, tmp_path: Path, journal: IntakeJournal, settings: Settings) -> None:
        self.events_path = tmp_path / "hubspot_events.sqlite3"
        self.journal = journal
        self.settings = settings
        self.mover = JournalMover(journal, settings.warehouse_path)
        self.hubspot = respx.MockRouter(base_url=HUBSPOT, assert_all_called=False)
        self.read = self.hubspot.post(READ_PATH)
        self.woken = threading.Event()

    def receiver(
        self,
        *,
        secret: str | None = SECRET,
        token: bool = True,
        erase: Callable[[Any], None] | None = None,
    ) -> HubSpotWebhookReceiver:
        fake = FakeTime()

        def client() -> HubSpotClient:
            return HubSpotClient(
                token="pat-test",
                base_url=HUBSPOT,
                transport=httpx.MockTransport(self.hubspot.async_handler),
                sleep=fake.sleep,
                clock=fake.clock,
                max_attempts=2,
            )

        def wake() -> None:
            self.woken.set()
            self.mover.wake()

        return HubSpotWebhookReceiver(
            self.journal,
            client_secret=secret,
            events_path=self.events_path,
            hubspot=client if token else None,
            wake=wake,
            erase=erase,
            clock=lambda: NOW_S,
        )

    def events(self) -> list[tuple[str, str, bool]]:
        """(subscription type, object id, still pending) of every stored event."""
        if not self.events_path.exists():
            return []
        with sqlite3.connect(self.events_path) as con:
            rows = con.execute(
                "SELECT subscription_type, object_id, done_at IS NULL FROM events ORDER BY id"
            ).fetchall()
        return [(kind, obj, bool(pending)) for kind, obj, pending in rows]

    def landed(self) -> list[tuple[Any, ...]]:
        self.mover.land_pending()
        with read_warehouse(self.settings.warehouse_path) as con:
            return con.execute(
                "SELECT email, first_name, last_name, phone, company_name, website, job_title, "
                "city, state, country, linkedin_url, received_at, source "
                "FROM raw_contacts ORDER BY ingest_id"
            ).fetchall()


@pytest.fixture
def setup(tmp_path: Path, journal: IntakeJournal, settings: Settings) -> Setup:
    return Setup(tmp_path, journal, settings)


@pytest.fixture
def receiver(setup: Setup) -> HubSpotWebhookReceiver:
    return setup.receiver()


def app_client(setup: Setup, receiver: HubSpotWebhookReceiver) -> httpx.AsyncClient:
    app = create_intake_app(setup.journal, token=None, mover=setup.mover, receivers=[receiver])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=INTAKE)


@pytest.fixture
async def client(
    setup: Setup, receiver: HubSpotWebhookReceiver
) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(setup, receiver) as http:
        yield http


async def deliver(
    client: httpx.AsyncClient, events: list[dict[str, Any]], **options: Any
) -> httpx.Response:
    body = json.dumps(events).encode()
    return await client.post("/v1/webhooks/hubspot", content=body, headers=signed(body, **options))


async def process(receiver: HubSpotWebhookReceiver) -> int:
    # As the worker thread does it: a pass runs its own event loop.
    return await anyio.to_thread.run_sync(receiver.process_pending)


# --- receiving -----------------------------------------------------------------------------------


async def test_a_signed_batch_is_stored_and_answered_before_any_read_back(
    client: httpx.AsyncClient, setup: Setup
) -> None:
    answer = await deliver(client, [created(101), created(102)])

    assert answer.status_code == 200
    assert answer.json() == {"received": 2, "stored": 2}
    assert setup.events() == [("contact.creation", "101", True), ("contact.creation", "102", True)]
    # Acknowledged without waiting on HubSpot or the warehouse: neither has been touched yet.
    assert setup.read.call_count == 0
    assert setup.journal.last_seq() == 0
    assert not Path(setup.settings.warehouse_path).exists()


async def test_creations_email_changes_not_made_by_an_integration_and_privacy_deletions_are_kept(
    client: httpx.AsyncClient, setup: Setup, receiver: HubSpotWebhookReceiver
) -> None:
    setup.read.mock(side_effect=hubspot_holding({"202": {**ADA, "email": "new@acme.io"}}))
    events = [
        changed(201, "email", "INTEGRATION"),  # how our own write-back shows up
        changed(202, "email", "CRM_UI"),
        changed(203, "firstname", "CRM_UI"),
        event("contact.deletion", 204),
        event("contact.privacyDeletion", 205),
        event("company.creation", 206),
    ]

    answer = await deliver(client, events)

    assert answer.json() == {"received": 6, "stored": 2}
    assert setup.events() == [
        ("contact.propertyChange", "202", True),
        ("contact.privacyDeletion", "205", True),
    ]
    assert await process(receiver) == 1
    assert [row[0] for row in setup.landed()] == ["new@acme.io"]
    # This receiver was given no way to erase: the deletion waits, it is not read back.
    assert setup.events()[1] == ("contact.privacyDeletion", "205", True)
    assert [call.request.content.count(b'"205"') for call in setup.read.calls] == [0]


async def test_a_privacy_deletion_erases_the_contact_and_it_is_never_read_back(
    setup: Setup,
) -> None:
    erased: list[list[str]] = []
    receiver = setup.receiver(erase=lambda ids: erased.append(list(ids)))
    setup.read.mock(side_effect=hubspot_holding({"101": ADA}))
    async with app_client(setup, receiver) as client:
        await deliver(client, [created(101), created(102), event("contact.privacyDeletion", 102)])

    assert await process(receiver) == 1

    assert erased == [["102"]]
    assert [row[0] for row in setup.landed()] == [ADA["email"]]
    assert all(b'"102"' not in call.request.content for call in setup.read.calls)
    assert [pending for _, _, pending in setup.events()] == [False, False, False]


async def test_a_failed_erasure_keeps_the_deletion_pending_for_the_next_pass(
    setup: Setup,
) -> None:
    def fail(ids: Any) -> None:
        raise RuntimeError("the warehouse stayed locked")

    receiver = setup.receiver(erase=fail)
    async with app_client(setup, receiver) as client:
        await deliver(client, [event("contact.privacyDeletion", 102)])

    with pytest.raises(RuntimeError):
        await process(receiver)

    assert setup.events() == [("contact.privacyDeletion", "102", True)]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(lambda body: signed(body, secret="another-secret"), id="wrong-secret"),
        pytest.param(lambda body: signed(body, uri=f"{INTAKE}/elsewhere"), id="other-uri"),
        pytest.param(lambda body: signed(body + b" "), id="other-body"),
        pytest.param(lambda body: signed(body, at_ms=NOW_MS - 6 * 60_000), id="6-min-old"),
        pytest.param(lambda body: signed(body, at_ms=NOW_MS + 6 * 60_000), id="6-min-ahead"),
        pytest.param(lambda body: {"X-HubSpot-Request-Timestamp": str(NOW_MS)}, id="no-signature"),
        pytest.param(
            lambda body: {"X-HubSpot-Signature-v3": signed(body)["X-HubSpot-Signature-v3"]},
            id="no-timestamp",
        ),
        pytest.param(
            lambda body: {**signed(body), "X-HubSpot-Request-Timestamp": "soon"},
            id="timestamp-not-a-number",
        ),
    ],
)
async def test_a_request_hubspot_did_not_sign_just_now_is_refused_and_stores_nothing(
    client: httpx.AsyncClient, setup: Setup, headers: Callable[[bytes], dict[str, str]]
) -> None:
    body = json.dumps([created(101)]).encode()

    answer = await client.post("/v1/webhooks/hubspot", content=body, headers=headers(body))

    assert answer.status_code == 401
    assert SECRET not in answer.text
    assert setup.events() == []


async def test_the_signed_uri_is_the_one_received_with_hubspots_listed_escapes_decoded(
    client: httpx.AsyncClient, setup: Setup
) -> None:
    body = json.dumps([created(101)]).encode()
    query = "?portal=62515%3Aeu%2Fa&name=a%20b"
    decoded = "?portal=62515:eu/a&name=a%20b"  # %20 is not on HubSpot's list

    answer = await client.post(
        f"/v1/webhooks/hubspot{query}",
        content=body,
        headers=signed(body, uri=f"{URL}{decoded}"),
    )

    assert answer.status_code == 200
    assert len(setup.events()) == 1


async def test_a_batch_delivered_again_is_stored_once(
    client: httpx.AsyncClient, setup: Setup
) -> None:
    first = await deliver(client, [created(101), changed(101, "email", "CRM_UI")])
    # HubSpot's retry: same events, a later attempt, another signature time.
    retry = [created(101, attemptNumber=1), {**changed(101, "email", "CRM_UI"), "eventId": 9}]
    again = await deliver(client, retry, at_ms=NOW_MS + 30_000)

    assert (first.json()["stored"], again.json()["stored"]) == (2, 0)
    assert again.status_code == 200
    assert len(setup.events()) == 2


@pytest.mark.parametrize(
    "body",
    [b'{"subscriptionType": "contact.creation"}', b"[1, 2]", b"[{"],
    ids=["object", "not-objects", "malformed"],
)
async def test_a_signed_body_that_is_not_an_array_of_events_is_refused(
    client: httpx.AsyncClient, setup: Setup, body: bytes
) -> None:
    answer = await client.post("/v1/webhooks/hubspot", content=body, headers=signed(body))

    assert answer.status_code == 422
    assert setup.events() == []


async def test_without_a_client_secret_the_webhook_is_unavailable_and_says_what_to_set(
    setup: Setup,
) -> None:
    async with app_client(setup, setup.receiver(secret=None)) as client:
        answer = await deliver(client, [created(101)])

    assert answer.status_code == 503
    assert CLIENT_SECRET_SETTING in answer.json()["detail"]
    assert setup.events() == []


# --- reading back --------------------------------------------------------------------------------


async def test_contacts_are_read_back_100_per_call_and_land_once_with_their_values(
    client: httpx.AsyncClient, setup: Setup, receiver: HubSpotWebhookReceiver
) -> None:
    held = {str(i): {**ADA, "email": f"p{i}@acme.io"} for i in range(1, 150)}
    held["101"] = ADA
    setup.read.mock(side_effect=hubspot_holding(held))
    # 150 contacts, one of them (150) deleted in HubSpot since; 101 has two events.
    await deliver(client, [created(i) for i in range(1, 151)])
    await deliver(client, [changed(101, "email", "CRM_UI")])

    assert await process(receiver) == 149

    asked = [json.loads(call.request.content) for call in setup.read.calls]
    assert [len(body["inputs"]) for body in asked] == [100, 50]
    assert {"email", "firstname", "mobilephone", "createdate"} <= set(asked[0]["properties"])
    assert setup.woken.is_set()
    assert all(not pending for _, _, pending in setup.events())
    rows = setup.landed()
    assert len(rows) == 149
    assert rows[100] == (
        "ada@analytical-engines.io",
        "Ada",
        "Lovelace",
        "+44 20 7946 0001",  # mobile phone, HubSpot's phone being blank
        "Analytical Engines",
        "analytical-engines.io",
        "Engineer",
        "London",
        None,
        "United Kingdom",
        "https://www.linkedin.com/in/ada-lovelace/",
        datetime(2025, 10, 1, 9, 30),
        "hubspot",
    )

    # Nothing pending: no call to HubSpot, nothing journaled.
    assert await process(receiver) == 0
    assert setup.read.call_count == 2


async def test_events_processed_again_after_a_crash_land_nothing_new(
    client: httpx.AsyncClient, setup: Setup, receiver: HubSpotWebhookReceiver
) -> None:
    setup.read.mock(side_effect=hubspot_holding({"101": ADA}))
    await deliver(client, [created(101)])
    assert await process(receiver) == 1
    # As if the process died between journaling and marking the events done.
    with sqlite3.connect(setup.events_path) as con:
        con.execute("UPDATE events SET done_at = NULL")

    assert await process(receiver) == 0
    assert setup.read.call_count == 2
    assert len(setup.landed()) == 1


async def test_while_hubspot_fails_the_events_wait_and_a_later_pass_lands_them(
    client: httpx.AsyncClient, setup: Setup, receiver: HubSpotWebhookReceiver
) -> None:
    unavailable = httpx.Response(503, json={"message": "Service Unavailable"})
    setup.read.mock(side_effect=[unavailable, unavailable, hubspot_holding({"101": ADA})])
    await deliver(client, [created(101)])

    assert await process(receiver) == 0
    assert setup.events() == [("contact.creation", "101", True)]
    assert setup.journal.last_seq() == 0

    assert await process(receiver) == 1
    assert setup.events() == [("contact.creation", "101", False)]
    assert len(setup.landed()) == 1


@pytest.mark.parametrize("status", [401, 403])
async def test_an_auth_failure_keeps_the_events_and_logs_the_setting_to_fix(
    client: httpx.AsyncClient,
    setup: Setup,
    receiver: HubSpotWebhookReceiver,
    caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    setup.read.respond(status, json={"message": "no"})
    await deliver(client, [created(101)])

    with caplog.at_level(logging.WARNING):
        assert await process(receiver) == 0
        assert await process(receiver) == 0

    assert setup.events() == [("contact.creation", "101", True)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "said once, not on every pass"
    assert TOKEN_SETTING in warnings[0]


async def test_without_a_token_events_are_kept_until_one_is_set(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    async with app_client(setup, setup.receiver(token=False)) as client:
        answer = await deliver(client, [created(101)])
    assert answer.status_code == 200

    with caplog.at_level(logging.WARNING):
        assert await process(setup.receiver(token=False)) == 0
    assert TOKEN_SETTING in caplog.text

    setup.read.mock(side_effect=hubspot_holding({"101": ADA}))
    assert await process(setup.receiver()) == 1


async def test_the_worker_reads_back_what_arrives_while_the_app_runs(
    client: httpx.AsyncClient, setup: Setup, receiver: HubSpotWebhookReceiver
) -> None:
    setup.read.mock(side_effect=hubspot_holding({"101": ADA}))
    receiver.start()
    try:
        await deliver(client, [created(101)])
        assert await anyio.to_thread.run_sync(setup.woken.wait, 30)
    finally:
        receiver.stop()
    assert setup.journal.last_seq() == 1


async def test_a_suppressed_contact_created_in_hubspot_is_refused_at_landing(
    client: httpx.AsyncClient,
    setup: Setup,
    receiver: HubSpotWebhookReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert main(["suppress", ADA["email"]]) == 0
    setup.read.mock(side_effect=hubspot_holding({"101": ADA}))
    await deliver(client, [created(101)])

    assert await process(receiver) == 1

    assert setup.landed() == []
    with read_warehouse(setup.settings.warehouse_path) as con:
        refused = con.execute("SELECT reason, original FROM quarantine").fetchall()
    assert refused == [("suppressed", None)]
    assert setup.journal.read_after(0, 10) == [], "nothing of hers is kept in the journal"
    # Nor is she looked up: a run over her creation day asks the provider nothing.
    with sandbox_over_http(SandboxConfig(accepted_api_key="key")) as provider:
        monkeypatch.setenv("DATA_LEGION_API_KEY", "key")
        settings = Settings(base_url=provider)
        await anyio.to_thread.run_sync(
            lambda: materialise_range(settings, "2025-10-01", "2025-10-09")
        )
        assert httpx.get(f"{provider}/_sandbox/stats").json()["requests_total"] == 0
