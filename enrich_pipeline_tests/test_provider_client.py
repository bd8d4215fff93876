import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import respx

from enrich_pipeline.field_profiles import DEFAULT_PROFILE, field_profile
from enrich_pipeline.provider.client import EnrichmentClient
from enrich_pipeline.provider.errors import CreditsExhausted, ProviderAuthError, ProviderError
from enrich_pipeline.provider.http import build_http_client
from enrich_pipeline.provider.models import (
    CallStats,
    CompanyQuery,
    EnrichmentResult,
    Kind,
    Outcome,
    PersonQuery,
    Query,
)
from enrich_pipeline.provider.transports import RETRY_AFTER_JITTER_S
from enrich_pipeline_tests.helpers import FakeTime

BASE = "https://provider.test"
KEY = "dl-secret-key-1234567890"


@dataclass
class Run:
    results: list[EnrichmentResult]
    error: ProviderError | None
    stats: CallStats
    time: FakeTime
    by_key: dict[str, EnrichmentResult] = field(init=False)

    def __post_init__(self) -> None:
        self.by_key = {result.key: result for result in self.results}


# The default field profile's lists, as the pipeline sends them.
_PROFILE = field_profile(DEFAULT_PROFILE)
INCLUDE_FIELDS: dict[Kind, str] = {
    "person": _PROFILE.person_include_fields,
    "company": _PROFILE.company_include_fields,
}


def run_enrich(
    router: respx.MockRouter,
    queries: Sequence[Query],
    kind: Kind = "person",
    *,
    max_attempts: int = 3,
    **client_options: Any,
) -> Run:
    fake, stats = FakeTime(), CallStats()
    client_options.setdefault("use_bulk", False)
    client_options.setdefault("include_fields", INCLUDE_FIELDS)
    results: list[EnrichmentResult] = []

    async def go() -> ProviderError | None:
        async with build_http_client(
            base_url=BASE,
            api_key=KEY,
            stats=stats,
            transport=httpx.MockTransport(router.async_handler),
            max_attempts=max_attempts,
            sleep=fake.sleep,
            clock=fake.clock,
        ) as http:
            client = EnrichmentClient(http, stats=stats, **client_options)
            try:
                async for result in client.enrich(kind, queries):
                    results.append(result)
            except ProviderError as exc:
                return exc
        return None

    error = asyncio.run(go())
    return Run(results, error, stats, fake)


def people(count: int) -> list[PersonQuery]:
    return [PersonQuery(key=f"k{i}", email=f"p{i}@acme.com") for i in range(count)]


def person_match(email: str) -> dict[str, Any]:
    return {
        "matches": [
            {
                "person": {"full_name": "Jane Doe", "work_email": email},
                "match_metadata": {"matched_on": ["email"], "match_type": "exact"},
            }
        ],
        "total": 1,
    }


def by_email(answers: dict[str, httpx.Response]) -> Any:
    """respx side effect answering each single call according to its email."""

    def answer(request: httpx.Request) -> httpx.Response:
        return answers[json.loads(request.content)["email"]]

    return answer


def mock_router() -> respx.MockRouter:
    return respx.MockRouter(base_url=BASE, assert_all_called=False)


# --- single calls --------------------------------------------------------------------------------


def test_match_returns_record_and_sends_identifiers_fields_and_key() -> None:
    router = mock_router()
    route = router.post("/person/enrich").respond(200, json=person_match("jane@acme.com"))
    run = run_enrich(router, [PersonQuery(key="c1", email="jane@acme.com", company="Acme")])
    assert run.results == [
        EnrichmentResult(
            "c1",
            Outcome.MATCHED,
            record={"full_name": "Jane Doe", "work_email": "jane@acme.com"},
            match_metadata={"matched_on": ["email"], "match_type": "exact"},
        )
    ]
    request = route.calls.last.request
    assert json.loads(request.content) == {
        "email": "jane@acme.com",
        "company": "Acme",
        "include_fields": INCLUDE_FIELDS["person"],
    }
    assert request.headers["API-Key"] == KEY
    assert request.headers["User-Agent"] == "enrich-pipeline/0.1"


def test_company_match_reads_the_company_record() -> None:
    router = mock_router()
    route = router.post("/company/enrich").respond(
        200, json={"matches": [{"company": {"domain": "acme.com"}}], "total": 1}
    )
    run = run_enrich(router, [CompanyQuery(key="acme", domain="acme.com")], kind="company")
    assert run.results == [EnrichmentResult("acme", Outcome.MATCHED, record={"domain": "acme.com"})]
    assert json.loads(route.calls.last.request.content) == {
        "domain": "acme.com",
        "include_fields": INCLUDE_FIELDS["company"],
    }


def test_custom_include_fields_are_sent_as_a_comma_separated_string() -> None:
    router = mock_router()
    route = router.post("/person/enrich").respond(404)
    run_enrich(router, people(1), include_fields={"person": "full_name,job_title"})
    assert json.loads(route.calls.last.request.content)["include_fields"] == "full_name,job_title"


def test_404_is_no_match() -> None:
    router = mock_router()
    router.post("/person/enrich").respond(404, json={"error": "not_found", "message": "No match"})
    run = run_enrich(router, people(1))
    assert run.results == [EnrichmentResult("k0", Outcome.NO_MATCH)]
    assert run.error is None


@pytest.mark.parametrize("status", [400, 422])
def test_invalid_record_is_an_error_with_the_api_message_and_the_run_goes_on(status: int) -> None:
    router = mock_router()
    router.post("/person/enrich").mock(
        side_effect=by_email(
            {
                "p0@acme.com": httpx.Response(200, json=person_match("p0@acme.com")),
                "p1@acme.com": httpx.Response(
                    status, json={"error": "invalid_request", "message": "email is not valid"}
                ),
                "p2@acme.com": httpx.Response(404),
            }
        )
    )
    run = run_enrich(router, people(3))
    assert run.error is None
    assert run.by_key["k0"].status is Outcome.MATCHED
    assert run.by_key["k1"].status is Outcome.ERROR
    assert run.by_key["k1"].error is not None
    assert "email is not valid" in run.by_key["k1"].error
    assert run.by_key["k2"].status is Outcome.NO_MATCH
    assert run.stats.requests == 3


def test_429_then_200_honours_retry_after() -> None:
    router = mock_router()
    route = router.post("/person/enrich").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "12"}),
            httpx.Response(200, json=person_match("p0@acme.com")),
        ]
    )
    run = run_enrich(router, people(1))
    assert run.results[0].status is Outcome.MATCHED
    assert route.call_count == 2
    assert len(run.time.sleeps) == 1
    assert 12 <= run.time.sleeps[0] <= 12 + RETRY_AFTER_JITTER_S
    assert run.stats.rate_limited == 1


def test_5xx_is_retried_then_succeeds() -> None:
    router = mock_router()
    route = router.post("/person/enrich").mock(
        side_effect=[httpx.Response(502), httpx.Response(200, json=person_match("p0@acme.com"))]
    )
    run = run_enrich(router, people(1))
    assert run.results[0].status is Outcome.MATCHED
    assert route.call_count == 2
    assert run.stats.retries == 1


def test_5xx_exhausted_is_an_error_naming_status_and_request_id() -> None:
    router = mock_router()
    route = router.post("/person/enrich").respond(
        503, json={"error": "unavailable"}, headers={"Request-ID": "req-77"}
    )
    run = run_enrich(router, people(1), max_attempts=4)
    assert route.call_count == 4
    (result,) = run.results
    assert result.status is Outcome.ERROR
    assert result.error is not None
    assert "503" in result.error
    assert "req-77" in result.error


def test_timeout_is_retried_and_timeouts_exhausted_are_an_error() -> None:
    attempts: dict[str, int] = {}

    def flaky(request: httpx.Request) -> httpx.Response:
        email = json.loads(request.content)["email"]
        attempts[email] = attempts.get(email, 0) + 1
        if email == "p1@acme.com" or attempts[email] == 1:
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(200, json=person_match(email))

    router = mock_router()
    router.post("/person/enrich").mock(side_effect=flaky)
    run = run_enrich(router, people(2), max_attempts=3)
    assert run.by_key["k0"].status is Outcome.MATCHED
    assert run.by_key["k1"].status is Outcome.ERROR
    assert attempts == {"p0@acme.com": 2, "p1@acme.com": 3}


def test_401_raises_at_once_after_a_single_request() -> None:
    router = mock_router()
    route = router.post("/person/enrich").respond(
        401, json={"error": "unauthorized"}, headers={"Request-ID": "req-1"}
    )
    run = run_enrich(router, people(5), max_concurrency=1)
    assert isinstance(run.error, ProviderAuthError)
    assert route.call_count == 1
    assert run.results == []
    message = str(run.error)
    assert "DATA_LEGION_API_KEY" in message
    assert "missing or wrong" in message
    assert "req-1" in message


def test_403_raises_saying_the_key_is_not_allowed_on_the_endpoint() -> None:
    router = mock_router()
    route = router.post("/person/enrich").respond(403, json={"message": "plan excludes person"})
    run = run_enrich(router, people(3), max_concurrency=1)
    assert isinstance(run.error, ProviderAuthError)
    assert route.call_count == 1
    message = str(run.error)
    assert "not allowed on POST /person/enrich" in message
    assert "plan excludes person" in message


def test_402_stops_calling_and_keeps_what_finished() -> None:
    router = mock_router()
    route = router.post("/person/enrich").mock(
        side_effect=[
            httpx.Response(200, json=person_match("p0@acme.com")),
            httpx.Response(404),
            httpx.Response(
                402,
                json={
                    "error": "insufficient_credits",
                    "details": {"credits_required": 1, "credits_available": 0},
                },
            ),
        ]
    )
    run = run_enrich(router, people(6), max_concurrency=1)
    assert [result.status for result in run.results] == [Outcome.MATCHED, Outcome.NO_MATCH]
    assert isinstance(run.error, CreditsExhausted)
    assert route.call_count == 3
    assert (run.error.credits_required, run.error.credits_available) == (1, 0)
    assert "credits required 1, credits available 0" in str(run.error)
    assert "kept" in str(run.error)


def test_fatal_answer_lets_calls_in_flight_finish_and_yields_them() -> None:
    router = mock_router()

    async def answer(request: httpx.Request) -> httpx.Response:
        email = json.loads(request.content)["email"]
        # After the first call (alone), three go out; the first of them is answered 402 while
        # the other two are still out.
        if email != "p0@acme.com":
            for _ in range(2 if email == "p1@acme.com" else 10):
                await asyncio.sleep(0)
        if email == "p1@acme.com":
            return httpx.Response(402, json={"error": "insufficient_credits"})
        return httpx.Response(200, json=person_match(email))

    route = router.post("/person/enrich").mock(side_effect=answer)
    run = run_enrich(router, people(8), max_concurrency=3)
    assert isinstance(run.error, CreditsExhausted)
    assert route.call_count == 4
    assert sorted(run.by_key) == ["k0", "k2", "k3"]
    assert all(result.status is Outcome.MATCHED for result in run.results)


@pytest.mark.parametrize("use_bulk", [False, True])
def test_a_wrong_key_costs_one_request_whatever_the_concurrency(use_bulk: bool) -> None:
    router = mock_router()
    refused = [
        router.post(path).respond(401, json={"error": "unauthorized"})
        for path in ("/person/enrich", "/person/enrich/bulk")
    ]
    run = run_enrich(router, people(300), max_concurrency=32, use_bulk=use_bulk, bulk_size=10)
    assert isinstance(run.error, ProviderAuthError)
    assert sum(route.call_count for route in refused) == 1


def test_concurrency_bound_is_honoured() -> None:
    router = mock_router()
    in_flight = 0
    peak = 0

    async def answer(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        for _ in range(3):
            await asyncio.sleep(0)
        in_flight -= 1
        return httpx.Response(404)

    router.post("/person/enrich").mock(side_effect=answer)
    run = run_enrich(router, people(20), max_concurrency=4)
    assert len(run.results) == 20
    assert peak == 4


def test_progress_is_logged_about_every_tenth(caplog: pytest.LogCaptureFixture) -> None:
    router = mock_router()
    router.post("/person/enrich").respond(404)
    logger = logging.getLogger("test_provider_client.progress")
    with caplog.at_level(logging.INFO, logger=logger.name):
        run_enrich(router, people(20), logger=logger)
    lines = [record.getMessage() for record in caplog.records if record.name == logger.name]
    assert len(lines) == 10
    assert lines[-1] == "Enriching person: 20/20 done (0 matched, 20 no match, 0 errors)"


# --- bulk ---------------------------------------------------------------------------------------


def test_bulk_maps_answers_by_metadata_key_with_per_item_errors() -> None:
    router = mock_router()
    route = router.post("/person/enrich/bulk").respond(
        200,
        json={
            # Deliberately out of order: mapping is by the echoed key.
            "results": [
                {"matches": [], "total": 0, "error": None, "metadata": {"key": "k2"}},
                {**person_match("p0@acme.com"), "error": None, "metadata": {"key": "k0"}},
                {"matches": [], "total": 0, "error": "not_found", "metadata": {"key": "k3"}},
                {
                    "matches": [],
                    "total": 0,
                    "error": "invalid_email",
                    "metadata": {"key": "k1"},
                },
            ]
        },
    )
    run = run_enrich(router, people(5), use_bulk=True)
    assert route.call_count == 1
    assert run.by_key["k0"].status is Outcome.MATCHED
    assert run.by_key["k0"].record == {"full_name": "Jane Doe", "work_email": "p0@acme.com"}
    assert run.by_key["k1"] == EnrichmentResult("k1", Outcome.ERROR, error="invalid_email")
    assert run.by_key["k2"].status is Outcome.NO_MATCH
    assert run.by_key["k3"].status is Outcome.NO_MATCH
    assert run.by_key["k4"].status is Outcome.ERROR
    body = json.loads(route.calls.last.request.content)
    assert body["include_fields"] == INCLUDE_FIELDS["person"]
    assert body["items"][0] == {"email": "p0@acme.com", "metadata": {"key": "k0"}}


def test_bulk_answers_without_metadata_map_by_position() -> None:
    router = mock_router()
    router.post("/person/enrich/bulk").respond(
        200, json={"results": [{"matches": [], "total": 0}, person_match("p1@acme.com")]}
    )
    run = run_enrich(router, people(2), use_bulk=True)
    assert run.by_key["k0"].status is Outcome.NO_MATCH
    assert run.by_key["k1"].status is Outcome.MATCHED


def test_bulk_is_sent_in_chunks() -> None:
    router = mock_router()
    route = router.post("/person/enrich/bulk").respond(200, json={"results": []})
    run_enrich(router, people(5), use_bulk=True, bulk_size=2)
    sizes = sorted(len(json.loads(call.request.content)["items"]) for call in route.calls)
    assert sizes == [1, 2, 2]


def test_bulk_refused_falls_back_to_single_calls_for_good(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = mock_router()
    bulk = router.post("/person/enrich/bulk").respond(405)
    single = router.post("/person/enrich").respond(200, json=person_match("x@acme.com"))
    with caplog.at_level(logging.WARNING):
        run = run_enrich(router, people(5), use_bulk=True, bulk_size=2, max_concurrency=1)
    assert bulk.call_count == 1
    assert single.call_count == 5
    assert sorted(run.by_key) == ["k0", "k1", "k2", "k3", "k4"]
    assert all(result.status is Outcome.MATCHED for result in run.results)
    assert run.stats.bulk_fallbacks == 1
    assert len([r for r in caplog.records if "refused bulk" in r.getMessage()]) == 1


def test_bulk_call_failing_after_retries_marks_all_its_items_as_errors() -> None:
    router = mock_router()
    route = router.post("/person/enrich/bulk").respond(500, headers={"Request-ID": "req-5"})
    run = run_enrich(router, people(3), use_bulk=True, max_attempts=2)
    assert route.call_count == 2
    assert [result.status for result in run.results] == [Outcome.ERROR] * 3
    assert all("req-5" in (result.error or "") for result in run.results)
    assert run.error is None


@pytest.mark.parametrize(
    ("status", "error_type"), [(401, ProviderAuthError), (402, CreditsExhausted)]
)
def test_bulk_auth_and_credit_failures_stop_the_run(
    status: int, error_type: type[ProviderError]
) -> None:
    router = mock_router()
    route = router.post("/person/enrich/bulk").respond(status)
    single = router.post("/person/enrich").respond(404)
    run = run_enrich(router, people(5), use_bulk=True, bulk_size=2, max_concurrency=1)
    assert isinstance(run.error, error_type)
    assert route.call_count == 1
    assert single.call_count == 0
    assert run.results == []


# --- credit budget ------------------------------------------------------------------------------


def matching(credits_header: bool = True) -> Any:
    """respx side effect: every single call matches, saying so in Credits-Used unless told not."""

    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"Credits-Used": "1"} if credits_header else {}
        return httpx.Response(
            200, json=person_match(json.loads(request.content)["email"]), headers=headers
        )

    return answer


def test_a_credit_budget_ends_the_run_cleanly_without_overspending(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = mock_router()
    route = router.post("/person/enrich").mock(side_effect=matching())
    logger = logging.getLogger("test_provider_client.budget")
    with caplog.at_level(logging.INFO, logger=logger.name):
        run = run_enrich(router, people(10), max_credits=3, max_concurrency=4, logger=logger)
    assert run.error is None
    assert [result.status for result in run.results] == [Outcome.MATCHED] * 3
    # Four calls could be in flight, but a fourth could have cost a fourth credit.
    assert route.call_count == 3
    assert run.stats.credits_used == 3
    assert run.stats.budget_exhausted
    assert run.stats.deferred == 7
    assert any(
        "Credit budget reached (3 of 3 credits used)" in record.getMessage()
        and "7 person look-ups not attempted" in record.getMessage()
        for record in caplog.records
    )


def test_no_match_look_ups_are_free_so_the_budget_goes_further() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        email = json.loads(request.content)["email"]
        if int(email[1]) % 2:
            return httpx.Response(404, headers={"Credits-Used": "0"})
        return httpx.Response(200, json=person_match(email), headers={"Credits-Used": "1"})

    router = mock_router()
    router.post("/person/enrich").mock(side_effect=answer)
    run = run_enrich(router, people(10), max_credits=3, max_concurrency=1)
    assert sorted(run.by_key) == ["k0", "k1", "k2", "k3", "k4"]
    assert (run.stats.credits_used, run.stats.deferred) == (3, 5)


def test_without_a_credits_header_each_match_counts_one_credit() -> None:
    router = mock_router()
    route = router.post("/person/enrich").mock(side_effect=matching(credits_header=False))
    run = run_enrich(router, people(10), max_credits=2, max_concurrency=1)
    assert route.call_count == 2
    assert (run.stats.credits_used, run.stats.deferred) == (2, 8)


def test_a_bulk_chunk_is_cut_to_the_budget_left() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        items = json.loads(request.content)["items"]
        results = [
            {**person_match(item["email"]), "error": None, "metadata": item["metadata"]}
            for item in items
        ]
        return httpx.Response(
            200, json={"results": results}, headers={"Credits-Used": str(len(items))}
        )

    router = mock_router()
    route = router.post("/person/enrich/bulk").mock(side_effect=answer)
    run = run_enrich(router, people(10), use_bulk=True, bulk_size=5, max_credits=3)
    assert [len(json.loads(call.request.content)["items"]) for call in route.calls] == [3]
    assert sorted(run.by_key) == ["k0", "k1", "k2"]
    assert (run.stats.credits_used, run.stats.deferred) == (3, 7)


def test_a_budget_not_reached_defers_nothing() -> None:
    router = mock_router()
    router.post("/person/enrich").mock(side_effect=matching())
    run = run_enrich(router, people(5), max_credits=100)
    assert len(run.results) == 5
    assert not run.stats.budget_exhausted
    assert run.stats.deferred == 0


# --- secrets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, {"error": "unauthorized", "message": f"unknown key {KEY}"}),
        (402, {"error": "insufficient_credits", "details": {"credits_required": 3}}),
        (503, {"error": "unavailable", "message": f"backend down for {KEY}"}),
    ],
)
@pytest.mark.parametrize("use_bulk", [False, True])
def test_key_never_appears_in_messages_or_logs(
    caplog: pytest.LogCaptureFixture, status: int, body: dict[str, Any], use_bulk: bool
) -> None:
    router = mock_router()
    router.post("/person/enrich").respond(status, json=body, headers={"Request-ID": "r-1"})
    router.post("/person/enrich/bulk").respond(status, json=body, headers={"Request-ID": "r-1"})
    with caplog.at_level(logging.DEBUG):
        run = run_enrich(router, people(3), use_bulk=use_bulk, max_attempts=2)
    texts = [caplog.text, str(run.error), *(result.error or "" for result in run.results)]
    assert (run.error is not None) or any(result.error for result in run.results)
    assert all(KEY not in text for text in texts)
    assert caplog.records  # something was logged and checked


def test_a_look_up_still_rate_limited_after_every_retry_is_pending_not_an_error() -> None:
    router = mock_router()
    router.post("/person/enrich").respond(429, headers={"Retry-After": "1"})
    run = run_enrich(router, people(3), max_concurrency=1, max_attempts=2)
    assert run.error is None
    assert run.results == [], "nothing is stored as an error: the next run asks again"
    assert run.stats.rate_limited_pending == 3
