"""``HubSpotClient.gdpr_delete``: HubSpot's GDPR delete by email, one request per email through
the client's pacing, retries and stats; against respx mocks and against the HubSpot stand-in."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
import respx

from enrich_pipeline.destinations.hubspot import (
    TOKEN_SETTING,
    EraseOutcome,
    HubSpotAuthError,
    HubSpotClient,
)
from enrich_pipeline.sandbox.hubspot import create_hubspot_sandbox
from enrich_pipeline_tests.helpers import FakeTime

BASE = "https://hubspot.test"
PATH = "/crm/v3/objects/contacts/gdpr-delete"
TOKEN = "pat-na1-0123abcd-secret-token"
JANE = "jane@acme.com"
JOHN = "john@acme.com"


def mock_router() -> respx.MockRouter:
    return respx.MockRouter(base_url=BASE, assert_all_called=False)


def erase(
    router: respx.MockRouter,
    emails: Sequence[str],
    fake: FakeTime | None = None,
    **options: Any,
) -> tuple[list[EraseOutcome], FakeTime, HubSpotClient]:
    fake = fake or FakeTime()

    async def go() -> tuple[list[EraseOutcome], HubSpotClient]:
        async with HubSpotClient(
            token=TOKEN,
            base_url=BASE,
            transport=httpx.MockTransport(router.async_handler),
            sleep=fake.sleep,
            clock=fake.clock,
            **options,
        ) as hubspot:
            return await hubspot.gdpr_delete(emails), hubspot

    outcomes, hubspot = asyncio.run(go())
    return outcomes, fake, hubspot


def erased_by_email(request: httpx.Request) -> httpx.Response:
    """HubSpot holding only Jane."""
    return httpx.Response(204 if json.loads(request.content)["objectId"] == JANE else 404)


# --- respx: the wire format and the answers ------------------------------------------------------


def test_one_post_per_email_in_the_wire_format_with_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = mock_router()
    route = router.post(PATH).mock(side_effect=erased_by_email)

    with caplog.at_level(logging.INFO, logger="enrich_pipeline.destinations.hubspot"):
        outcomes, _, hubspot = erase(router, [JANE, JOHN])

    requests = [call.request for call in route.calls]
    assert [(r.method, r.url.path) for r in requests] == [("POST", PATH)] * 2
    assert [json.loads(r.content) for r in requests] == [
        {"objectId": JANE, "idProperty": "email"},
        {"objectId": JOHN, "idProperty": "email"},
    ]
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in requests)
    assert all(r.headers["Content-Type"] == "application/json" for r in requests)
    assert outcomes == [
        EraseOutcome(JANE, "erased", None),
        EraseOutcome(JOHN, "not_found", None),
    ]
    assert (hubspot.stats.requests, hubspot.stats.retries) == (2, 0)
    # One summary line, counts only.
    [line] = [r.getMessage() for r in caplog.records if "GDPR" in r.getMessage()]
    assert "1 erased, 1 not found, 0 failed in 2 requests" in line
    assert "@" not in line


def test_no_emails_sends_nothing() -> None:
    router = mock_router()
    route = router.post(PATH).respond(204)

    outcomes, _, _ = erase(router, [])

    assert outcomes == [] and route.call_count == 0


def test_500_is_retried_then_204_is_erased() -> None:
    router = mock_router()
    route = router.post(PATH).mock(
        side_effect=[httpx.Response(500, json={"message": "internal error"}), httpx.Response(204)]
    )

    outcomes, fake, hubspot = erase(router, [JANE])

    assert route.call_count == 2
    assert outcomes == [EraseOutcome(JANE, "erased", None)]
    assert len(fake.sleeps) == 1
    assert (hubspot.stats.requests, hubspot.stats.retries) == (2, 1)


def test_429_waits_the_retry_after_then_erases() -> None:
    router = mock_router()
    limited = httpx.Response(
        429, headers={"Retry-After": "7"}, json={"policyName": "TEN_SECONDLY_ROLLING"}
    )
    route = router.post(PATH).mock(side_effect=[limited, httpx.Response(204)])

    outcomes, fake, hubspot = erase(router, [JANE])

    assert route.call_count == 2
    assert outcomes == [EraseOutcome(JANE, "erased", None)]
    assert len(fake.sleeps) == 1 and fake.sleeps[0] >= 7
    assert hubspot.stats.rate_limited == 1


def test_requests_are_paced_by_the_window() -> None:
    router, fake = mock_router(), FakeTime()
    starts: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        starts.append(fake.now)
        return httpx.Response(204)

    router.post(PATH).mock(side_effect=answer)

    outcomes, _, _ = erase(router, [f"p{i}@acme.com" for i in range(3)], fake, requests_per_10s=2)

    assert {o.status for o in outcomes} == {"erased"}
    assert len(starts) == 3 and starts[2] - starts[0] >= 10


def test_a_refusal_fails_that_email_with_hubspots_redacted_message_and_the_rest_still_go() -> None:
    router = mock_router()
    refused = httpx.Response(
        400,
        json={"category": "VALIDATION_ERROR", "message": f"objectId invalid (token {TOKEN})"},
    )
    route = router.post(PATH).mock(side_effect=[refused, httpx.Response(204)])

    outcomes, _, _ = erase(router, ["not-an-email", JOHN])

    assert route.call_count == 2
    assert outcomes[0].status == "failed"
    assert outcomes[0].error is not None and TOKEN not in outcomes[0].error
    assert outcomes[0].error.startswith("HTTP 400: VALIDATION_ERROR: objectId invalid")
    assert outcomes[1] == EraseOutcome(JOHN, "erased", None)


def test_5xx_exhausted_fails_that_email_and_leaves_the_rest_unsent_naming_no_one() -> None:
    router = mock_router()
    route = router.post(PATH).respond(503, json={"message": f"Cannot erase {JANE} right now"})

    outcomes, _, _ = erase(router, [JANE, JOHN, "jim@acme.com"], max_attempts=3)

    assert route.call_count == 3
    assert [(o.email, o.status) for o in outcomes] == [
        (JANE, "failed"),
        (JOHN, "failed"),
        ("jim@acme.com", "failed"),
    ]
    assert outcomes[0].error == "HTTP 503: Cannot erase j***@acme.com right now"
    for later in outcomes[1:]:
        assert later.error == "not sent: an earlier erase still failed after 3 attempts (HTTP 503)"


def test_timeouts_exhausted_fail_with_the_error() -> None:
    router = mock_router()
    route = router.post(PATH).mock(side_effect=httpx.ConnectTimeout("timed out"))

    outcomes, _, _ = erase(router, [JANE], max_attempts=2)

    assert route.call_count == 2
    assert outcomes == [EraseOutcome(JANE, "failed", "ConnectTimeout talking to HubSpot")]


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_raises_at_once_naming_the_setting_and_scope_never_the_token(
    status: int,
) -> None:
    router = mock_router()
    route = router.post(PATH).respond(
        status, json={"status": "error", "message": f"The token {TOKEN} is not valid"}
    )

    with pytest.raises(HubSpotAuthError) as raised:
        erase(router, [JANE, JOHN])

    assert route.call_count == 1
    assert raised.value.status_code == status
    assert TOKEN not in str(raised.value)
    assert TOKEN_SETTING in str(raised.value)
    if status == 403:
        assert "crm.objects.contacts.write" in str(raised.value)


# --- against the HubSpot stand-in ----------------------------------------------------------------


@pytest.mark.anyio
async def test_against_the_stand_in_an_erased_contact_is_gone_and_not_re_created() -> None:
    app = create_hubspot_sandbox(token=TOKEN)
    ada = {"email": "Ada@Analytical-Engines.io", "firstname": "Ada"}
    grace = {"email": "grace@navy.mil", "firstname": "Grace"}
    async with HubSpotClient(
        token=TOKEN, base_url=BASE, transport=httpx.ASGITransport(app=app), max_attempts=1
    ) as hubspot:
        [created, _] = await hubspot.upsert_contacts([ada, grace])
        outcomes = await hubspot.gdpr_delete(["ada@analytical-engines.io", "nobody@acme.com"])
        read = await hubspot.read_contacts([str(created.hubspot_id)], ["email"])
        again = await hubspot.upsert_contacts([ada, {**grace, "firstname": "Grace B."}])

    assert outcomes == [
        EraseOutcome("ada@analytical-engines.io", "erased", None),
        EraseOutcome("nobody@acme.com", "not_found", None),
    ]
    assert read == {}
    # The stand-in, like HubSpot, blocks the erased email: the upsert fails for it alone.
    assert [(o.email, o.status) for o in again] == [
        ("Ada@Analytical-Engines.io", "failed"),
        ("grace@navy.mil", "updated"),
    ]
    assert again[0].error is not None and "grace" not in again[0].error
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
        contacts = (await http.get("/_sandbox/contacts")).json()["contacts"]
    assert list(contacts) == ["grace@navy.mil"]
