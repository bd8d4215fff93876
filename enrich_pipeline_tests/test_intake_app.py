"""POST /v1/leads as an integrator meets it, through httpx's ASGI transport: auth, what is
accepted and what is refused (and then lands nothing), idempotent retries, and accepted leads
landing in raw_contacts."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from enrich_pipeline.intake.app import create_intake_app
from enrich_pipeline.intake.journal import IntakeJournal
from enrich_pipeline.intake.mover import JournalMover
from enrich_pipeline.intake.requests import MAX_BODY_BYTES
from enrich_pipeline.settings import Settings
from enrich_pipeline.warehouse.connection import WarehouseBusy
from enrich_pipeline_tests.helpers import held_by_another_process, read_warehouse, release

pytestmark = pytest.mark.anyio

TOKEN = "intake-secret-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADA = {"Email": "ada@analytical-engines.io", "First Name": "Ada", "Company Name": "AE"}


@pytest.fixture
async def client(journal: IntakeJournal, mover: JournalMover) -> AsyncIterator[httpx.AsyncClient]:
    app = create_intake_app(journal, token=TOKEN, mover=mover)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as http:
        yield http


def landed(settings: Settings) -> list[tuple[Any, ...]]:
    with read_warehouse(settings.warehouse_path) as con:
        return con.execute(
            "SELECT email, first_name, company_name, source FROM raw_contacts ORDER BY ingest_id"
        ).fetchall()


async def test_an_accepted_lead_is_durable_then_lands_in_raw_contacts(
    client: httpx.AsyncClient, journal: IntakeJournal, mover: JournalMover, settings: Settings
) -> None:
    answer = await client.post("/v1/leads", json=ADA, headers=AUTH)
    assert answer.status_code == 202
    assert answer.json() | {"first_seq": 0, "last_seq": 0} == {
        "accepted": 1,
        "first_seq": 0,
        "last_seq": 0,
        "replayed": False,
        "status": "pending",
    }
    # Durable before the answer: the journal holds it, the warehouse does not yet.
    assert journal.last_seq() == answer.json()["last_seq"]
    assert not Path(settings.warehouse_path).exists()

    assert mover.land_pending() == 1
    assert landed(settings) == [("ada@analytical-engines.io", "Ada", "AE", "api")]
    assert mover.land_pending() == 0, "landed once, never again"


async def test_an_array_of_leads_lands_in_order(
    client: httpx.AsyncClient, mover: JournalMover, settings: Settings
) -> None:
    leads = [{"email": f"lead{i}@acme.io", "first_name": f"L{i}"} for i in range(5)]
    answer = await client.post("/v1/leads", json=leads, headers=AUTH)
    assert answer.status_code == 202 and answer.json()["accepted"] == 5
    mover.land_pending()
    assert [row[0] for row in landed(settings)] == [lead["email"] for lead in leads]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}],
)
async def test_without_the_token_nothing_is_accepted(
    client: httpx.AsyncClient, journal: IntakeJournal, headers: dict[str, str]
) -> None:
    answer = await client.post("/v1/leads", json=ADA, headers=headers)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert journal.last_seq() == 0


async def test_the_same_idempotency_key_lands_once(
    client: httpx.AsyncClient, mover: JournalMover, settings: Settings
) -> None:
    headers = {**AUTH, "Idempotency-Key": "form-42"}
    first = await client.post("/v1/leads", json=ADA, headers=headers)
    again = await client.post("/v1/leads", json=ADA, headers=headers)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json() == first.json() | {"replayed": True}
    assert again.headers["Idempotent-Replayed"] == "true"
    other = await client.post("/v1/leads", json={**ADA, "First Name": "A."}, headers=headers)
    assert other.status_code == 422
    mover.land_pending()
    assert len(landed(settings)) == 1


async def test_refused_bodies_land_nothing_and_name_the_problem(
    client: httpx.AsyncClient, journal: IntakeJournal
) -> None:
    malformed = await client.post("/v1/leads", content=b'{"email": ', headers=AUTH)
    assert malformed.status_code == 422 and "malformed JSON" in malformed.json()["detail"]

    no_identity = await client.post(
        "/v1/leads", json=[ADA, {"City": "Paris", "Lead Source": "Web Form"}], headers=AUTH
    )
    assert no_identity.status_code == 422
    (problem,) = no_identity.json()["detail"]
    assert problem["lead"] == 1 and "identifying" in problem["problem"]
    # A value a caller sent is never echoed back: it would end up in their logs.
    assert "Paris" not in no_identity.text

    not_an_object = await client.post("/v1/leads", json=["ada@x.io"], headers=AUTH)
    assert not_an_object.status_code == 422

    too_many = await client.post("/v1/leads", json=[ADA] * 1001, headers=AUTH)
    assert too_many.status_code == 422 and "1,000" in too_many.json()["detail"]

    empty = await client.post("/v1/leads", json=[], headers=AUTH)
    assert empty.status_code == 422

    assert journal.last_seq() == 0


async def test_a_body_over_one_megabyte_is_refused(
    client: httpx.AsyncClient, journal: IntakeJournal
) -> None:
    big = json.dumps([{**ADA, "Notes": "x" * 1000}] * (MAX_BODY_BYTES // 1000)).encode()
    declared = await client.post("/v1/leads", content=big, headers=AUTH)
    assert declared.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    # Streamed without a Content-Length: refused once the limit is passed.
    streamed = await client.post("/v1/leads", content=chunks(), headers=AUTH)
    assert streamed.status_code == 413
    assert journal.last_seq() == 0


async def test_healthz_says_how_far_the_journal_has_landed(
    client: httpx.AsyncClient, mover: JournalMover
) -> None:
    await client.post("/v1/leads", json=[ADA, ADA], headers=AUTH)
    before = (await client.get("/healthz")).json()
    assert before["status"] == "ok" and before["landed_through_seq"] < before["journal_last_seq"]
    mover.land_pending()
    after = (await client.get("/healthz")).json()
    assert after["landed_through_seq"] == after["journal_last_seq"]


async def test_the_api_is_documented_for_integrators(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/leads" in spec["paths"] and "/healthz" in spec["paths"]
    assert (await client.get("/docs")).status_code == 200


@pytest.mark.slow
async def test_leads_are_accepted_while_a_run_holds_the_warehouse(
    client: httpx.AsyncClient, journal: IntakeJournal, mover: JournalMover, settings: Settings
) -> None:
    mover.land_pending()  # creates the warehouse, as the first run would
    with held_by_another_process(settings.warehouse_path) as holder:
        answer = await client.post("/v1/leads", json=ADA, headers=AUTH)
        assert answer.status_code == 202
        with pytest.raises(WarehouseBusy):
            mover.land_pending()
        release(holder)
    assert mover.land_pending() == 1
    assert landed(settings) == [("ada@analytical-engines.io", "Ada", "AE", "api")]


async def test_each_request_is_logged_without_values_or_the_token(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="enrich_pipeline.intake.access"):
        await client.post("/v1/leads?ref=ada@analytical-engines.io", json=ADA, headers=AUTH)
        await client.post("/v1/leads", json=ADA)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name.endswith(".access")]
    assert [(line["method"], line["path"], line["status"]) for line in lines] == [
        ("POST", "/v1/leads", 202),
        ("POST", "/v1/leads", 401),
    ]
    logged = caplog.text
    assert "analytical-engines" not in logged and "Ada" not in logged and TOKEN not in logged
