import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from email.utils import formatdate
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from enrich_pipeline.dagster_layer.resources import SandboxEnrichmentResource
from enrich_pipeline.provider.models import CallStats, EnrichmentResult, Outcome, PersonQuery
from enrich_pipeline.provider.transports import (
    RETRY_AFTER_JITTER_S,
    THROTTLE_JITTER_S,
    RetryTransport,
    StatsTransport,
    ThrottleTransport,
)
from enrich_pipeline.settings import Settings
from enrich_pipeline_tests.helpers import FakeTime

NOW = 1_700_000_000.0
URL = "https://provider.test/person/enrich"

Handler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]


def scripted(*responses: httpx.Response | Exception) -> tuple[Handler, list[httpx.Request]]:
    """A handler answering with the given responses (or raising the exceptions) in turn."""
    sent: list[httpx.Request] = []
    pending = list(responses)

    async def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        answer = pending.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handler, sent


def retrying(
    handler: Handler, fake: FakeTime, stats: CallStats, **kwargs: Any
) -> httpx.AsyncClient:
    """Retries around the counts, as ``build_http_client`` composes them."""
    counted = StatsTransport(httpx.MockTransport(handler), stats=stats)
    transport = RetryTransport(
        counted, sleep=fake.sleep, clock=fake.clock, on_retry=counted.count_retry, **kwargs
    )
    return httpx.AsyncClient(transport=transport)


def post(client: httpx.AsyncClient) -> httpx.Response:
    async def go() -> httpx.Response:
        async with client:
            return await client.post(URL, json={"email": "jane@acme.com"})

    return asyncio.run(go())


# --- RetryTransport -----------------------------------------------------------------------------


def test_429_is_retried_after_retry_after_plus_bounded_jitter() -> None:
    fake, stats = FakeTime(), CallStats()
    handler, sent = scripted(
        httpx.Response(429, headers={"Retry-After": "7"}), httpx.Response(200, json={})
    )
    response = post(retrying(handler, fake, stats))
    assert response.status_code == 200
    assert len(sent) == 2
    assert len(fake.sleeps) == 1
    assert 7 <= fake.sleeps[0] <= 7 + RETRY_AFTER_JITTER_S
    assert (stats.requests, stats.retries, stats.rate_limited) == (2, 1, 1)
    assert stats.responses_by_status == {429: 1, 200: 1}


def test_429_retry_after_as_http_date() -> None:
    fake, stats = FakeTime(), CallStats()
    handler, _ = scripted(
        httpx.Response(429, headers={"Retry-After": formatdate(NOW + 20, usegmt=True)}),
        httpx.Response(200, json={}),
    )
    post(retrying(handler, fake, stats))
    assert 20 <= fake.sleeps[0] <= 20 + RETRY_AFTER_JITTER_S


def test_5xx_is_retried_until_success() -> None:
    fake, stats = FakeTime(), CallStats()
    handler, sent = scripted(httpx.Response(502), httpx.Response(503), httpx.Response(200))
    assert post(retrying(handler, fake, stats)).status_code == 200
    assert len(sent) == 3
    assert stats.retries == 2


def test_5xx_exhausted_returns_last_response_after_max_attempts() -> None:
    fake, stats = FakeTime(), CallStats()
    handler, sent = scripted(*[httpx.Response(500, headers={"Request-ID": "r-9"})] * 4)
    response = post(retrying(handler, fake, stats, max_attempts=4))
    assert response.status_code == 500
    assert response.headers["Request-ID"] == "r-9"
    assert len(sent) == 4
    assert stats.requests == 4
    assert stats.retries == 3
    assert len(fake.sleeps) == 3


def test_timeout_is_retried() -> None:
    fake, stats = FakeTime(), CallStats()
    handler, sent = scripted(httpx.ReadTimeout("slow"), httpx.Response(200))
    assert post(retrying(handler, fake, stats)).status_code == 200
    assert len(sent) == 2


def test_connection_errors_exhausted_reraise_the_last_one() -> None:
    fake, stats = FakeTime(), CallStats()
    handler, sent = scripted(*[httpx.ConnectError("refused")] * 3)
    with pytest.raises(httpx.ConnectError):
        post(retrying(handler, fake, stats, max_attempts=3))
    assert len(sent) == 3
    assert stats.requests == 3


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 405, 422])
def test_4xx_other_than_429_is_never_retried(status: int) -> None:
    fake, stats = FakeTime(), CallStats()
    handler, sent = scripted(httpx.Response(status), httpx.Response(200))
    assert post(retrying(handler, fake, stats)).status_code == status
    assert len(sent) == 1
    assert fake.sleeps == []


def test_backoff_is_full_jitter_within_exponential_bounds() -> None:
    base, cap, attempts = 0.5, 3.0, 6
    waits_by_retry: list[list[float]] = [[] for _ in range(attempts - 1)]
    for _ in range(40):
        fake, stats = FakeTime(), CallStats()
        handler, _ = scripted(*[httpx.Response(503)] * attempts)
        post(
            retrying(
                handler,
                fake,
                stats,
                max_attempts=attempts,
                backoff_base_s=base,
                backoff_max_s=cap,
            )
        )
        for retry, wait in enumerate(fake.sleeps):
            waits_by_retry[retry].append(wait)
    for retry, waits in enumerate(waits_by_retry):
        bound = min(cap, base * 2**retry)
        assert all(0 <= wait <= bound for wait in waits)
        # Full jitter spreads over the whole window rather than sitting near zero or the top.
        assert max(waits) > bound / 2
        assert min(waits) < bound / 2


def test_streamed_request_body_is_resent_intact() -> None:
    fake, stats = FakeTime(), CallStats()
    handler, sent = scripted(httpx.Response(503), httpx.Response(200))

    async def body() -> AsyncIterator[bytes]:
        yield b'{"email": '
        yield b'"jane@acme.com"}'

    async def go() -> None:
        async with retrying(handler, fake, stats) as client:
            await client.post(URL, content=body())

    asyncio.run(go())
    assert [request.content for request in sent] == [b'{"email": "jane@acme.com"}'] * 2


def test_credits_are_counted_from_headers() -> None:
    fake, stats = FakeTime(), CallStats()
    handler, _ = scripted(
        httpx.Response(503, headers={"Credits-Used": "0", "Credits-Remaining": "99"}),
        httpx.Response(200, headers={"Credits-Used": "1", "Credits-Remaining": "98"}),
    )
    post(retrying(handler, fake, stats))
    handler, _ = scripted(httpx.Response(200, headers={"Credits-Used": "lots"}))
    post(retrying(handler, fake, stats))
    assert stats.credits_used == 1
    assert stats.credits_remaining == 98


# --- ThrottleTransport --------------------------------------------------------------------------


def throttled(
    handler: Handler, fake: FakeTime, stats: CallStats
) -> tuple[httpx.AsyncClient, list[float]]:
    """A client through the throttle only; also returns the clock reading at each send."""
    sent_at: list[float] = []

    async def timed(request: httpx.Request) -> httpx.Response:
        sent_at.append(fake.now)
        return await handler(request)

    transport = ThrottleTransport(
        httpx.MockTransport(timed),
        stats=stats,
        clock=fake.clock,
        sleep=fake.sleep,
        jitter=lambda low, high: high,
    )
    return httpx.AsyncClient(transport=transport), sent_at


def post_times(client: httpx.AsyncClient, count: int) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        async with client:
            return [await client.post(URL, json={}) for _ in range(count)]

    return asyncio.run(go())


def test_throttle_pauses_at_remaining_zero_until_reset() -> None:
    fake, stats = FakeTime(), CallStats()
    handler, _ = scripted(
        httpx.Response(200, headers={"RateLimit-Remaining": "0", "RateLimit-Reset": str(NOW + 30)}),
        httpx.Response(200),
    )
    client, sent_at = throttled(handler, fake, stats)
    post_times(client, 2)
    assert sent_at[0] == NOW
    assert NOW + 30 <= sent_at[1] <= NOW + 30 + THROTTLE_JITTER_S
    assert fake.sleeps == [30 + THROTTLE_JITTER_S]
    assert stats.throttle_waits == 1


def test_retry_after_wins_over_ratelimit_reset() -> None:
    fake, stats = FakeTime(), CallStats()
    handler, _ = scripted(
        httpx.Response(
            429,
            headers={
                "Retry-After": "2",
                "RateLimit-Remaining": "0",
                "RateLimit-Reset": str(NOW + 60),
            },
        ),
        httpx.Response(200),
    )
    client, sent_at = throttled(handler, fake, stats)
    post_times(client, 2)
    assert NOW + 2 <= sent_at[1] <= NOW + 2 + THROTTLE_JITTER_S


def test_responses_without_rate_limit_headers_are_not_throttled() -> None:
    fake, stats = FakeTime(), CallStats()
    handler, _ = scripted(*[httpx.Response(200)] * 3)
    client, sent_at = throttled(handler, fake, stats)
    post_times(client, 3)
    assert sent_at == [NOW] * 3
    assert fake.sleeps == []


def test_concurrent_requests_never_overrun_the_window() -> None:
    """A server allowing 4 requests per 10 s window. The 2nd and 3rd calls of a burst answer
    late, so the 1st call's Remaining is stale when read: it does not count them yet."""
    fake, stats = FakeTime(), CallStats()
    window = {"remaining": 4, "reset_at": NOW + 10}
    answer_delays = iter([1, 1, 10, 10, 1, 1, 1])
    statuses: list[int] = []

    async def server(request: httpx.Request) -> httpx.Response:
        delay = next(answer_delays)
        if fake.now >= window["reset_at"]:
            window["remaining"], window["reset_at"] = 4, window["reset_at"] + 10
        if window["remaining"] == 0:
            statuses.append(429)
            return httpx.Response(429)
        window["remaining"] -= 1
        headers = {
            "RateLimit-Remaining": str(window["remaining"]),
            "RateLimit-Reset": str(window["reset_at"]),
        }
        for _ in range(delay):
            await asyncio.sleep(0)
        statuses.append(200)
        return httpx.Response(200, headers=headers)

    client, sent_at = throttled(server, fake, stats)

    async def go() -> None:
        async with client:
            await client.post(URL)

            async def one_then_three_more() -> None:
                await client.post(URL)
                await asyncio.gather(*(client.post(URL) for _ in range(3)))

            await asyncio.gather(one_then_three_more(), client.post(URL), client.post(URL))

    asyncio.run(go())
    assert statuses == [200] * 7
    # Three left after the first call: the burst of three goes at once, the rest after reset.
    assert sent_at[:4] == [NOW] * 4
    assert all(at >= NOW + 10 for at in sent_at[4:])


def test_retry_through_throttle_waits_once_for_retry_after() -> None:
    fake, stats = FakeTime(), CallStats()
    handler, sent = scripted(httpx.Response(429, headers={"Retry-After": "5"}), httpx.Response(200))
    transport = RetryTransport(
        ThrottleTransport(
            httpx.MockTransport(handler), stats=stats, clock=fake.clock, sleep=fake.sleep
        ),
        clock=fake.clock,
        sleep=fake.sleep,
    )
    assert post(httpx.AsyncClient(transport=transport)).status_code == 200
    assert len(sent) == 2
    assert len(fake.sleeps) == 1
    assert 5 <= fake.sleeps[0] <= 5 + RETRY_AFTER_JITTER_S


def test_transports_wrap_an_asgi_app() -> None:
    calls = 0

    async def enrich(request: Request) -> JSONResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            return JSONResponse({"error": "rate_limited"}, 429, headers={"Retry-After": "1"})
        return JSONResponse({"matches": [], "total": 0})

    app = Starlette(routes=[Route("/person/enrich", enrich, methods=["POST"])])
    fake, stats = FakeTime(), CallStats()
    counted = StatsTransport(
        ThrottleTransport(
            httpx.ASGITransport(app=app), stats=stats, clock=fake.clock, sleep=fake.sleep
        ),
        stats=stats,
    )
    transport = RetryTransport(
        counted, clock=fake.clock, sleep=fake.sleep, on_retry=counted.count_retry
    )
    response = post(httpx.AsyncClient(transport=transport))
    assert response.json() == {"matches": [], "total": 0}
    assert (stats.requests, stats.retries) == (2, 1)


def test_a_request_that_fails_frees_its_place_in_flight() -> None:
    fake, stats = FakeTime(), CallStats()
    handler, sent = scripted(httpx.ConnectError("refused"), httpx.Response(200))
    transport = ThrottleTransport(
        httpx.MockTransport(handler),
        stats=stats,
        clock=fake.clock,
        sleep=fake.sleep,
        max_in_flight=1,
    )

    async def go() -> int:
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.ConnectError):
                await client.post(URL)
            return (await asyncio.wait_for(client.post(URL), timeout=5)).status_code

    assert asyncio.run(go()) == 200
    assert len(sent) == 2


def test_the_in_process_sandbox_is_held_to_the_request_timeout() -> None:
    # ASGITransport times nothing itself: a 5 s answer against a 50 ms timeout must time out
    # and be retried, as over the network, not be waited for.
    settings = Settings(latency_ms=5_000, request_timeout_s=0.05, max_attempts=2)
    resource = SandboxEnrichmentResource.from_settings(settings)
    stats = CallStats()
    query = PersonQuery(key="ada@analytical-engines.io", email="ada@analytical-engines.io")

    async def look_up() -> list[EnrichmentResult]:
        async with resource.client(stats, logging.getLogger(__name__)) as client:
            return [result async for result in client.enrich("person", [query])]

    (result,) = asyncio.run(asyncio.wait_for(look_up(), timeout=30))
    assert result.status is Outcome.ERROR
    assert "ReadTimeout" in (result.error or ""), result.error
    assert stats.retries == 1
    assert stats.responses_by_status == {}, "no answer was waited for"
