"""The provider's raw answer, minimised and kept only for a while: ``raw`` holds only the fields
the field profile asks for, whatever the provider answers, and every enrichment run (the stale
refresh's among them) clears it once older than ENRICH_RAW_RETENTION_DAYS; 0 keeps none."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from enrich_pipeline.field_profiles import PROFILES, field_profile
from enrich_pipeline.ingest import ingest_file
from enrich_pipeline.sandbox import app as sandbox_app
from enrich_pipeline.settings import Settings
from enrich_pipeline.warehouse.connection import connect
from enrich_pipeline_tests.helpers import (
    materialise_range,
    metadata_of,
    read_warehouse,
    write_small_csv,
)

FIRST, LAST = "2026-09-01", "2026-09-03"
KEYS = {"person_enrichment": "identity", "company_enrichment": "domain"}


def landed(tmp_path: Path, **values: Any) -> Settings:
    """The small CSV landed; every identifier matches, so every record has an answer."""
    settings = Settings(match_rate=1.0, **values)
    ingest_file(settings.warehouse_path, write_small_csv(tmp_path))
    return settings


def raw_answers(settings: Settings, table: str) -> dict[str, dict[str, Any] | None]:
    """Each matched record's stored raw answer, by key."""
    with read_warehouse(settings.warehouse_path) as con:
        rows = con.execute(
            f"SELECT {KEYS[table]}, raw FROM {table} WHERE status = 'matched'"
        ).fetchall()
    assert rows, f"no matched record in {table}"
    return {key: None if raw is None else json.loads(raw) for key, raw in rows}


def stored_fields(settings: Settings, table: str) -> set[str]:
    answers = raw_answers(settings, table).values()
    assert all(answer for answer in answers), f"a matched record in {table} has no raw answer"
    return {name for answer in answers if answer for name in answer}


@pytest.mark.parametrize("profile", list(PROFILES))
def test_raw_holds_only_the_fields_the_profile_asks_for(tmp_path: Path, profile: str) -> None:
    settings = landed(tmp_path, field_profile=profile)

    assert materialise_range(settings, FIRST, LAST).success

    asked = field_profile(profile)
    assert stored_fields(settings, "person_enrichment") <= set(asked.person_fields)
    assert stored_fields(settings, "company_enrichment") <= set(asked.company_fields)


def test_a_provider_answering_more_than_asked_still_leaves_only_the_profiles_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sandbox as a provider that ignores include_fields: every answer is the whole record.
    answered: set[str] = set()

    def whole_record(record: dict[str, Any], **options: str | None) -> dict[str, Any]:
        answered.update(record)
        return record

    monkeypatch.setattr(sandbox_app, "shape_record", whole_record)
    settings = landed(tmp_path, field_profile="lead_scoring")

    assert materialise_range(settings, FIRST, LAST).success

    assert {"emails", "phones", "experience", "legion_employee_growth_rate"} <= answered
    asked = field_profile("lead_scoring")
    assert stored_fields(settings, "person_enrichment") <= set(asked.person_fields)
    assert stored_fields(settings, "company_enrichment") <= set(asked.company_fields)
    # Nor do the columns keep what the profile did not ask for (names, contact details).
    with read_warehouse(settings.warehouse_path) as con:
        kept = con.execute(
            "SELECT count(full_name), count(work_email), count(mobile_phone), count(job_title) "
            "FROM person_enrichment"
        ).fetchone()
    assert kept is not None
    assert kept[:3] == (0, 0, 0) and kept[3] > 0


def test_raw_answers_past_the_retention_are_cleared_across_the_table_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENRICH_RAW_RETENTION_DAYS", "7")
    settings = landed(tmp_path)
    first_run = materialise_range(settings, FIRST, LAST)
    assert first_run.success
    # Ten days ago: past the 7-day retention, still inside the person and company TTLs.
    with connect(settings.warehouse_path) as con:
        # No RETURNING: DuckDB's postgres extension has none for UPDATE (--warehouse=postgres).
        day = "status = 'matched' AND identity IN (SELECT identity FROM clean_contacts "
        day += "WHERE partition_date = DATE '2026-09-02')"
        old_persons = {
            identity
            for (identity,) in con.execute(
                f"SELECT identity FROM person_enrichment WHERE {day}"
            ).fetchall()
        }
        con.execute(
            f"UPDATE person_enrichment SET enriched_at = enriched_at - INTERVAL 10 DAY WHERE {day}"
        )
        (old_company,) = con.execute(
            "SELECT min(domain) FROM company_enrichment WHERE status = 'matched'"
        ).fetchone()
        con.execute(
            "UPDATE company_enrichment SET enriched_at = enriched_at - INTERVAL 10 DAY "
            "WHERE domain = ?",
            [old_company],
        )
    assert old_persons

    # A run over another day: the retention holds for the whole table, not the run's window.
    second_run = materialise_range(settings, FIRST, FIRST)

    assert second_run.success
    assert metadata_of(first_run, "enriched_persons")["raw_answers_cleared"] == 0
    assert metadata_of(second_run, "enriched_persons")["raw_answers_cleared"] == len(old_persons)
    assert metadata_of(second_run, "enriched_companies")["raw_answers_cleared"] == 1
    assert metadata_of(second_run, "enriched_persons")["api_calls"] == 0
    persons = raw_answers(settings, "person_enrichment")
    companies = raw_answers(settings, "company_enrichment")
    assert {key for key, raw in persons.items() if raw is None} == old_persons
    assert {key for key, raw in companies.items() if raw is None} == {old_company}
    # The profile's columns stay: only the raw answer goes.
    with read_warehouse(settings.warehouse_path) as con:
        titles = con.execute(
            "SELECT count(job_title) FROM person_enrichment WHERE list_contains($old, identity)",
            {"old": sorted(old_persons)},
        ).fetchone()
    assert titles == (len(old_persons),)


def test_a_retention_of_zero_stores_no_raw_answer(tmp_path: Path) -> None:
    settings = landed(tmp_path, raw_retention_days=0)

    run = materialise_range(settings, FIRST, LAST)

    assert run.success
    assert metadata_of(run, "enriched_persons")["matched"] > 0
    for table in KEYS:
        assert all(raw is None for raw in raw_answers(settings, table).values())


def test_a_retention_lowered_to_zero_clears_every_raw_answer_kept_before(tmp_path: Path) -> None:
    settings = landed(tmp_path)
    assert materialise_range(settings, FIRST, LAST).success
    kept = {table: len(raw_answers(settings, table)) for table in KEYS}

    run = materialise_range(settings.model_copy(update={"raw_retention_days": 0}), FIRST, LAST)

    assert run.success
    assert metadata_of(run, "enriched_persons")["raw_answers_cleared"] == kept["person_enrichment"]
    assert (
        metadata_of(run, "enriched_companies")["raw_answers_cleared"] == kept["company_enrichment"]
    )
    for table in KEYS:
        assert all(raw is None for raw in raw_answers(settings, table).values())
