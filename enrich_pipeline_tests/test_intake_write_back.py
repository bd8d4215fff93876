"""Write-back within seconds: a lead accepted by the intake service is built, enriched, merged
and exported by the service itself, and the sensor's later run for the same day finds nothing
left to pay for or push; a caller who asks to wait gets the merged record."""

from __future__ import annotations

import csv
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from enrich_pipeline.dagster_layer.write_back import WriteBack
from enrich_pipeline.intake.app import create_intake_app
from enrich_pipeline.intake.journal import IntakeJournal
from enrich_pipeline.intake.landing import land_from_journal
from enrich_pipeline.intake.mover import JournalMover
from enrich_pipeline.sandbox.hubspot import create_hubspot_sandbox
from enrich_pipeline.settings import Settings
from enrich_pipeline_tests.helpers import (
    READY_S,
    intake_environment,
    materialise_range,
    metadata_of,
    read_warehouse,
    served_over_http,
    serving,
    wait_for_health,
)

LEAD = {"Email": "ada@analytical-engines.io", "First Name": "Ada", "Company Name": "AE"}


def _export_rows(settings: Settings) -> dict[str, dict[str, str]]:
    path = Path(settings.export_dir) / "crm_contacts.csv"
    if not path.exists():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["Email"]: row for row in csv.DictReader(handle)}


def test_a_landed_lead_is_enriched_and_exported_without_a_dagster_run(
    journal: IntakeJournal, settings: Settings
) -> None:
    settings = settings.model_copy(update={"match_rate": 1.0})
    write_back = WriteBack.from_settings(settings)
    journal.append([LEAD], source="api", received_at=datetime.now(UTC).replace(tzinfo=None))
    land_from_journal(journal, settings.warehouse_path)

    write_back.catch_up()

    exported = _export_rows(settings)["ada@analytical-engines.io"]
    assert exported["First Name"] == "Ada"
    assert exported["Job Title"], "the person profile was merged into the export"
    with read_warehouse(settings.warehouse_path) as con:
        (status,) = con.execute(
            "SELECT status FROM person_enrichment WHERE identity = 'ada@analytical-engines.io'"
        ).fetchone()  # type: ignore[misc]
    assert status == "matched"

    # The sensor's run for the same day pays for nothing and pushes nothing.
    today = datetime.now(UTC).date().isoformat()
    run = materialise_range(settings, today, today)
    assert metadata_of(run, "enriched_persons")["api_calls"] == 0
    assert metadata_of(run, "crm_exports")["file/created"] == 0


def test_rows_landed_before_the_service_started_are_left_to_the_sensor(
    journal: IntakeJournal, settings: Settings
) -> None:
    journal.append([LEAD], source="api", received_at=datetime.now(UTC).replace(tzinfo=None))
    land_from_journal(journal, settings.warehouse_path)
    write_back = WriteBack.from_settings(settings)
    write_back.catch_up()
    assert _export_rows(settings) == {}


@pytest.mark.slow
def test_posting_a_lead_to_the_service_reaches_the_export_within_seconds(
    tmp_path: Path, settings: Settings
) -> None:
    env, base_url = intake_environment(tmp_path)
    with serving(env, base_url):
        assert httpx.post(f"{base_url}/v1/leads", json=LEAD).status_code == 202
        deadline = time.monotonic() + READY_S
        while "ada@analytical-engines.io" not in _export_rows(settings):
            assert time.monotonic() < deadline, "the lead did not reach the export"
            time.sleep(0.05)


@pytest.mark.slow
def test_the_service_answers_prefer_wait_from_its_mover_process(tmp_path: Path) -> None:
    env, base_url = intake_environment(tmp_path, match_rate=1.0)
    with serving(env, base_url):
        answer = httpx.post(
            f"{base_url}/v1/leads", json=LEAD, headers={"Prefer": "wait=10"}, timeout=30
        )
        # Answered as soon as enriched; landed in the warehouse besides.
        wait_for_health(base_url, lambda health: health["landed_through_seq"] == 1)
    assert answer.status_code == 200, answer.text
    (record,) = answer.json()["records"]
    assert record["email"] == "ada@analytical-engines.io" and record["job_title"]


@pytest.mark.slow
def test_a_posted_lead_reaches_hubspot_enriched_and_is_not_pushed_again(tmp_path: Path) -> None:
    token = "hubspot-stand-in-token"
    with served_over_http(create_hubspot_sandbox(token=token)) as hubspot_url:
        env, base_url = intake_environment(
            tmp_path,
            warehouse_path=tmp_path / "warehouse.duckdb",
            export_dir=tmp_path / "exports",
            limiter_dir=tmp_path / "ratelimit",
            match_rate=1.0,
            crm_destinations="file,hubspot",
            hubspot_base_url=hubspot_url,
            hubspot_access_token=token,
        )
        with serving(env, base_url), httpx.Client(base_url=hubspot_url) as hubspot:
            assert httpx.post(f"{base_url}/v1/leads", json=LEAD).status_code == 202
            deadline = time.monotonic() + READY_S
            while True:
                found = hubspot.get("/_sandbox/contacts/ada@analytical-engines.io")
                if found.status_code == 200 and found.json()["properties"].get("jobtitle"):
                    break
                assert time.monotonic() < deadline, "the lead did not reach HubSpot enriched"
                time.sleep(0.05)
            contact = found.json()["properties"]
            # The lead's own name, the provider's title, in HubSpot's property names.
            assert contact["firstname"] == "Ada" and contact["email"] == LEAD["Email"]
            # Once written back, the record is not pushed again: a second lead for someone else
            # is the only other upsert the stand-in sees.
            assert (
                httpx.post(f"{base_url}/v1/leads", json={"Email": "grace@hopper.dev"}).status_code
                == 202
            )
            while hubspot.get("/_sandbox/contacts/grace@hopper.dev").status_code != 200:
                assert time.monotonic() < deadline, "the second lead did not reach HubSpot"
                time.sleep(0.05)
            seen = hubspot.get("/_sandbox/contacts").json()
    assert sorted(seen["contacts"]) == ["ada@analytical-engines.io", "grace@hopper.dev"]
    assert seen["contacts"]["ada@analytical-engines.io"]["updatedAt"] == found.json()["updatedAt"]


@pytest.mark.anyio
async def test_prefer_wait_answers_with_the_merged_record_when_it_is_ready(
    journal: IntakeJournal, settings: Settings
) -> None:
    settings = settings.model_copy(update={"match_rate": 1.0})
    mover = JournalMover(
        journal, settings.warehouse_path, then=WriteBack.from_settings(settings).catch_up
    )
    app = create_intake_app(journal, token=None, mover=mover)
    mover.start()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://intake"
        ) as client:
            answer = await client.post("/v1/leads", json=LEAD, headers={"Prefer": "wait=10"})
            no_email = await client.post(
                "/v1/leads", json={"Phone Number": "+14155550134"}, headers={"Prefer": "wait=1"}
            )
    finally:
        mover.stop()
    assert answer.status_code == 200
    assert answer.headers["Preference-Applied"] == "wait=10"
    (record,) = answer.json()["records"]
    assert record["email"] == "ada@analytical-engines.io"
    assert record["person_status"] == "matched" and record["job_title"]
    assert record["provenance"]["first_name"]["source"] == "lead"
    # No email, no CRM record to wait for: accepted and enriched later, as without Prefer.
    assert no_email.status_code == 202 and no_email.json()["status"] == "pending"


@pytest.mark.anyio
async def test_prefer_wait_falls_back_to_pending_when_not_ready_in_time(
    journal: IntakeJournal, settings: Settings
) -> None:
    mover = JournalMover(journal, settings.warehouse_path)  # never started: nothing lands
    app = create_intake_app(journal, token=None, mover=mover)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://intake"
    ) as client:
        answer = await client.post("/v1/leads", json=LEAD, headers={"Prefer": "wait=0.2"})
    assert answer.status_code == 202 and answer.json()["status"] == "pending"
    assert journal.last_seq() == 1, "the lead is kept either way"
