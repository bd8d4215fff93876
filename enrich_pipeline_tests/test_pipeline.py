"""The whole asset graph, materialised with Dagster over a partition range against the
in-process sandbox, on a temp warehouse."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from dagster import DagsterInstance

from enrich_pipeline.ingest import ingest_file
from enrich_pipeline.settings import Settings
from enrich_pipeline_tests.conftest import SAMPLE_CSV, isolate_configuration, warehouse_as_asked
from enrich_pipeline_tests.helpers import ASSET_KEYS, materialise_range, metadata_of, read_warehouse


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """The sample CSV landed and the whole graph run twice over its whole range."""
    tmp = tmp_path_factory.mktemp("pipeline")
    # Module-scoped, so it runs before the per-test isolation does.
    mp = pytest.MonkeyPatch()
    isolate_configuration(mp, tmp)
    warehouse_as_asked(request, mp)
    settings = Settings()
    ingest = ingest_file(settings.warehouse_path, SAMPLE_CSV)
    con = read_warehouse(settings.warehouse_path)
    first, last = (
        d.isoformat()
        for d in con.execute(
            "SELECT min(received_at)::DATE, max(received_at)::DATE FROM raw_contacts"
        ).fetchone()
    )
    con.close()
    with DagsterInstance.ephemeral() as instance:
        first_run = materialise_range(settings, first, last, instance)
        second_run = materialise_range(settings, first, last, instance)
    mp.undo()
    return settings, ingest, first_run, second_run


def test_one_run_materialises_all_four_assets_over_the_range(sample_run) -> None:
    _, _, first_run, _ = sample_run
    assert first_run.success
    for key in ASSET_KEYS:
        materialisations = first_run.asset_materializations_for_node(key)
        # Single-run backfill: one run, one materialisation per partition in the range.
        assert len(materialisations) >= 60


def test_every_valid_contact_has_a_person_row(sample_run) -> None:
    settings, _, _, _ = sample_run
    con = read_warehouse(settings.warehouse_path)
    missing = con.execute(
        """
        SELECT count(*) FROM clean_contacts c
        ANTI JOIN person_enrichment p USING (identity)
        """
    ).fetchone()[0]
    statuses = dict(
        con.execute("SELECT status, count(*) FROM person_enrichment GROUP BY ALL").fetchall()
    )
    con.close()
    assert missing == 0
    assert statuses.get("matched", 0) > 0
    assert statuses.get("no_match", 0) > 0


def test_every_landed_row_is_clean_or_quarantined(sample_run) -> None:
    settings, ingest, _, _ = sample_run
    con = read_warehouse(settings.warehouse_path)
    clean_rows = con.execute("SELECT sum(row_count) FROM clean_contacts").fetchone()[0]
    validated_out = con.execute(
        "SELECT count(*) FROM quarantine WHERE stage = 'validate'"
    ).fetchone()[0]
    ingest_out = con.execute("SELECT count(*) FROM quarantine WHERE stage = 'ingest'").fetchone()[0]
    reasons = con.execute("SELECT count(*) FROM quarantine WHERE reason IS NULL").fetchone()[0]
    con.close()
    assert clean_rows + validated_out == ingest.accepted
    assert ingest_out == ingest.quarantined
    assert validated_out > 0 and reasons == 0


def test_one_crm_record_per_unique_valid_email(sample_run) -> None:
    settings, _, _, _ = sample_run
    con = read_warehouse(settings.warehouse_path)
    lead_emails = {
        r[0]
        for r in con.execute(
            "SELECT DISTINCT email FROM clean_contacts WHERE email IS NOT NULL"
        ).fetchall()
    }
    crm = [r[0] for r in con.execute("SELECT email FROM crm_contacts").fetchall()]
    con.close()
    assert len(crm) == len(set(crm))
    assert lead_emails <= set(crm)


def test_export_is_a_hubspot_ready_csv(sample_run) -> None:
    settings, _, _, _ = sample_run
    path = Path(settings.export_dir) / "crm_contacts.csv"
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    con = read_warehouse(settings.warehouse_path)
    crm_count = con.execute("SELECT count(*) FROM crm_contacts").fetchone()[0]
    con.close()
    assert len(rows) == crm_count
    assert {"Email", "First Name", "Last Name", "Company Name", "Job Title"} <= set(rows[0])
    assert len({row["Email"] for row in rows}) == len(rows)


def test_rematerialising_the_same_range_makes_no_api_calls(sample_run) -> None:
    _, _, first_run, second_run = sample_run
    assert second_run.success
    for asset in ("enriched_persons", "enriched_companies"):
        first, again = metadata_of(first_run, asset), metadata_of(second_run, asset)
        assert first["api_calls"] > 0
        assert again["api_calls"] == 0
        assert again["lookups_needed"] == 0
        assert again["calls_saved_fresh"] == again["records_in_window"] > 0


def test_metadata_names_the_provider_and_costs(sample_run) -> None:
    _, _, first_run, _ = sample_run
    persons = metadata_of(first_run, "enriched_persons")
    assert persons["provider"] == "sandbox"
    assert persons["matched"] + persons["no_match"] + persons["errors"] == persons["lookups_needed"]
    for key in ("rate_limited_429", "retries", "credits_used", "duration_s", "preview"):
        assert key in persons
