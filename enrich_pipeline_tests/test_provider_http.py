import asyncio
import json
from pathlib import Path

import httpx
import pytest

from enrich_pipeline.provider.http import build_http_client
from enrich_pipeline.provider.models import CallStats

KEY = "dl-secret-key-1234567890"


def test_client_sends_key_agent_and_json_accept_to_the_base_url() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "ok"})

    stats = CallStats()

    async def go() -> None:
        async with build_http_client(
            base_url="https://provider.test",
            api_key=KEY,
            stats=stats,
            transport=httpx.MockTransport(handler),
        ) as http:
            await http.get("/health")

    asyncio.run(go())
    (request,) = seen
    assert str(request.url) == "https://provider.test/health"
    assert request.headers["API-Key"] == KEY
    assert request.headers["User-Agent"] == "enrich-pipeline/0.1"
    assert request.headers["Accept"] == "application/json"
    assert stats.requests == 1


def _one_call(stats: CallStats, shared_state_dir: Path | None = None) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"RateLimit-Policy": "100/min"})

    async def go() -> None:
        async with build_http_client(
            base_url="https://provider.test",
            api_key=KEY,
            stats=stats,
            transport=httpx.MockTransport(handler),
            shared_state_dir=shared_state_dir,
        ) as http:
            await http.post("/person/enrich", json={})

    asyncio.run(go())


def test_shared_limiter_state_is_written_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENRICH_LIMITER_DIR", str(tmp_path / "default"))
    _one_call(CallStats())
    assert not (tmp_path / "default").exists()

    stats = CallStats()
    _one_call(stats, shared_state_dir=tmp_path / "shared")
    (state_file,) = (tmp_path / "shared").iterdir()
    assert json.loads(state_file.read_text())["limit"] == 100
    assert KEY not in state_file.read_text()
    assert stats.rate_limit == 100
