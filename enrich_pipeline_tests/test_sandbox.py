"""The sandbox provider, driven over its wire format through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest

from enrich_pipeline.sandbox import SandboxConfig, create_app
from enrich_pipeline.sandbox.ratelimit import FixedWindowLimiter, TokenBucketLimiter

KEY = {"API-Key": "test-key"}
T0 = 1_800_000_000.0  # a multiple of 60: the start of a fixed window
T = TypeVar("T")


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def cfg(**overrides: Any) -> SandboxConfig:
    values: dict[str, Any] = {"latency_ms": 0, "rate_limit_per_min": None, "match_rate": 1.0}
    return SandboxConfig(**(values | overrides))


def run(
    config: SandboxConfig,
    scenario: Callable[[httpx.AsyncClient], Awaitable[T]],
    clock: FakeClock | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> T:
    extra: dict[str, Any] = {"clock": clock or FakeClock()}
    if sleep is not None:
        extra["sleep"] = sleep
    app = create_app(config, **extra)

    async def go() -> T:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
            return await scenario(client)

    return asyncio.run(go())


def post(
    config: SandboxConfig, path: str, body: Any, headers: dict[str, str] = KEY
) -> httpx.Response:
    return run(config, lambda c: c.post(path, json=body, headers=headers))


def person_records(identifiers: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The person record for each query (up to 100), from one bulk call: everything matches."""
    body = {"items": identifiers}
    results = post(cfg(), "/person/enrich/bulk", body).json()["results"]
    return [result["matches"][0]["person"] for result in results]


def person_record(identifiers: dict[str, str]) -> dict[str, Any]:
    response = post(cfg(), "/person/enrich", identifiers)
    assert response.status_code == 200
    return response.json()["matches"][0]["person"]


def company_record(domain: str) -> dict[str, Any]:
    response = post(cfg(), "/company/enrich", {"domain": domain})
    assert response.status_code == 200
    return response.json()["matches"][0]["company"]


# --- auth and health ---------------------------------------------------------------------


def test_health_answers_without_a_key() -> None:
    response = run(cfg(), lambda c: c.get("/health"))
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


def test_missing_or_empty_key_is_401() -> None:
    for headers in ({}, {"API-Key": ""}):
        response = post(cfg(), "/person/enrich", {"email": "a@b.io"}, headers)
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"


def test_configured_key_is_the_only_one_accepted() -> None:
    config = cfg(accepted_api_key="right-key")
    wrong = post(config, "/person/enrich", {"email": "a@b.io"}, {"API-Key": "wrong"})
    right = post(config, "/person/enrich", {"email": "a@b.io"}, {"API-Key": "right-key"})
    assert wrong.status_code == 401
    assert "right-key" not in wrong.text
    assert right.status_code == 200


# --- profiles --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messy", "clean"),
    [
        ({"email": "  Jane.Doe@Acme-Robotics.IO "}, {"email": "jane.doe@acme-robotics.io"}),
        ({"phone": "(415) 555-0100"}, {"phone": "415.555.0100"}),
        (
            {"social_url": "https://www.LinkedIn.com/in/JaneDoe/"},
            {"social_url": "linkedin.com/in/janedoe"},
        ),
        (
            {"full_name": " Jane   DOE ", "company": "ACME Robotics"},
            {"full_name": "jane doe", "company": "acme robotics"},
        ),
    ],
)
def test_differently_written_identifier_gives_the_same_profile(
    messy: dict[str, str], clean: dict[str, str]
) -> None:
    first = post(cfg(), "/person/enrich", messy)
    second = post(cfg(), "/person/enrich", clean)
    assert first.status_code == 200
    assert first.json() == second.json()


def test_company_email_shapes_the_profile() -> None:
    person = person_record({"email": "Jane.Doe@acme-robotics.io"})
    assert (person["first_name"], person["last_name"]) == ("Jane", "Doe")
    assert person["company_domain"] == "acme-robotics.io"
    assert person["company_name"] == "Acme Robotics"
    assert person["work_email"] == "jane.doe@acme-robotics.io"
    company = company_record("https://www.acme-robotics.io/")
    assert company["name"]["cleaned"] == "Acme Robotics"
    assert person["company_industry"] == company["industry"]
    assert person["company_size"] == company["size"]


def test_free_mail_is_never_the_company() -> None:
    person = person_record({"email": "jdoe1987@gmail.com"})
    assert person["company_domain"] != "gmail.com"
    assert person["work_email"].endswith("@" + person["company_domain"])
    assert {e["address"]: e["type"] for e in person["emails"]}["jdoe1987@gmail.com"] == "personal"


def test_profiles_have_the_documented_wire_shape() -> None:
    person = person_record({"email": "sam@northwind.dev"})
    assert re.fullmatch(r"\d+-\d+|\d+\+", person["company_size"])
    for name in ("emails", "phones", "experience", "education", "socials", "locations"):
        assert isinstance(person[name], list)
    persons = person_records([{"email": f"p{i}@northwind.dev"} for i in range(50)])
    numbers = [p["mobile_phone"] for p in persons if p["mobile_phone"]]
    assert numbers
    assert all(re.fullmatch(r"\+1\d{10}", n) for n in numbers)
    company = company_record("northwind.dev")
    assert set(company["legion_employee_growth_rate"]) == {"1m", "3m", "6m", "12m"}


def test_match_rate_is_roughly_honoured() -> None:
    async def scenario(client: httpx.AsyncClient) -> int:
        matched = 0
        for batch in range(20):
            items = [{"email": f"user{batch}-{i}@example-corp.com"} for i in range(100)]
            response = await client.post("/person/enrich/bulk", json={"items": items}, headers=KEY)
            matched += sum(result["total"] for result in response.json()["results"])
        return matched

    matched = run(cfg(match_rate=0.5), scenario)
    assert 0.45 <= matched / 2000 <= 0.55


# --- single-call answers ------------------------------------------------------------------


def test_no_match_is_404_with_error_body() -> None:
    response = post(cfg(match_rate=0.0), "/person/enrich", {"email": "nobody@acme.io"})
    assert response.status_code == 404
    assert response.json() == {
        "error": "not_found",
        "message": "No records were found matching your search criteria.",
    }


def test_match_has_wire_shape_and_metadata() -> None:
    response = post(cfg(), "/person/enrich", {"email": "jane@acme.io"})
    body = response.json()
    assert response.status_code == 200
    assert body["total"] == 1
    assert body["matches"][0]["person"]["work_email"] == "jane@acme.io"
    assert body["matches"][0]["match_metadata"] == {
        "matched_on": ["email"],
        "match_type": "exact",
        "match_confidence": "high",
    }


@pytest.mark.parametrize(
    "body",
    [{}, {"first_name": "Jane", "last_name": "Doe"}, {"first_name": "Jane", "company": "Acme"}],
)
def test_no_usable_identifier_is_400(body: dict[str, str]) -> None:
    response = post(cfg(), "/person/enrich", body)
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"


def test_name_with_context_is_a_moderate_match() -> None:
    body = {"first_name": "Jane", "last_name": "Doe", "company": "Acme"}
    response = post(cfg(), "/person/enrich", body)
    assert response.status_code == 200
    metadata = response.json()["matches"][0]["match_metadata"]
    assert metadata["match_confidence"] == "moderate"
    strict = post(cfg(), "/person/enrich", body | {"min_confidence": "high"})
    assert strict.status_code == 404


def test_linkedin_url_input_is_400_pointing_to_social_url() -> None:
    response = post(cfg(), "/person/enrich", {"linkedin_url": "linkedin.com/in/jane"})
    assert response.status_code == 400
    assert "social_url" in response.json()["message"]


def test_include_fields_as_a_list_is_422() -> None:
    body = {"email": "jane@acme.io", "include_fields": ["full_name"]}
    response = post(cfg(), "/person/enrich", body)
    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"


def test_wrongly_typed_identifier_is_422() -> None:
    response = post(cfg(), "/person/enrich", {"email": 42})
    assert response.status_code == 422


def test_include_and_exclude_fields_trim_the_record() -> None:
    body = {"email": "jane@acme.io", "include_fields": "full_name, work_email,job_title"}
    included = post(cfg(), "/person/enrich", body).json()["matches"][0]["person"]
    assert set(included) == {"full_name", "work_email", "job_title"}
    body = {"email": "jane@acme.io", "exclude_fields": "emails,phones"}
    excluded = post(cfg(), "/person/enrich", body).json()["matches"][0]["person"]
    assert "emails" not in excluded
    assert "phones" not in excluded
    assert "full_name" in excluded


def test_required_field_missing_means_no_match() -> None:
    queries = [{"email": f"p{i}@acme.io"} for i in range(100)]
    email = next(
        query["email"]
        for query, person in zip(queries, person_records(queries), strict=True)
        if not person["mobile_phone"]
    )
    response = post(cfg(), "/person/enrich", {"email": email, "required_fields": "mobile_phone"})
    assert response.status_code == 404


def test_company_enrich_keys_on_domain() -> None:
    response = post(cfg(), "/company/enrich", {"domain": "HTTPS://www.Acme-Robotics.io/"})
    assert response.status_code == 200
    match = response.json()["matches"][0]
    assert match["company"]["domain"] == "acme-robotics.io"
    assert match["company"]["name"]["cleaned"] == "Acme Robotics"
    assert post(cfg(), "/company/enrich", {"industry": "retail"}).status_code == 400


def test_correlation_id_is_echoed_and_request_ids_are_unique() -> None:
    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        headers = KEY | {"Correlation-ID": "corr-42"}
        return [
            await client.post("/person/enrich", json={"email": "a@acme.io"}, headers=headers)
            for _ in range(3)
        ]

    responses = run(cfg(), scenario)
    assert all(r.headers["Correlation-ID"] == "corr-42" for r in responses)
    assert len({r.headers["Request-ID"] for r in responses}) == 3


# --- bulk -------------------------------------------------------------------------------


def test_bulk_maps_results_to_items_in_order() -> None:
    items = [
        {"email": "jane@acme.io", "metadata": {"key": "c1"}},
        {"company": "Acme", "metadata": {"key": "c2"}},
        {"email": "omar@acme.io", "metadata": {"key": "c3"}},
    ]
    body = {"items": items, "include_fields": "work_email"}
    results = post(cfg(), "/person/enrich/bulk", body).json()["results"]
    assert [r["metadata"] for r in results] == [{"key": "c1"}, {"key": "c2"}, {"key": "c3"}]
    assert results[0]["matches"][0]["person"] == {"work_email": "jane@acme.io"}
    assert results[1]["total"] == 0
    assert results[1]["error"].startswith("invalid_request:")
    assert results[2]["matches"][0]["person"] == {"work_email": "omar@acme.io"}


def test_bulk_no_match_comes_in_both_forms() -> None:
    items = [{"email": f"nobody{i}@acme.io"} for i in range(40)]
    results = post(cfg(match_rate=0.0), "/person/enrich/bulk", {"items": items}).json()["results"]
    assert all(r["matches"] == [] and r["total"] == 0 for r in results)
    assert {r["error"] for r in results} == {None, "not_found"}


@pytest.mark.parametrize("count", [0, 101])
def test_bulk_item_count_outside_1_to_100_is_422(count: int) -> None:
    items = [{"email": f"u{i}@acme.io"} for i in range(count)]
    response = post(cfg(), "/person/enrich/bulk", {"items": items})
    assert response.status_code == 422


def test_company_bulk() -> None:
    items = [{"domain": "acme.io", "metadata": {"k": 1}}, {"domain": "globex.com"}]
    results = post(cfg(), "/company/enrich/bulk", {"items": items}).json()["results"]
    assert [r["matches"][0]["company"]["domain"] for r in results] == ["acme.io", "globex.com"]
    assert results[0]["metadata"] == {"k": 1}


@pytest.mark.parametrize(("bulk_cost", "remaining"), [("request", 9), ("item", 5)])
def test_bulk_cost_counts_requests_or_items(bulk_cost: str, remaining: int) -> None:
    config = cfg(rate_limit_per_min=10, bulk_cost=bulk_cost)
    items = [{"email": f"u{i}@acme.io"} for i in range(5)]
    response = post(config, "/person/enrich/bulk", {"items": items})
    assert response.status_code == 200
    assert response.headers["RateLimit-Remaining"] == str(remaining)


def test_bulk_costing_more_than_the_limit_still_passes_in_a_fresh_window() -> None:
    config = cfg(rate_limit_per_min=10, bulk_cost="item")
    items = [{"email": f"u{i}@acme.io"} for i in range(50)]
    response = post(config, "/person/enrich/bulk", {"items": items})
    assert response.status_code == 200
    assert response.headers["RateLimit-Remaining"] == "0"


# --- rate limiting ---------------------------------------------------------------------


def _exhaust(config: SandboxConfig, clock: FakeClock, extra_calls: int = 1) -> list[httpx.Response]:
    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        limit = config.rate_limit_per_min or 0
        return [
            await client.post("/person/enrich", json={"email": "a@acme.io"}, headers=KEY)
            for _ in range(limit + extra_calls)
        ]

    return run(config, scenario, clock)


@pytest.mark.parametrize("algorithm", ["fixed_window", "token_bucket"])
def test_429_with_draft_headers(algorithm: str) -> None:
    clock = FakeClock(T0 + 30)
    responses = _exhaust(cfg(rate_limit_per_min=3, limit_algorithm=algorithm), clock)
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    limited = responses[-1]
    assert limited.json()["error"] == "rate_limit_exceeded"
    assert limited.headers["RateLimit-Policy"] == "3/min"
    assert limited.headers["RateLimit-Limit"] == "3"
    assert limited.headers["RateLimit-Remaining"] == "0"
    retry_after = int(limited.headers["Retry-After"])
    reset = int(limited.headers["RateLimit-Reset"])
    assert reset > 10**9
    # Fixed window: wait for the minute to end. Token bucket: 3/min refills one token per 20 s.
    assert retry_after == (30 if algorithm == "fixed_window" else 20)
    assert reset == clock.now + retry_after
    assert [r.headers["RateLimit-Remaining"] for r in responses[:3]] == ["2", "1", "0"]


@pytest.mark.parametrize("algorithm", ["fixed_window", "token_bucket"])
def test_429_with_ietf_headers(algorithm: str) -> None:
    config = cfg(rate_limit_per_min=3, limit_algorithm=algorithm, header_style="ietf")
    responses = _exhaust(config, FakeClock(T0 + 30))
    limited = responses[-1]
    assert limited.status_code == 429
    assert limited.headers["RateLimit-Policy"] == '"default";q=3;w=60'
    match = re.fullmatch(r'"default";r=(\d+);t=(\d+)', limited.headers["RateLimit"])
    assert match is not None
    assert match.group(1) == "0"
    assert int(match.group(2)) == int(limited.headers["Retry-After"])
    assert "RateLimit-Reset" not in limited.headers


def test_fixed_window_resets_at_the_window_boundary() -> None:
    clock = FakeClock(T0 + 45)

    async def scenario(client: httpx.AsyncClient) -> list[int]:
        statuses = []
        for now in (T0 + 45, T0 + 46, T0 + 59.9, T0 + 60):
            clock.now = now
            response = await client.post("/person/enrich", json={"email": "a@acme.io"}, headers=KEY)
            statuses.append(response.status_code)
        return statuses

    assert run(cfg(rate_limit_per_min=1), scenario, clock) == [200, 429, 429, 200]


def test_token_bucket_refills_continuously() -> None:
    clock = FakeClock(T0)
    bucket = TokenBucketLimiter(60, clock)
    assert all(bucket.acquire().allowed for _ in range(60))
    assert not bucket.acquire().allowed
    clock.now += 1  # 60/min refills one token per second
    assert bucket.acquire().allowed
    assert not bucket.acquire().allowed


def test_rate_limited_calls_cost_nothing() -> None:
    clock = FakeClock(T0)
    window = FixedWindowLimiter(2, clock)
    assert [window.acquire().allowed for _ in range(4)] == [True, True, False, False]
    clock.now += 60
    assert window.acquire().remaining == 1


def test_unlimited_sends_no_rate_limit_headers() -> None:
    response = post(cfg(rate_limit_per_min=None), "/person/enrich", {"email": "a@acme.io"})
    assert not [name for name in response.headers if name.lower().startswith("ratelimit")]


def test_stats_count_accepted_and_limited() -> None:
    async def scenario(client: httpx.AsyncClient) -> dict[str, Any]:
        for _ in range(4):
            await client.post("/person/enrich", json={"email": "a@acme.io"}, headers=KEY)
        return (await client.get("/_sandbox/stats")).json()

    stats = run(cfg(rate_limit_per_min=3), scenario)
    assert (stats["requests_total"], stats["accepted"], stats["rate_limited"]) == (4, 3, 1)
    assert stats["by_status"] == {"200": 3, "429": 1}
    assert [status for _, status, _ in stats["events"]] == [200, 200, 200, 429]


# --- credits, faults, latency -----------------------------------------------------------


def test_credits_run_out_with_402() -> None:
    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await client.post("/person/enrich", json={"email": f"u{i}@acme.io"}, headers=KEY)
            for i in range(3)
        ]

    responses = run(cfg(credits=2), scenario)
    assert [r.status_code for r in responses] == [200, 200, 402]
    assert [r.headers["Credits-Remaining"] for r in responses] == ["1", "0", "0"]
    assert responses[0].headers["Credits-Used"] == "1"
    body = responses[2].json()
    assert body["error"] == "insufficient_credits"
    assert body["details"] == {"credits_required": 1, "credits_available": 0}


def test_no_match_is_free() -> None:
    response = post(cfg(credits=1, match_rate=0.0), "/person/enrich", {"email": "a@acme.io"})
    assert response.status_code == 404
    assert response.headers["Credits-Used"] == "0"
    assert response.headers["Credits-Remaining"] == "1"


def test_bulk_needing_more_credits_than_left_is_402() -> None:
    items = [{"email": f"u{i}@acme.io"} for i in range(3)]
    response = post(cfg(credits=2), "/person/enrich/bulk", {"items": items})
    assert response.status_code == 402
    assert response.json()["details"] == {"credits_required": 3, "credits_available": 2}


def test_injected_faults_come_at_roughly_the_configured_rate() -> None:
    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await client.post("/person/enrich", json={"email": f"u{i}@acme.io"}, headers=KEY)
            for i in range(400)
        ]

    responses = run(cfg(error_rate=0.3, seed=7), scenario)
    faults = [r for r in responses if r.status_code >= 500]
    assert 0.2 <= len(faults) / len(responses) <= 0.4
    assert {r.status_code for r in faults} == {500, 502, 503}
    assert all("error" in r.json() for r in faults)


def test_latency_and_slow_requests_go_through_the_sleep_function() -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    async def scenario(client: httpx.AsyncClient) -> None:
        for i in range(200):
            await client.post("/person/enrich", json={"email": f"u{i}@acme.io"}, headers=KEY)

    config = cfg(latency_ms=20, slow_rate=0.25, slow_ms=2000)
    run(config, scenario, sleep=fake_sleep)
    assert len(slept) == 200
    assert set(slept) == {0.02, 2.02}
    assert 0.15 <= slept.count(2.02) / 200 <= 0.35


# --- configuration ---------------------------------------------------------------------


def test_a_shorter_window_is_enforced_and_announced() -> None:
    clock = FakeClock(T0)

    async def scenario(client: httpx.AsyncClient) -> list[tuple[int, str]]:
        answers = []
        for now in (T0, T0 + 0.5, T0 + 1.9, T0 + 2.0):
            clock.now = now
            response = await client.post("/person/enrich", json={"email": "a@acme.io"}, headers=KEY)
            answers.append((response.status_code, response.headers["RateLimit-Policy"]))
        return answers

    config = cfg(rate_limit_per_min=2, rate_window_s=2.0)
    assert run(config, scenario, clock) == [
        (200, "2;w=2"),
        (200, "2;w=2"),
        (429, "2;w=2"),
        (200, "2;w=2"),
    ]


def test_a_numbered_first_last_address_still_names_its_person() -> None:
    response = post(cfg(), "/person/enrich", {"email": "aaron.barnes59@gmail.com"})
    person = response.json()["matches"][0]["person"]
    assert (person["first_name"], person["last_name"]) == ("Aaron", "Barnes")
    assert person["linkedin_url"].startswith("linkedin.com/in/aaron-barnes-")
