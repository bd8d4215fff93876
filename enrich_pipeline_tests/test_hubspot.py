import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import pytest
import respx

from enrich_pipeline.destinations.hubspot import (
    TOKEN_SETTING,
    HubSpotAuthError,
    HubSpotClient,
    UpsertOutcome,
)
from enrich_pipeline_tests.helpers import FakeTime

BASE = "https://hubspot.test"
PATH = "/crm/v3/objects/contacts/batch/upsert"
TOKEN = "pat-na1-0123abcd-secret-token"


def contacts(count: int) -> list[dict[str, str | None]]:
    return [
        {"email": f"p{i}@acme.com", "firstname": f"P{i}", "phone": "", "city": None}
        for i in range(count)
    ]


def inputs_of(request: httpx.Request) -> list[dict[str, Any]]:
    inputs: list[dict[str, Any]] = json.loads(request.content)["inputs"]
    return inputs


def result(email: str, *, new: bool = True, hubspot_id: str | None = None) -> dict[str, Any]:
    return {
        "id": hubspot_id or f"id-{email.lower()}",
        "new": new,
        "properties": {"email": email.lower(), "hs_object_id": "1"},
    }


def echo(request: httpx.Request) -> httpx.Response:
    """HubSpot writing every input, answering in reverse order to show order is not relied on."""
    results = [result(item["id"]) for item in reversed(inputs_of(request))]
    return httpx.Response(200, json={"status": "COMPLETE", "results": results})


def mock_router() -> respx.MockRouter:
    return respx.MockRouter(base_url=BASE, assert_all_called=False)


def timed(router: respx.MockRouter, fake: FakeTime, *first: httpx.Response) -> list[float]:
    """Upserts answered with ``first`` in turn, then echoed; returns the list of their starts."""
    starts: list[float] = []
    answers = iter(first)

    def answer(request: httpx.Request) -> httpx.Response:
        starts.append(fake.now)
        return next(answers, None) or echo(request)

    router.post(PATH).mock(side_effect=answer)
    return starts


def client(router: respx.MockRouter, fake: FakeTime, **options: Any) -> HubSpotClient:
    return HubSpotClient(
        token=TOKEN,
        base_url=BASE,
        transport=httpx.MockTransport(router.async_handler),
        sleep=fake.sleep,
        clock=fake.clock,
        **options,
    )


def upsert(
    router: respx.MockRouter,
    records: Sequence[Mapping[str, str | None]],
    fake: FakeTime | None = None,
    **options: Any,
) -> tuple[list[UpsertOutcome], FakeTime]:
    fake = fake or FakeTime()

    async def go() -> list[UpsertOutcome]:
        async with client(router, fake, **options) as hubspot:
            return await hubspot.upsert_contacts(records)

    return asyncio.run(go()), fake


def by_email(outcomes: list[UpsertOutcome]) -> dict[str, UpsertOutcome]:
    return {outcome.email: outcome for outcome in outcomes}


# --- batching and answers ------------------------------------------------------------------------


def test_sends_batches_of_at_most_100_with_string_values_and_no_empty_ones() -> None:
    router = mock_router()
    route = router.post(PATH).mock(side_effect=echo)
    records = contacts(250)
    records[0]["numemployees"] = 250  # type: ignore[assignment]  # a number slipping through

    outcomes, _ = upsert(router, records)

    requests = [call.request for call in route.calls]
    assert [len(inputs_of(request)) for request in requests] == [100, 100, 50]
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in requests)
    sent = [item for request in requests for item in inputs_of(request)]
    assert [item["id"] for item in sent] == [f"p{i}@acme.com" for i in range(250)]
    assert all(item["idProperty"] == "email" for item in sent)
    assert sent[0]["properties"] == {
        "email": "p0@acme.com",
        "firstname": "P0",
        "numemployees": "250",
    }
    assert all(
        isinstance(value, str) and value for item in sent for value in item["properties"].values()
    )
    assert [outcome.email for outcome in outcomes] == [item["id"] for item in sent]
    assert {outcome.status for outcome in outcomes} == {"created"}


def test_new_flag_decides_created_or_updated_matched_by_email_whatever_the_order_or_case() -> None:
    router = mock_router()
    answer = {
        "status": "COMPLETE",
        "results": [
            result("old@acme.com", new=False, hubspot_id="7"),
            result("new@acme.com", new=True, hubspot_id="8"),
        ],
    }
    router.post(PATH).respond(200, json=answer)

    outcomes, _ = upsert(router, [{"email": "New@Acme.com"}, {"email": "old@acme.com"}])

    assert outcomes == [
        UpsertOutcome("New@Acme.com", "created", "8", None),
        UpsertOutcome("old@acme.com", "updated", "7", None),
    ]


INVALID = "Property values were not valid: INVALID_EMAIL"
CONFLICT = "Contact already exists"


def batch_error(message: str, category: str, **names: Any) -> dict[str, Any]:
    return {"status": "error", "category": category, "message": message, **names}


@pytest.mark.parametrize(
    "names_b, names_d",
    [
        ({"context": {"ids": ["b@acme.com"]}}, {"context": {"ids": ["d@acme.com"]}}),
        ({"context": {"email": ["B@ACME.COM"]}}, {"context": {"email": ["d@acme.com"]}}),
        ({"id": "b@acme.com", "context": {}}, {"id": "d@acme.com"}),
    ],
    ids=["context-ids", "context-email", "error-id"],
)
def test_207_fails_each_rejected_record_with_its_own_error(
    names_b: dict[str, Any], names_d: dict[str, Any]
) -> None:
    router = mock_router()
    answer = {
        "status": "COMPLETE",
        "results": [result("c@acme.com", new=False), result("a@acme.com")],
        "numErrors": 2,
        "errors": [
            batch_error(CONFLICT, "CONFLICT", **names_d),
            batch_error(INVALID, "VALIDATION_ERROR", **names_b),
        ],
    }
    router.post(PATH).respond(207, json=answer)
    emails = ("a@acme.com", "b@acme.com", "c@acme.com", "d@acme.com")

    outcomes = by_email(upsert(router, [{"email": e} for e in emails])[0])

    assert outcomes["a@acme.com"].status == "created"
    assert outcomes["c@acme.com"].status == "updated"
    assert outcomes["b@acme.com"] == UpsertOutcome(
        "b@acme.com", "failed", None, f"VALIDATION_ERROR: {INVALID}"
    )
    assert outcomes["d@acme.com"] == UpsertOutcome(
        "d@acme.com", "failed", None, f"CONFLICT: {CONFLICT}"
    )


def test_207_error_naming_no_record_fails_the_records_missing_from_the_results() -> None:
    router = mock_router()
    answer = {
        "status": "COMPLETE",
        "results": [result("a@acme.com")],
        "numErrors": 1,
        "errors": [batch_error(INVALID, "VALIDATION_ERROR", context={"propertyName": ["email"]})],
    }
    router.post(PATH).respond(207, json=answer)

    outcomes = by_email(upsert(router, [{"email": "a@acme.com"}, {"email": "b@acme.com"}])[0])

    assert outcomes["a@acme.com"].status == "created"
    assert outcomes["b@acme.com"].error == f"VALIDATION_ERROR: {INVALID}"


def test_record_missing_from_a_200_answer_is_failed_so_it_is_sent_again() -> None:
    router = mock_router()
    router.post(PATH).respond(200, json={"status": "COMPLETE", "results": [result("a@acme.com")]})

    outcomes = by_email(upsert(router, [{"email": "a@acme.com"}, {"email": "b@acme.com"}])[0])

    assert outcomes["a@acme.com"].status == "created"
    assert outcomes["b@acme.com"].status == "failed"
    assert "missing from HubSpot's answer" in (outcomes["b@acme.com"].error or "")


def test_400_fails_that_batch_with_hubspots_message_and_later_batches_still_go() -> None:
    router = mock_router()
    rejected = httpx.Response(
        400, json={"status": "error", "category": "VALIDATION_ERROR", "message": "bad property"}
    )
    route = router.post(PATH).mock(side_effect=[rejected, echo])

    outcomes, _ = upsert(router, contacts(150))

    assert route.call_count == 2
    assert {o.error for o in outcomes[:100]} == {"HTTP 400: VALIDATION_ERROR: bad property"}
    assert {o.status for o in outcomes[100:]} == {"created"}


# --- rate limit, retries, auth -------------------------------------------------------------------


def test_429_waits_the_retry_after_then_succeeds() -> None:
    router = mock_router()
    route = router.post(PATH).mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "7"}), echo]
    )

    outcomes, fake = upsert(router, contacts(3))

    assert route.call_count == 2
    assert {o.status for o in outcomes} == {"created"}
    assert len(fake.sleeps) == 1 and fake.sleeps[0] >= 7


def test_429_without_retry_after_backs_off_and_retries_count_against_the_window() -> None:
    router, fake = mock_router(), FakeTime()
    limited = httpx.Response(429, json={"policyName": "TEN_SECONDLY_ROLLING"})
    starts = timed(router, fake, limited)

    outcomes, _ = upsert(router, contacts(2), fake, requests_per_10s=1)

    assert {o.status for o in outcomes} == {"created"}
    assert len(starts) == 2 and starts[1] - starts[0] >= 10


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_stops_at_once_naming_the_setting_never_the_token(status: int) -> None:
    router = mock_router()
    route = router.post(PATH).respond(
        status, json={"status": "error", "message": f"The token {TOKEN} is not valid"}
    )

    with pytest.raises(HubSpotAuthError) as raised:
        upsert(router, contacts(250))

    assert route.call_count == 1
    assert TOKEN_SETTING in str(raised.value)
    assert TOKEN not in str(raised.value)
    assert raised.value.status_code == status


def test_5xx_exhausted_fails_the_batch_and_leaves_the_rest_unsent() -> None:
    router = mock_router()
    route = router.post(PATH).respond(503, json={"message": "Service Unavailable"})

    outcomes, fake = upsert(router, contacts(150), max_attempts=3)

    assert route.call_count == 3
    assert len(fake.sleeps) == 2
    assert len(outcomes) == 150 and {o.status for o in outcomes} == {"failed"}
    assert {o.error for o in outcomes[:100]} == {"HTTP 503: Service Unavailable"}
    assert all("not sent" in (o.error or "") for o in outcomes[100:])


def test_timeouts_exhausted_fail_the_batch_with_the_error() -> None:
    router = mock_router()
    route = router.post(PATH).mock(side_effect=httpx.ConnectTimeout("timed out"))

    outcomes, _ = upsert(router, contacts(2), max_attempts=2)

    assert route.call_count == 2
    assert {o.error for o in outcomes} == {"ConnectTimeout talking to HubSpot"}


def test_no_more_than_the_allowed_requests_start_in_any_10_s() -> None:
    router, fake = mock_router(), FakeTime()
    starts = timed(router, fake)

    outcomes, _ = upsert(router, contacts(500), fake, requests_per_10s=2)

    assert len(starts) == 5 and len(outcomes) == 500
    assert all(later - earlier >= 10 for earlier, later in zip(starts, starts[2:], strict=False))
    # Paced, not stalled: two requests per window, the fifth at the start of the third window.
    assert starts[-1] - starts[0] == 20


def test_calls_through_one_client_share_its_window_and_its_counts() -> None:
    router, fake = mock_router(), FakeTime()
    starts = timed(router, fake, httpx.Response(429))

    async def go() -> HubSpotClient:
        async with client(router, fake, requests_per_10s=2) as hubspot:
            await hubspot.upsert_contacts(contacts(1))
            await hubspot.upsert_contacts(contacts(1))
        return hubspot

    stats = asyncio.run(go()).stats

    # A 429 and its retry, then the second call: it waits for the window the first one filled.
    assert len(starts) == 3 and starts[2] - starts[0] >= 10
    assert (stats.requests, stats.rate_limited, stats.retries) == (3, 1, 1)
    assert stats.responses_by_status == {429: 1, 200: 2}


# --- inputs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "records",
    [[{"firstname": "Jane", "email": ""}], [{"email": "a@acme.com"}, {"email": "A@acme.com"}]],
    ids=["no-email", "same-email-twice"],
)
def test_records_hubspot_cannot_upsert_are_refused_before_any_request(
    records: list[dict[str, str]],
) -> None:
    router = mock_router()
    route = router.post(PATH).mock(side_effect=echo)

    with pytest.raises(ValueError, match="email"):
        upsert(router, records)

    assert route.call_count == 0


# --- reading contacts back -----------------------------------------------------------------------

READ_PATH = "/crm/v3/objects/contacts/batch/read"


def read(
    router: respx.MockRouter, ids: Sequence[str], properties: Sequence[str] = ("email",)
) -> dict[str, dict[str, str | None]]:
    async def go() -> dict[str, dict[str, str | None]]:
        async with client(router, FakeTime(), max_attempts=2) as hubspot:
            return await hubspot.read_contacts(ids, properties)

    return asyncio.run(go())


def test_read_contacts_asks_100_ids_per_call_and_leaves_out_the_ids_hubspot_lacks() -> None:
    router = mock_router()

    def answer(request: httpx.Request) -> httpx.Response:
        asked = [item["id"] for item in inputs_of(request)]
        # Odd ids no longer exist: a 207 naming them, as HubSpot does for a partial batch read.
        results = [
            {"id": i, "properties": {"email": f"p{i}@acme.com", "firstname": None}}
            for i in asked
            if int(i) % 2 == 0
        ]
        return httpx.Response(207, json={"status": "COMPLETE", "results": results})

    route = router.post(READ_PATH).mock(side_effect=answer)

    found = read(router, [str(i) for i in range(250)] + ["0"], ["email", "firstname"])

    bodies = [json.loads(call.request.content) for call in route.calls]
    assert [len(body["inputs"]) for body in bodies] == [100, 100, 50]
    assert {tuple(body["properties"]) for body in bodies} == {("email", "firstname")}
    assert set(found) == {str(i) for i in range(0, 250, 2)}
    assert found["4"] == {"email": "p4@acme.com", "firstname": None}


def test_read_contacts_raises_once_retries_are_used_up_and_names_the_read_scope() -> None:
    router = mock_router()
    route = router.post(READ_PATH).respond(503, json={"message": "Service Unavailable"})
    with pytest.raises(httpx.HTTPStatusError):
        read(router, ["1"])
    assert route.call_count == 2

    router = mock_router()
    router.post(READ_PATH).respond(403, json={"message": f"token {TOKEN} lacks scopes"})
    with pytest.raises(HubSpotAuthError) as raised:
        read(router, ["1"])
    assert "crm.objects.contacts.read" in str(raised.value)
    assert TOKEN_SETTING in str(raised.value) and TOKEN not in str(raised.value)


def test_pacing_follows_hubspots_rate_limit_headers_and_delivers_everything() -> None:
    # A portal allowing 2 requests per 10 s, which the client is not told: it learns it from
    # the answers' headers, and waits when Remaining reaches 0 instead of collecting 429s.
    router, fake = mock_router(), FakeTime()
    accepted: list[float] = []
    refused = 0

    def portal(request: httpx.Request) -> httpx.Response:
        nonlocal refused
        accepted[:] = [at for at in accepted if at > fake.now - 10]
        limits = {
            "X-HubSpot-RateLimit-Max": "2",
            "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
        }
        if len(accepted) >= 2:
            refused += 1
            return httpx.Response(429, headers=limits | {"X-HubSpot-RateLimit-Remaining": "0"})
        accepted.append(fake.now)
        answer = echo(request)
        answer.headers.update(limits | {"X-HubSpot-RateLimit-Remaining": str(2 - len(accepted))})
        return answer

    router.post(PATH).mock(side_effect=portal)

    outcomes, _ = upsert(router, contacts(600), fake, max_attempts=3)

    assert len(outcomes) == 600 and {o.status for o in outcomes} == {"created"}
    assert refused == 0
