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
    UpsertOutcome,
    record_fingerprint,
    upsert_contacts,
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


def upsert(
    router: respx.MockRouter, records: Sequence[Mapping[str, str | None]], **options: Any
) -> tuple[list[UpsertOutcome], FakeTime]:
    fake = FakeTime()
    outcomes = asyncio.run(
        upsert_contacts(
            records,
            token=TOKEN,
            base_url=BASE,
            transport=httpx.MockTransport(router.async_handler),
            sleep=fake.sleep,
            clock=fake.clock,
            **options,
        )
    )
    return outcomes, fake


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
    router = mock_router()
    fake = FakeTime()
    starts: list[float] = []
    answers = iter([httpx.Response(429, json={"policyName": "TEN_SECONDLY_ROLLING"})])

    def answer(request: httpx.Request) -> httpx.Response:
        starts.append(fake.now)
        return next(answers, None) or echo(request)

    router.post(PATH).mock(side_effect=answer)
    outcomes = asyncio.run(
        upsert_contacts(
            contacts(2),
            token=TOKEN,
            base_url=BASE,
            transport=httpx.MockTransport(router.async_handler),
            sleep=fake.sleep,
            clock=fake.clock,
            requests_per_10s=1,
        )
    )

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
    router = mock_router()
    starts: list[float] = []
    fake = FakeTime()

    def answer(request: httpx.Request) -> httpx.Response:
        starts.append(fake.now)
        return echo(request)

    router.post(PATH).mock(side_effect=answer)
    outcomes = asyncio.run(
        upsert_contacts(
            contacts(500),
            token=TOKEN,
            base_url=BASE,
            transport=httpx.MockTransport(router.async_handler),
            sleep=fake.sleep,
            clock=fake.clock,
            requests_per_10s=2,
        )
    )

    assert len(starts) == 5 and len(outcomes) == 500
    assert all(later - earlier >= 10 for earlier, later in zip(starts, starts[2:], strict=False))
    # Paced, not stalled: two requests per window, the fifth at the start of the third window.
    assert starts[-1] - starts[0] == 20


# --- inputs and change tracking ------------------------------------------------------------------


def test_rerun_sends_only_changed_or_failed_records_and_nothing_when_all_is_sent() -> None:
    """The caller's loop: remember fingerprints of what HubSpot took, send what differs."""
    records: list[dict[str, str | None]] = [
        {"email": "a@acme.com", "firstname": "Ann"},
        {"email": "b@acme.com", "firstname": "Bob"},
    ]
    rejected_b = {
        "status": "COMPLETE",
        "results": [result("a@acme.com")],
        "numErrors": 1,
        "errors": [{"status": "error", "message": "busy", "context": {"ids": ["b@acme.com"]}}],
    }
    router = mock_router()
    route = router.post(PATH).mock(side_effect=[httpx.Response(207, json=rejected_b), echo])
    by_email_record = {str(r["email"]): r for r in records}
    last_sent: dict[str, str] = {}

    def run() -> None:
        changed = [r for r in records if last_sent.get(str(r["email"])) != record_fingerprint(r)]
        for outcome in upsert(router, changed)[0]:
            if outcome.status != "failed":
                last_sent[outcome.email] = record_fingerprint(by_email_record[outcome.email])

    run()
    run()
    assert [[i["id"] for i in inputs_of(c.request)] for c in route.calls] == [
        ["a@acme.com", "b@acme.com"],
        ["b@acme.com"],
    ]

    run()
    assert route.call_count == 2


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


def test_fingerprint_ignores_order_and_empty_values_but_not_changes() -> None:
    record = {"email": "jane@acme.com", "firstname": "Jane", "city": "Lyon"}
    same = {"city": "Lyon", "phone": "", "firstname": "Jane", "email": "jane@acme.com", "x": None}

    assert record_fingerprint(record) == record_fingerprint(same)
    assert record_fingerprint(record) != record_fingerprint({**record, "city": "Paris"})
    assert record_fingerprint(record) != record_fingerprint({**record, "jobtitle": "CTO"})
