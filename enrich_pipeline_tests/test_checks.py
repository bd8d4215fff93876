"""The data-quality checks pass and fail on crafted warehouses, executed by Dagster as the UI
runs them (a run of the checks alone, or with the assets over a partition range), and the
freshness policies the assets carry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetKey,
    AssetSelection,
    DagsterInstance,
    FreshnessPolicy,
    materialize,
)

from enrich_pipeline.dagster_layer.checks import QUALITY_CHECKS, QualityThresholds, with_freshness
from enrich_pipeline.definitions import build_definitions
from enrich_pipeline.ingest import ingest_file
from enrich_pipeline.provider.models import EnrichmentResult, Outcome
from enrich_pipeline.settings import Settings
from enrich_pipeline.warehouse.connection import connect
from enrich_pipeline.warehouse.contacts import rebuild_clean_contacts
from enrich_pipeline.warehouse.crm_sync import SYNC_STATE_DDL
from enrich_pipeline.warehouse.enrichment import store_companies, store_persons
from enrich_pipeline_tests.helpers import ASSET_KEYS, write_small_csv

NOW = datetime.now(UTC).replace(tzinfo=None)
DAY = datetime(2026, 9, 1)


def _resources(settings: Settings) -> dict[str, Any]:
    defs = build_definitions(settings)
    return {**defs.resources, "quality": QualityThresholds.from_settings(settings)}


def _evaluations(result: Any) -> dict[str, AssetCheckEvaluation]:
    return {
        f"{e.asset_key.to_user_string()}:{e.check_name}": e
        for e in result.get_asset_check_evaluations()
    }


def run_checks(settings: Settings) -> dict[str, AssetCheckEvaluation]:
    """Every quality check, alone in one run (no asset materialised), keyed asset:check."""
    defs = build_definitions(settings)
    result = materialize(
        [*(defs.get_assets_def(AssetKey(key)) for key in ASSET_KEYS), *QUALITY_CHECKS],
        selection=AssetSelection.checks(*QUALITY_CHECKS),
        resources=_resources(settings),
    )
    evaluations = _evaluations(result)
    assert len(evaluations) == len(QUALITY_CHECKS)
    assert not result.get_asset_materialization_events()
    return evaluations


def figures(evaluation: AssetCheckEvaluation) -> dict[str, Any]:
    return {k: v.value for k, v in evaluation.metadata.items()}


def assert_failed(evaluation: AssetCheckEvaluation, severity: AssetCheckSeverity) -> None:
    assert not evaluation.passed, evaluation.description
    assert evaluation.severity == severity


def sql(settings: Settings, statement: str, *params: Any) -> None:
    with connect(settings.warehouse_path) as con:
        con.execute(statement, list(params))


def test_an_empty_warehouse_passes_every_check(settings: Settings) -> None:
    evaluations = run_checks(settings)

    assert all(e.passed for e in evaluations.values())
    stale = evaluations["enriched_persons:stale_share_below_ceiling"]
    assert stale.description == "no person records yet"
    assert "share" not in figures(stale)


def crm_rows(settings: Settings, *emails: str) -> None:
    for email in emails:
        sql(
            settings,
            "INSERT INTO crm_contacts (email, partition_date, updated_at) VALUES (?, ?, ?)",
            email,
            DAY.date(),
            NOW,
        )


def test_duplicate_crm_emails_fail_as_an_error(settings: Settings) -> None:
    crm_rows(settings, "ada@ae.io", "grace@navy.mil")
    assert run_checks(settings)["crm_exports:no_duplicate_emails"].passed

    crm_rows(settings, "ada@ae.io", "ada@ae.io")
    check = run_checks(settings)["crm_exports:no_duplicate_emails"]

    assert_failed(check, AssetCheckSeverity.ERROR)
    assert figures(check) == {"crm_records": 4, "duplicated_emails": 1, "extra_records": 2}


def leads(settings: Settings, *rows: dict[str, str], build: bool = True) -> None:
    """Land rows (received on DAY unless they say otherwise) and, by default, build the day."""
    with connect(settings.warehouse_path) as con:
        for row in rows:
            values = {"received_at": str(DAY), **row}
            columns = ["source", "landed_at", *values]
            con.execute(
                f"INSERT INTO raw_contacts ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' for _ in columns)})",
                ["web", NOW, *values.values()],
            )
        if build:
            rebuild_clean_contacts(con, DAY.date(), DAY.date() + timedelta(days=1), NOW)


def persons(settings: Settings, *answers: tuple[str, Outcome, int]) -> None:
    """(identity, outcome, age in days) per answer."""
    with connect(settings.warehouse_path) as con:
        for identity, outcome, age in answers:
            result = EnrichmentResult(key=identity, status=outcome, error=None, record={})
            store_persons(con, [result], NOW - timedelta(days=age))


def test_a_contact_without_a_person_answer_fails_as_an_error(settings: Settings) -> None:
    leads(settings, {"email": "ada@ae.io"}, {"email": "grace@navy.mil"})
    persons(settings, ("ada@ae.io", Outcome.MATCHED, 0))

    check = run_checks(settings)["enriched_persons:every_contact_has_a_person_status"]

    assert_failed(check, AssetCheckSeverity.ERROR)
    assert figures(check) == {"contact_identities": 2, "without_person_status": 1}

    persons(settings, ("grace@navy.mil", Outcome.ERROR, 0))
    assert run_checks(settings)["enriched_persons:every_contact_has_a_person_status"].passed


@pytest.mark.parametrize(
    ("matched", "no_match", "floor", "passed"),
    [(3, 1, 0.5, True), (1, 3, 0.5, False), (1, 3, 0.2, True)],
)
def test_match_rate_against_the_configured_floor(
    settings: Settings, matched: int, no_match: int, floor: float, passed: bool
) -> None:
    settings = settings.model_copy(update={"min_match_rate": floor})
    persons(
        settings,
        *((f"m{i}@ae.io", Outcome.MATCHED, 0) for i in range(matched)),
        *((f"n{i}@ae.io", Outcome.NO_MATCH, 0) for i in range(no_match)),
        # Errors are no answer: they move neither side of the rate.
        *((f"e{i}@ae.io", Outcome.ERROR, 0) for i in range(5)),
    )

    check = run_checks(settings)["enriched_persons:match_rate_above_floor"]

    assert check.passed is passed
    assert check.severity == AssetCheckSeverity.WARN
    assert figures(check) == {
        "matched": matched,
        "no_match": no_match,
        "share": matched / (matched + no_match),
        "threshold": floor,
    }


def test_person_records_past_their_ttl_warn_above_the_ceiling(settings: Settings) -> None:
    persons(
        settings,
        ("fresh@ae.io", Outcome.MATCHED, 1),
        ("old@ae.io", Outcome.MATCHED, 40),
        ("retry@ae.io", Outcome.NO_MATCH, 20),
        ("recent@ae.io", Outcome.NO_MATCH, 5),
        ("failed@ae.io", Outcome.ERROR, 0),
    )

    check = run_checks(settings)["enriched_persons:stale_share_below_ceiling"]

    assert_failed(check, AssetCheckSeverity.WARN)
    assert figures(check) == {
        "records": 5,
        "stale": 3,
        "matched_past_ttl": 1,
        "no_match_past_retry": 1,
        "errors": 1,
        "share": 0.6,
        "threshold": 0.2,
    }
    # A longer TTL and retry window leave only the error stale: 1 of 5 is within 20%.
    longer = settings.model_copy(update={"person_ttl_days": 60, "no_match_retry_days": 30})
    assert run_checks(longer)["enriched_persons:stale_share_below_ceiling"].passed


def test_company_records_past_their_ttl_warn_above_the_ceiling(settings: Settings) -> None:
    with connect(settings.warehouse_path) as con:
        for i, age in enumerate([1, 10, 30, 89, 91]):
            result = EnrichmentResult(key=f"c{i}.example", status=Outcome.MATCHED, record={})
            store_companies(con, [result], NOW - timedelta(days=age))

    check = run_checks(settings)["enriched_companies:stale_share_below_ceiling"]
    assert check.passed
    assert figures(check)["share"] == 0.2

    stricter = settings.model_copy(update={"max_stale_share": 0.1})
    check = run_checks(stricter)["enriched_companies:stale_share_below_ceiling"]
    assert_failed(check, AssetCheckSeverity.WARN)
    assert (figures(check)["matched_past_ttl"], figures(check)["threshold"]) == (1, 0.1)


def test_the_quarantine_share_counts_rows_checked_so_far(settings: Settings) -> None:
    good = [{"email": f"p{i}@ae.io"} for i in range(19)]
    leads(settings, *good, {"email": "not-an-email"})
    # One bad row in twenty: 5%, on the ceiling.
    assert run_checks(settings)["clean_contacts:quarantine_share_below_ceiling"].passed

    # A row refused at landing counts too; a day not built yet is not checked yet.
    sql(
        settings,
        "INSERT INTO quarantine (stage, reason, quarantined_at) VALUES ('ingest', 'bad date', ?)",
        NOW,
    )
    leads(settings, {"email": "bad@", "received_at": "2026-09-02 10:00"}, build=False)
    check = run_checks(settings)["clean_contacts:quarantine_share_below_ceiling"]

    assert_failed(check, AssetCheckSeverity.WARN)
    assert figures(check) == {
        "rows_checked": 21,
        "quarantined": 2,
        "refused_at_ingest": 1,
        "quarantined_at_validation": 1,
        "share": round(2 / 21, 4),
        "threshold": 0.05,
    }


def test_the_checks_run_with_the_assets_over_a_partition_range(
    settings: Settings, tmp_path: Path
) -> None:
    ingest_file(settings.warehouse_path, write_small_csv(tmp_path))
    defs = build_definitions(settings)

    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [*(defs.get_assets_def(AssetKey(key)) for key in ASSET_KEYS), *QUALITY_CHECKS],
            resources=_resources(settings),
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": "2026-09-01",
                "dagster/asset_partition_range_end": "2026-09-03",
            },
        )

    assert result.success
    evaluations = _evaluations(result)
    # One evaluation per check for the whole range, judged after the assets wrote.
    assert len(result.get_asset_check_evaluations()) == len(QUALITY_CHECKS)
    assert evaluations["enriched_persons:every_contact_has_a_person_status"].passed
    assert evaluations["crm_exports:no_duplicate_emails"].passed
    # The small CSV is messy on purpose: 2 of its 8 rows cannot be used.
    quarantine = evaluations["clean_contacts:quarantine_share_below_ceiling"]
    assert_failed(quarantine, AssetCheckSeverity.WARN)
    assert (figures(quarantine)["quarantined"], figures(quarantine)["rows_checked"]) == (2, 8)


def test_enrichment_assets_carry_freshness_policies_from_the_ttls() -> None:
    settings = Settings(person_ttl_days=7, company_ttl_days=60)
    defs = build_definitions(settings)
    assets = with_freshness([defs.get_assets_def(AssetKey(key)) for key in ASSET_KEYS], settings)

    policies = {}
    for asset in assets:
        (spec,) = asset.specs
        policies[spec.key.to_user_string()] = spec.freshness_policy
        # Everything else about the asset is as defined.
        original = defs.get_assets_def(spec.key)
        assert asset.partitions_def == original.partitions_def
        assert asset.backfill_policy == original.backfill_policy

    assert policies == {
        "clean_contacts": None,
        "enriched_persons": FreshnessPolicy.time_window(fail_window=timedelta(days=7)),
        "enriched_companies": FreshnessPolicy.time_window(fail_window=timedelta(days=60)),
        "crm_exports": FreshnessPolicy.time_window(fail_window=timedelta(days=7)),
    }


def test_records_waiting_for_hubspot_warn_with_how_many(settings: Settings) -> None:
    crm_rows(settings, "ada@ae.io", "grace@navy.mil", "alan@bletchley.uk")
    assert run_checks(settings)["crm_exports:every_record_reached_hubspot"].description == (
        "hubspot is not a destination"
    )

    settings = settings.model_copy(update={"crm_destinations": ["file", "hubspot"]})
    sql(settings, SYNC_STATE_DDL)
    for email, status in (("ada@ae.io", "sent"), ("grace@navy.mil", "failed")):
        sql(
            settings,
            "INSERT INTO crm_sync_state VALUES ('hubspot', ?, 'f', ?, NULL, NULL, ?, NULL, 'p', ?)",
            email,
            status,
            NOW,
            NOW,
        )
    check = run_checks(settings)["crm_exports:every_record_reached_hubspot"]

    assert_failed(check, AssetCheckSeverity.WARN)
    assert figures(check) == {"waiting": 2, "failed": 1, "never_sent": 1}
    assert "2 CRM records wait for HubSpot" in (check.description or "")
