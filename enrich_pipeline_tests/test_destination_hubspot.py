"""The HubSpot destination end to end: CRM records in a temp warehouse, HubSpot mocked with respx,
the sync state deciding what is sent."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from dagster import AssetKey, DagsterInstance, ExecuteInProcessResult, Failure, materialize

from enrich_pipeline.dagster_layer.destinations import (
    DestinationReport,
    HubSpotDestination,
)
from enrich_pipeline.dagster_layer.resources import WarehouseResource
from enrich_pipeline.definitions import build_definitions
from enrich_pipeline.destinations.hubspot import TOKEN_SETTING
from enrich_pipeline.masking import mask_email
from enrich_pipeline.settings import Settings
from enrich_pipeline_tests.helpers import FakeTime

BASE = "https://hubspot.test"
PATH = "/crm/v3/objects/contacts/batch/upsert"
TOKEN = "pat-na1-0123abcd-secret-token"
MERGED = datetime(2026, 9, 10, 12, 0)
COLUMNS = ("email", "first_name", "job_title", "employee_count", "seniority")
LOG = logging.getLogger("test")


@pytest.fixture
def warehouse(tmp_path: Path) -> WarehouseResource:
    return WarehouseResource.from_settings(Settings())


@pytest.fixture
def hubspot() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


def add_records(warehouse: WarehouseResource, count: int) -> list[str]:
    with warehouse.connect() as con:
        con.execute(
            """
            INSERT INTO crm_contacts
                (email, first_name, job_title, employee_count, seniority, partition_date,
                 updated_at)
            SELECT format('p{:04d}@acme.com', i), format('P{}', i), 'Analyst', 42, 'senior',
                   ?, ?
            FROM range(?) t(i)
            """,
            [MERGED.date(), MERGED, count],
        )
    return [f"p{i:04d}@acme.com" for i in range(count)]


def change(warehouse: WarehouseResource, email: str, **values: Any) -> None:
    """What a merge that rebuilt the record does: new values (maybe none), a new updated_at."""
    assignments = ", ".join(f"{name} = ?" for name in [*values, "updated_at"])
    with warehouse.connect() as con:
        con.execute(
            f"UPDATE crm_contacts SET {assignments} WHERE email = ?",
            [*values.values(), MERGED + timedelta(days=1), email],
        )


def inputs_of(request: httpx.Request) -> list[dict[str, Any]]:
    inputs: list[dict[str, Any]] = json.loads(request.content)["inputs"]
    return inputs


def sent_emails(route: respx.Route, calls: slice = slice(None)) -> list[str]:
    return [item["id"] for call in route.calls[calls] for item in inputs_of(call.request)]


def result(email: str, *, new: bool = True) -> dict[str, Any]:
    return {"id": f"id-{email}", "new": new, "properties": {"email": email}}


def echo(request: httpx.Request) -> httpx.Response:
    """HubSpot writing every input; a record it has seen before is updated, not created."""
    results = [result(item["id"], new=item["id"] not in SEEN) for item in inputs_of(request)]
    SEEN.update(item["id"] for item in inputs_of(request))
    return httpx.Response(200, json={"status": "COMPLETE", "results": results})


SEEN: set[str] = set()


@pytest.fixture(autouse=True)
def _fresh_portal() -> None:
    SEEN.clear()


def deliver(
    warehouse: WarehouseResource, fake: FakeTime | None = None, **options: Any
) -> DestinationReport:
    destination = HubSpotDestination(**{"access_token": TOKEN, "hubspot_base_url": BASE, **options})
    fake = fake or FakeTime()
    return destination.deliver(warehouse, COLUMNS, LOG, sleep=fake.sleep, clock=fake.clock)


def states(warehouse: WarehouseResource) -> dict[str, str]:
    with warehouse.connect() as con:
        return dict(
            con.execute(
                "SELECT email, status FROM crm_sync_state WHERE destination = 'hubspot'"
            ).fetchall()
        )


def test_new_records_go_in_batches_of_100_as_hubspot_properties(
    warehouse: WarehouseResource, hubspot: respx.MockRouter
) -> None:
    emails = add_records(warehouse, 250)
    route = hubspot.post(PATH).mock(side_effect=echo)

    report = deliver(warehouse)

    assert [len(inputs_of(call.request)) for call in route.calls] == [100, 100, 50]
    assert sent_emails(route) == emails
    first = inputs_of(route.calls[0].request)[0]
    assert first == {
        "idProperty": "email",
        "id": "p0000@acme.com",
        "properties": {
            "email": "p0000@acme.com",
            "firstname": "P0",
            "jobtitle": "Analyst",
            "numemployees": "25-50",
        },
    }
    assert route.calls[0].request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert (report.created, report.updated, report.unchanged, report.failed) == (250, 0, 0, 0)
    assert report.extra["api_calls"] == 3
    assert set(states(warehouse).values()) == {"sent"}


def test_a_rerun_without_changes_sends_nothing_and_a_changed_record_is_sent_again(
    warehouse: WarehouseResource, hubspot: respx.MockRouter
) -> None:
    add_records(warehouse, 5)
    route = hubspot.post(PATH).mock(side_effect=echo)
    deliver(warehouse)

    # Merged again without a change in what HubSpot receives (seniority is not sent).
    change(warehouse, "p0001@acme.com", seniority="vp")
    unchanged = deliver(warehouse)

    assert route.call_count == 1
    assert (unchanged.created, unchanged.updated, unchanged.unchanged) == (0, 0, 5)
    assert unchanged.extra["api_calls"] == 0

    change(warehouse, "p0003@acme.com", job_title="CTO")
    changed = deliver(warehouse)

    assert route.call_count == 2
    (item,) = inputs_of(route.calls[1].request)
    assert (item["id"], item["properties"]["jobtitle"]) == ("p0003@acme.com", "CTO")
    assert (changed.created, changed.updated, changed.unchanged) == (0, 1, 4)


def test_207_fails_only_the_rejected_records_and_the_next_run_sends_just_those(
    warehouse: WarehouseResource, hubspot: respx.MockRouter
) -> None:
    emails = add_records(warehouse, 5)
    rejected = ["p0001@acme.com", "p0003@acme.com"]
    partial = httpx.Response(
        207,
        json={
            "status": "COMPLETE",
            "results": [result(e) for e in emails if e not in rejected],
            "numErrors": 2,
            "errors": [
                {
                    "status": "error",
                    "category": "VALIDATION_ERROR",
                    "message": "Property values were not valid",
                    "context": {"ids": [email]},
                }
                for email in rejected
            ],
        },
    )
    route = hubspot.post(PATH).mock(side_effect=[partial, echo, echo])

    first = deliver(warehouse)

    assert (first.created, first.failed) == (3, 2)
    error = "VALIDATION_ERROR: Property values were not valid"
    assert first.failures == [(mask_email(email), error) for email in rejected]
    metadata = first.metadata("hubspot")
    assert metadata["hubspot/failed"] == 2
    assert "p0003@acme.com" not in metadata["hubspot/failures"].value
    assert "p***@acme.com" in metadata["hubspot/failures"].value
    assert states(warehouse) == {e: "failed" if e in rejected else "sent" for e in emails}

    second = deliver(warehouse)

    assert sent_emails(route, slice(1, None)) == rejected
    assert (second.created, second.failed, second.unchanged) == (2, 0, 3)
    assert second.extra["retried_from_last_run"] == 2
    assert set(states(warehouse).values()) == {"sent"}

    deliver(warehouse)
    assert route.call_count == 2


def test_429_is_waited_out_then_the_batch_succeeds(
    warehouse: WarehouseResource, hubspot: respx.MockRouter
) -> None:
    add_records(warehouse, 3)
    route = hubspot.post(PATH).mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "7"}), echo]
    )
    fake = FakeTime()

    report = deliver(warehouse, fake)

    assert route.call_count == 2
    assert fake.sleeps and fake.sleeps[0] >= 7
    assert (report.created, report.failed) == (3, 0)
    assert (report.extra["api_calls"], report.extra["rate_limited_429"]) == (2, 1)


def test_401_fails_naming_the_setting_and_records_nothing_as_sent(
    warehouse: WarehouseResource, hubspot: respx.MockRouter
) -> None:
    add_records(warehouse, 150)
    route = hubspot.post(PATH).respond(
        401, json={"status": "error", "message": f"The token {TOKEN} is not valid"}
    )

    with pytest.raises(Failure) as raised:
        deliver(warehouse)

    assert route.call_count == 1
    assert TOKEN_SETTING in str(raised.value.description)
    assert TOKEN not in str(raised.value.description)
    assert states(warehouse) == {}


def test_selected_without_a_token_fails_naming_the_setting_before_any_request(
    warehouse: WarehouseResource, hubspot: respx.MockRouter
) -> None:
    add_records(warehouse, 1)
    route = hubspot.post(PATH).mock(side_effect=echo)

    with pytest.raises(Failure, match=TOKEN_SETTING):
        HubSpotDestination(hubspot_base_url=BASE).deliver(warehouse, COLUMNS, LOG)

    assert route.call_count == 0


def test_rounds_page_through_the_records_and_share_one_rate_window(
    warehouse: WarehouseResource, hubspot: respx.MockRouter
) -> None:
    emails = add_records(warehouse, 450)
    fake = FakeTime()
    starts: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        starts.append(fake.now)
        return echo(request)

    route = hubspot.post(PATH).mock(side_effect=answer)

    report = deliver(warehouse, fake, records_per_round=150, requests_per_10s=2)

    assert sent_emails(route) == emails
    assert [len(inputs_of(call.request)) for call in route.calls] == [100, 50] * 3
    # Rounds follow each other at once; the window still holds across them.
    assert all(later - earlier >= 10 for earlier, later in zip(starts, starts[2:], strict=False))
    assert report.created == 450


def test_hubspot_down_stops_after_one_round_and_everything_stays_pending(
    warehouse: WarehouseResource, hubspot: respx.MockRouter
) -> None:
    emails = add_records(warehouse, 250)
    route = hubspot.post(PATH).respond(503, json={"message": "Service Unavailable"})

    # Nothing delivered: the run fails naming the URL's setting, its figures kept.
    with pytest.raises(Failure) as down:
        deliver(warehouse, records_per_round=100, max_attempts=2)

    assert route.call_count == 2
    assert "none of 250 records could be delivered" in str(down.value.description)
    assert "HUBSPOT_BASE_URL" in str(down.value.description)
    figures = down.value.metadata
    assert (figures["hubspot/failed"].value, figures["hubspot/not_sent"].value) == (250, 150)

    route.mock(side_effect=echo)
    back = deliver(warehouse, records_per_round=100)

    assert sent_emails(route, slice(2, None)) == emails
    assert (back.created, back.failed) == (250, 0)


def test_another_field_profile_sends_every_record_again_with_its_properties(
    warehouse: WarehouseResource, hubspot: respx.MockRouter
) -> None:
    add_records(warehouse, 2)
    route = hubspot.post(PATH).mock(side_effect=echo)
    HubSpotDestination(access_token=TOKEN, hubspot_base_url=BASE).deliver(
        warehouse, ("email", "first_name"), LOG
    )

    report = deliver(warehouse)

    assert route.call_count == 2
    assert {tuple(item["properties"]) for item in inputs_of(route.calls[1].request)} == {
        ("email", "firstname", "jobtitle", "numemployees")
    }
    assert report.updated == 2


# --- through the asset ---------------------------------------------------------------------------


def run_asset(
    warehouse: WarehouseResource, export_dir: Path, destinations: list[str]
) -> ExecuteInProcessResult:
    settings = Settings(
        warehouse_path=warehouse.warehouse_path,
        export_dir=str(export_dir),
        crm_destinations=destinations,
        hubspot_base_url=BASE,
    )
    defs = build_definitions(settings)
    with DagsterInstance.ephemeral() as instance:
        return materialize(
            [defs.get_assets_def(AssetKey("crm_exports"))],
            resources={
                **defs.resources,
                "hubspot_destination": HubSpotDestination.from_settings(
                    settings, access_token=TOKEN
                ),
            },
            # A day without leads: the merge leaves the records above alone.
            partition_key=date(2026, 10, 1).isoformat(),
            instance=instance,
            raise_on_error=False,
        )


def test_the_asset_reports_each_destination_and_lists_the_failures(
    warehouse: WarehouseResource, hubspot: respx.MockRouter, tmp_path: Path
) -> None:
    emails = add_records(warehouse, 3)
    partial = {
        "status": "COMPLETE",
        "results": [result(email) for email in emails[1:]],
        "numErrors": 1,
        "errors": [{"status": "error", "message": "bad value", "id": emails[0]}],
    }
    hubspot.post(PATH).respond(207, json=partial)

    outcome = run_asset(warehouse, tmp_path / "exports", ["file", "hubspot"])

    assert outcome.success
    metadata = {
        key: value.value
        for key, value in outcome.asset_materializations_for_node("crm_exports")[0].metadata.items()
    }
    assert (metadata["file/created"], metadata["file/failed"]) == (3, 0)
    assert (metadata["hubspot/created"], metadata["hubspot/failed"]) == (2, 1)
    assert f"| {mask_email(emails[0])} | bad value |" in metadata["hubspot/failures"]
    assert metadata["destinations"] == "file, hubspot"


def test_the_asset_delivers_to_every_destination_even_when_one_fails(
    warehouse: WarehouseResource, hubspot: respx.MockRouter, tmp_path: Path
) -> None:
    add_records(warehouse, 3)
    hubspot.post(PATH).respond(401, json={"status": "error", "message": "bad token"})
    export_dir = tmp_path / "exports"

    outcome = run_asset(warehouse, export_dir, ["hubspot", "file"])

    assert not outcome.success
    (failure,) = [e for e in outcome.all_events if e.event_type_value == "STEP_FAILURE"]
    assert TOKEN_SETTING in str(failure.event_specific_data.error)
    assert len((export_dir / "crm_contacts.csv").read_text().splitlines()) == 4


def test_deliveries_made_one_after_another_share_one_rate_window(
    warehouse: WarehouseResource, hubspot: respx.MockRouter
) -> None:
    # The intake service's write-back delivers pass after pass with one destination.
    destination = HubSpotDestination(access_token=TOKEN, hubspot_base_url=BASE, requests_per_10s=2)
    fake = FakeTime()
    starts: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        starts.append(fake.now)
        return echo(request)

    hubspot.post(PATH).mock(side_effect=answer)
    add_records(warehouse, 1)
    for n in range(3):
        with warehouse.connect() as con:  # merged anew before each pass
            con.execute(
                "UPDATE crm_contacts SET job_title = ?, updated_at = ?",
                [f"Analyst {n}", MERGED + timedelta(hours=n)],
            )
        destination.deliver(warehouse, COLUMNS, LOG, sleep=fake.sleep, clock=fake.clock)

    assert len(starts) == 3
    assert starts[2] - starts[0] >= 10, "the third call waited for the first to leave the window"
