"""The HubSpot stand-in, driven by the project's real HubSpot client (and raw HTTP where the
client cannot send what is tested): the two must agree on HubSpot's wire format."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from enrich_pipeline.destinations.hubspot import HubSpotAuthError, HubSpotClient, UpsertOutcome
from enrich_pipeline.sandbox.hubspot import create_hubspot_sandbox
from enrich_pipeline_tests.conftest import REPO
from enrich_pipeline_tests.helpers import FakeTime, free_port

BASE = "https://api.hubapi.test"
TOKEN = "pat-na1-sandbox-token"
UPSERT = "/crm/v3/objects/contacts/batch/upsert"
READ = "/crm/v3/objects/contacts/batch/read"
GDPR_DELETE = "/crm/v3/objects/contacts/gdpr-delete"
RATE_HEADERS = (
    "X-HubSpot-RateLimit-Max",
    "X-HubSpot-RateLimit-Remaining",
    "X-HubSpot-RateLimit-Interval-Milliseconds",
    "X-HubSpot-RateLimit-Daily",
    "X-HubSpot-RateLimit-Daily-Remaining",
)


ADA = {"email": "Ada@Analytical-Engines.io", "firstname": "Ada", "jobtitle": "Analyst"}


def client_for(app: Starlette, token: str = TOKEN) -> HubSpotClient:
    return HubSpotClient(
        token=token, base_url=BASE, transport=httpx.ASGITransport(app=app), max_attempts=1
    )


def raw_http(app: Starlette, token: str | None = TOKEN) -> httpx.AsyncClient:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, headers=headers)


async def stored(app: Starlette) -> dict[str, Any]:
    async with raw_http(app, token=None) as http:
        return (await http.get("/_sandbox/contacts")).json()


def upsert_body(*inputs: dict[str, Any]) -> dict[str, Any]:
    return {"inputs": [{"idProperty": "email", **item} for item in inputs]}


@pytest.mark.anyio
async def test_upsert_creates_then_updates_and_reads_back_by_id() -> None:
    app = create_hubspot_sandbox(token=TOKEN)
    async with client_for(app) as hubspot:
        [created] = await hubspot.upsert_contacts([ADA])
        # Emails match case-insensitively: the same contact, updated.
        [updated] = await hubspot.upsert_contacts(
            [{"email": "ada@analytical-engines.io", "jobtitle": "Engineer"}]
        )
        read = await hubspot.read_contacts(
            [str(created.hubspot_id), "999999"], ["email", "firstname", "jobtitle", "phone"]
        )

    assert created.status == "created" and created.hubspot_id is not None
    assert updated == UpsertOutcome(
        "ada@analytical-engines.io", "updated", created.hubspot_id, None
    )
    assert read == {
        created.hubspot_id: {
            "email": "ada@analytical-engines.io",
            "firstname": "Ada",
            "jobtitle": "Engineer",
            "hs_object_id": created.hubspot_id,
        }
    }
    contacts = (await stored(app))["contacts"]
    assert list(contacts) == ["ada@analytical-engines.io"]
    assert contacts["ada@analytical-engines.io"]["id"] == created.hubspot_id


@pytest.mark.anyio
async def test_the_client_batches_by_100_and_the_stand_in_takes_each_batch() -> None:
    app = create_hubspot_sandbox()
    records = [{"email": f"p{i:03d}@acme.com", "firstname": f"P{i}"} for i in range(250)]
    async with client_for(app, token="any-token-will-do") as hubspot:
        outcomes = await hubspot.upsert_contacts(records)

    assert [outcome.status for outcome in outcomes] == ["created"] * 250
    assert len({outcome.hubspot_id for outcome in outcomes}) == 250
    state = await stored(app)
    assert len(state["contacts"]) == 250 and state["requests"] == 3


@pytest.mark.anyio
async def test_more_than_100_inputs_are_refused_whole() -> None:
    app = create_hubspot_sandbox(token=TOKEN)
    inputs = [{"id": f"p{i}@acme.com", "properties": {}} for i in range(101)]
    async with raw_http(app) as http:
        response = await http.post(UPSERT, json=upsert_body(*inputs))

    assert response.status_code == 400
    assert response.json()["category"] == "VALIDATION_ERROR"
    assert (await stored(app))["contacts"] == {}


@pytest.mark.anyio
async def test_a_wrong_or_missing_token_is_refused() -> None:
    app = create_hubspot_sandbox(token=TOKEN)
    async with client_for(app, token="pat-na1-wrong") as hubspot:
        with pytest.raises(HubSpotAuthError, match="HTTP 401"):
            await hubspot.upsert_contacts([ADA])
        with pytest.raises(HubSpotAuthError, match="HTTP 401"):
            await hubspot.read_contacts(["1"], ["email"])
    async with raw_http(app, token=None) as http:
        response = await http.post(UPSERT, json=upsert_body({"id": "a@acme.com"}))

    assert response.status_code == 401
    assert response.json()["status"] == "error"
    assert response.json()["category"] == "INVALID_AUTHENTICATION"
    assert (await stored(app))["contacts"] == {}


@pytest.mark.anyio
async def test_without_a_configured_token_any_bearer_token_is_accepted_but_one_is_needed() -> None:
    app = create_hubspot_sandbox()
    async with raw_http(app, token="whatever") as http:
        accepted = await http.post(UPSERT, json=upsert_body({"id": "a@acme.com"}))
    async with raw_http(app, token=None) as http:
        refused = await http.post(UPSERT, json=upsert_body({"id": "b@acme.com"}))

    assert accepted.status_code == 200
    assert refused.status_code == 401
    assert list((await stored(app))["contacts"]) == ["a@acme.com"]


@pytest.mark.anyio
async def test_a_partial_failure_is_reported_per_record_by_the_client() -> None:
    app = create_hubspot_sandbox(token=TOKEN)
    async with client_for(app) as hubspot:
        outcomes = await hubspot.upsert_contacts(
            [ADA, {"email": "not-an-email", "firstname": "Bad"}]
        )

    assert [(outcome.email, outcome.status) for outcome in outcomes] == [
        ("Ada@Analytical-Engines.io", "created"),
        ("not-an-email", "failed"),
    ]
    assert outcomes[1].error is not None and "INVALID_EMAIL" in outcomes[1].error
    assert list((await stored(app))["contacts"]) == ["ada@analytical-engines.io"]


@pytest.mark.anyio
async def test_a_207_names_each_failed_input_and_writes_the_rest() -> None:
    app = create_hubspot_sandbox(token=TOKEN)
    async with raw_http(app) as http:
        response = await http.post(
            UPSERT,
            json=upsert_body(
                {"id": "good@acme.com", "properties": {"firstname": "Good"}},
                {"id": "count@acme.com", "properties": {"numemployees": 42}},
                {"properties": {"firstname": "No id"}},
            ),
        )

    assert response.status_code == 207
    body = response.json()
    assert body["status"] == "COMPLETE" and body["numErrors"] == 2
    assert [result["properties"]["email"] for result in body["results"]] == ["good@acme.com"]
    assert body["results"][0]["new"] is True and body["results"][0]["archived"] is False
    assert [(error["category"], error["context"]) for error in body["errors"]] == [
        ("VALIDATION_ERROR", {"ids": ["count@acme.com"]}),
        ("VALIDATION_ERROR", {"ids": []}),
    ]
    assert "numemployees" in body["errors"][0]["message"]
    assert list((await stored(app))["contacts"]) == ["good@acme.com"]


@pytest.mark.anyio
async def test_the_101st_request_in_10_s_is_rate_limited_and_not_executed() -> None:
    fake = FakeTime()
    app = create_hubspot_sandbox(token=TOKEN, clock=fake.clock)
    remaining: list[str] = []
    async with raw_http(app) as http:
        for _ in range(100):
            response = await http.post(READ, json={"inputs": [], "properties": ["email"]})
            assert response.status_code == 200
            remaining.append(response.headers["X-HubSpot-RateLimit-Remaining"])
            fake.now += 0.099
        limited = await http.post(UPSERT, json=upsert_body({"id": "late@acme.com"}))
        fake.now += 0.2  # the first request has now left the 10 s window
        again = await http.post(UPSERT, json=upsert_body({"id": "later@acme.com"}))

    assert remaining == [str(n) for n in range(99, -1, -1)]
    assert limited.status_code == 429
    assert {name: limited.headers[name] for name in RATE_HEADERS} == {
        "X-HubSpot-RateLimit-Max": "100",
        "X-HubSpot-RateLimit-Remaining": "0",
        "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
        "X-HubSpot-RateLimit-Daily": "250000",
        "X-HubSpot-RateLimit-Daily-Remaining": "249900",
    }
    body = limited.json()
    assert (body["status"], body["errorType"], body["policyName"]) == (
        "error",
        "RATE_LIMIT",
        "TEN_SECONDLY_ROLLING",
    )
    assert body["message"] == "You have reached your secondly limit."
    assert again.status_code == 200
    state = await stored(app)
    assert list(state["contacts"]) == ["later@acme.com"]
    assert (state["requests"], state["rate_limited"]) == (102, 1)


@pytest.mark.anyio
async def test_gdpr_delete_removes_the_contact_and_blocks_its_email() -> None:
    app = create_hubspot_sandbox(token=TOKEN)
    grace = {"email": "grace@navy.mil", "firstname": "Grace"}
    async with client_for(app) as hubspot:
        [ada, grace_created] = await hubspot.upsert_contacts([ADA, grace])
        async with raw_http(app) as http:
            by_email = await http.post(
                GDPR_DELETE, json={"objectId": "ada@analytical-engines.io", "idProperty": "email"}
            )
            by_id = await http.post(GDPR_DELETE, json={"objectId": grace_created.hubspot_id})
            unknown = await http.post(GDPR_DELETE, json={"objectId": "999999"})
            inspected = await http.get("/_sandbox/contacts/ada@analytical-engines.io")
        read = await hubspot.read_contacts([str(ada.hubspot_id)], ["email"])
        [recreated] = await hubspot.upsert_contacts([ADA])

    assert (by_email.status_code, by_email.content) == (204, b"")
    assert by_id.status_code == 204
    assert unknown.status_code == 404
    assert inspected.status_code == 404
    assert read == {}
    assert recreated.status == "failed"
    assert (await stored(app))["contacts"] == {}


@pytest.mark.anyio
async def test_latency_delays_every_api_answer() -> None:
    app = create_hubspot_sandbox(latency_ms=50)
    async with raw_http(app) as http:
        started = time.monotonic()
        await http.post(READ, json={"inputs": []})
        elapsed = time.monotonic() - started

    assert elapsed >= 0.05


@pytest.mark.slow
def test_the_cli_serves_the_stand_in_as_its_own_process() -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "enrich_pipeline.cli", "hubspot-sandbox"),
            *("--port", str(port), "--token", TOKEN, "--requests-per-10s", "150"),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_listening(base_url, process)

        async def upsert() -> list[UpsertOutcome]:
            async with HubSpotClient(token=TOKEN, base_url=base_url) as hubspot:
                return await hubspot.upsert_contacts([ADA])

        [outcome] = asyncio.run(upsert())
        response = httpx.get(f"{base_url}/_sandbox/contacts/ada@analytical-engines.io")
    finally:
        process.terminate()
        process.wait(timeout=30)

    assert outcome.status == "created"
    assert response.status_code == 200
    contact = response.json()
    assert contact["id"] == outcome.hubspot_id
    assert contact["properties"] == {
        "email": "ada@analytical-engines.io",
        "firstname": "Ada",
        "jobtitle": "Analyst",
    }


def wait_until_listening(base_url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "enrich-pipeline hubspot-sandbox exited"
        try:
            httpx.get(f"{base_url}/_sandbox/contacts", timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.05)  # not listening yet
    raise AssertionError("the HubSpot stand-in did not start listening in time")
