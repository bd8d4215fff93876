"""``Prefer: wait`` answered on request (``EnrichOnRequest``): the lead is looked up and its
record computed as soon as it is journaled, while the mover lands it and the write-back merges
it as every lead; the provider is paid once for it, and the warehouse ends up holding the
record the caller was given. The provider is the sandbox over HTTP, counting what it serves."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import httpx
import pytest

from enrich_pipeline.cli import main
from enrich_pipeline.dagster_layer.write_back import WriteBack
from enrich_pipeline.intake.app import create_intake_app
from enrich_pipeline.intake.enrich_now import ReadyRecords
from enrich_pipeline.intake.journal import IntakeJournal
from enrich_pipeline.intake.mover import JournalMover
from enrich_pipeline.sandbox.config import SandboxConfig
from enrich_pipeline.settings import Settings
from enrich_pipeline.warehouse.connection import connect
from enrich_pipeline.warehouse.crm import crm_records
from enrich_pipeline_tests.helpers import materialise_range, metadata_of, sandbox_over_http

KEY = "sandbox-key"
ADA = {"Email": "Ada@Analytical-Engines.io", "First Name": "Ada", "Company Name": "AE"}
EMAIL = "ada@analytical-engines.io"


@pytest.fixture
def provider_url() -> Iterator[str]:
    # Slow enough that the write-back's pass selects the lead while its look-up is in flight.
    with sandbox_over_http(
        SandboxConfig(accepted_api_key=KEY, latency_ms=300, match_rate=1.0)
    ) as url:
        yield url


def _settings(provider_url: str, monkeypatch: pytest.MonkeyPatch, key: str = KEY) -> Settings:
    """The test's settings, calling the sandbox over HTTP with ``key``."""
    monkeypatch.setenv("DATA_LEGION_API_KEY", key)
    return Settings(base_url=provider_url)


def _mover(journal: IntakeJournal, settings: Settings, ready: ReadyRecords) -> JournalMover:
    """As ``enrich-pipeline serve`` builds it, in this process."""
    write_back = WriteBack.from_settings(settings)
    on_request = write_back.on_request(ready.publish)
    return JournalMover(
        journal,
        settings.warehouse_path,
        then=write_back.catch_up,
        on_request=on_request.submit,
        give_way=on_request.wait_until_quiet,
    )


@contextmanager
def _serving(journal: IntakeJournal, settings: Settings) -> Iterator[tuple[object, JournalMover]]:
    """The intake app answering ``Prefer: wait``, and its running mover, as ``serve`` has them."""
    ready = ReadyRecords()
    mover = _mover(journal, settings, ready)
    app = create_intake_app(journal, token=None, mover=mover, ready=ready)
    mover.start()
    try:
        yield app, mover
    finally:
        mover.stop()


def _wait_written_back(mover: JournalMover, seq: int) -> None:
    done = threading.Condition()

    def moved() -> None:
        with done:
            done.notify_all()

    mover.add_done_listener(moved)
    with done:
        assert done.wait_for(lambda: mover.is_done(seq), 30), "not written back"


def _served(provider_url: str) -> dict[str, int]:
    stats = httpx.get(f"{provider_url}/_sandbox/stats").json()
    return {"requests": stats["requests_total"], "items": stats["items_enriched"]}


async def _post_waiting(app: object, lead: dict[str, str], wait_s: float = 10) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
        base_url="http://intake",
    ) as client:
        return await client.post("/v1/leads", json=lead, headers={"Prefer": f"wait={wait_s:g}"})


def test_a_waited_lead_is_paid_for_once_and_answered_with_the_record_then_stored(
    journal: IntakeJournal, provider_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(provider_url, monkeypatch)
    with _serving(journal, settings) as (app, mover):
        answer = asyncio.run(_post_waiting(app, ADA))
        _wait_written_back(mover, journal.last_seq())
        first = _served(provider_url)
        again = asyncio.run(_post_waiting(app, ADA | {"Last Name": "Lovelace"}))
        _wait_written_back(mover, journal.last_seq())
        second = _served(provider_url)

    assert answer.status_code == 200, answer.text
    (record,) = answer.json()["records"]
    assert record["person_status"] == "matched" and record["job_title"]
    assert record["provenance"]["first_name"]["source"] == "lead"
    # The person and the lead's company, once each, though the write-back's pass for the lead
    # ran while they were being looked up.
    assert first["items"] == 2, first
    with connect(settings.warehouse_path) as con:
        stored = crm_records(con, [EMAIL])[EMAIL]
    (record_again,) = again.json()["records"]
    # The lead again, now fresh: answered without a call, with what the lead added.
    assert again.status_code == 200 and record_again["last_name"] == "Lovelace"
    assert second == first
    assert {k: v for k, v in record_again.items() if k != "updated_at"} == {
        k: v for k, v in stored.items() if k != "updated_at"
    }, "the warehouse holds the record the caller was given"

    # The sensor's run for the day pays for nothing either.
    today = datetime.now(UTC).date().isoformat()
    run = materialise_range(settings, today, today)
    assert metadata_of(run, "enriched_persons")["api_calls"] == 0
    assert _served(provider_url) == first


def test_a_provider_refusing_the_key_leaves_the_waited_lead_pending_and_kept(
    journal: IntakeJournal, provider_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(provider_url, monkeypatch, key="not-the-key")
    with _serving(journal, settings) as (app, _):
        answer = asyncio.run(_post_waiting(app, ADA, wait_s=2))
    assert answer.status_code in (200, 202), answer.text
    if answer.status_code == 200:
        # Merged by the write-back without a profile: the key was refused.
        (record,) = answer.json()["records"]
        assert record["person_status"] == "error"
    assert journal.last_seq() == 1
    with connect(settings.warehouse_path) as con:
        (landed,) = con.execute("SELECT count(*) FROM raw_contacts").fetchone()  # type: ignore[misc]
    assert landed == 1, "the lead is kept, to be enriched later"


def test_a_suppressed_lead_waited_for_costs_no_look_up_and_gets_202(
    journal: IntakeJournal, provider_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(provider_url, monkeypatch)
    assert main(["suppress", EMAIL]) == 0
    with _serving(journal, settings) as (app, mover):
        answer = asyncio.run(_post_waiting(app, ADA, wait_s=1))
        _wait_written_back(mover, journal.last_seq())

    assert answer.status_code == 202, answer.text
    assert _served(provider_url) == {"requests": 0, "items": 0}
    with connect(settings.warehouse_path) as con:
        refused = con.execute("SELECT reason, original FROM quarantine").fetchall()
        landed = con.execute("SELECT count(*) FROM raw_contacts").fetchone()
    assert refused == [("suppressed", None)] and landed == (0,)


def test_a_person_suppressed_after_being_merged_is_not_given_out(
    journal: IntakeJournal, provider_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(provider_url, monkeypatch)
    with _serving(journal, settings) as (app, mover):
        first = asyncio.run(_post_waiting(app, ADA))
        _wait_written_back(mover, journal.last_seq())
        assert main(["suppress", EMAIL]) == 0
        # The same request again: replayed answers are read from the warehouse.
        again = asyncio.run(_post_waiting(app, ADA, wait_s=1))

    assert first.status_code == 200
    assert again.status_code == 202, again.text
    assert "records" not in again.json()
