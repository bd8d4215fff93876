"""The graph against a provider having a bad day, over real HTTP, and with a real key: the
key never leaks, a bad key fails fast, credits running out keeps what was paid for."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from dagster import DagsterInstance

from enrich_pipeline.ingest import ingest_file
from enrich_pipeline.sandbox import SandboxConfig
from enrich_pipeline.settings import Settings
from enrich_pipeline_tests.helpers import (
    ASSET_KEYS,
    free_port,
    materialise_range,
    metadata_of,
    read_warehouse,
    sandbox_over_http,
    write_small_csv,
)

SECRET = "sk-live-DO-NOT-LEAK-4242"


def _persons(path: str) -> list[tuple]:
    con = read_warehouse(path)
    try:
        return con.execute(
            """
            SELECT identity, status, full_name, job_title, company_name, company_domain, city
            FROM person_enrichment ORDER BY identity
            """
        ).fetchall()
    finally:
        con.close()


def _landed(tmp_path: Path, name: str) -> Settings:
    settings = Settings(
        warehouse_path=str(tmp_path / name / "warehouse.duckdb"),
        export_dir=str(tmp_path / name / "exports"),
    )
    ingest_file(settings.warehouse_path, write_small_csv(tmp_path))
    return settings


def test_real_http_sandbox_with_a_key_gives_identical_results_and_never_leaks_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    in_process = _landed(tmp_path, "in_process")
    assert materialise_range(in_process, "2026-09-01", "2026-09-03").success

    over_http = _landed(tmp_path, "over_http")
    with sandbox_over_http(SandboxConfig(accepted_api_key=SECRET, latency_ms=0)) as url:
        monkeypatch.setenv("DATA_LEGION_API_KEY", SECRET)
        over_http = Settings(
            warehouse_path=over_http.warehouse_path,
            export_dir=over_http.export_dir,
            base_url=url,
        )
        with DagsterInstance.ephemeral() as instance:
            result = materialise_range(over_http, "2026-09-01", "2026-09-03", instance)
            logs = [
                record.user_message
                for record in instance.all_logs(result.run_id)
                if record.user_message
            ]
    assert result.success
    assert metadata_of(result, "enriched_persons")["provider"] == url
    assert _persons(over_http.warehouse_path) == _persons(in_process.warehouse_path)

    warehouse_bytes = Path(over_http.warehouse_path).read_bytes()
    export_text = (Path(over_http.export_dir) / "crm_contacts.csv").read_text()
    all_metadata = [str(metadata_of(result, asset)) for asset in ASSET_KEYS]
    assert SECRET.encode() not in warehouse_bytes
    assert SECRET not in export_text
    assert not any(SECRET in text for text in [*logs, *all_metadata, caplog.text])


def test_a_wrong_key_fails_the_run_at_once_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _landed(tmp_path, "wrong_key")
    with sandbox_over_http(SandboxConfig(accepted_api_key="the-right-key", latency_ms=0)) as url:
        monkeypatch.setenv("DATA_LEGION_API_KEY", SECRET)
        settings = Settings(
            warehouse_path=settings.warehouse_path,
            export_dir=settings.export_dir,
            base_url=url,
            use_bulk=False,
            max_concurrency=1,
        )
        result = materialise_range(settings, "2026-09-01", "2026-09-03", raise_on_error=False)
        served = httpx.get(f"{url}/_sandbox/stats").json()
    assert not result.success
    assert served["by_status"] == {"401": 1}, "a 401 is never retried and stops the run"
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error.message)  # type: ignore[union-attr]
    assert "DATA_LEGION_API_KEY" in message
    assert SECRET not in message
    assert failure.step_key == "enriched_persons"


def test_running_out_of_credits_keeps_what_was_paid_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _landed(tmp_path, "credits")
    monkeypatch.setenv("ENRICH_SANDBOX_CREDITS", "2")
    monkeypatch.setenv("ENRICH_SANDBOX_MATCH_RATE", "1")
    settings = Settings(
        warehouse_path=settings.warehouse_path,
        export_dir=settings.export_dir,
        use_bulk=False,
        max_concurrency=1,
        chunk_size=1,
    )
    result = materialise_range(settings, "2026-09-01", "2026-09-03", raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "credits" in str(failure.event_specific_data.error.message).lower()  # type: ignore[union-attr]
    matched = [row for row in _persons(settings.warehouse_path) if row[1] == "matched"]
    assert len(matched) == 2


def test_a_credit_budget_stops_the_run_cleanly_and_the_next_run_continues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    landed = _landed(tmp_path, "budget")
    monkeypatch.setenv("ENRICH_SANDBOX_MATCH_RATE", "1")
    settings = Settings(
        warehouse_path=landed.warehouse_path,
        export_dir=landed.export_dir,
        use_bulk=False,
        max_credits_per_run=2,
    )
    first = materialise_range(settings, "2026-09-01", "2026-09-03")
    persons = metadata_of(first, "enriched_persons")
    assert first.success
    assert persons["stopped_at_credit_budget"] is True
    assert persons["credits_used"] <= 2
    assert persons["lookups_deferred"] == persons["lookups_needed"] - persons["results_written"]
    assert len(_persons(settings.warehouse_path)) == persons["results_written"] < 5

    second = materialise_range(settings, "2026-09-01", "2026-09-03")
    assert (
        metadata_of(second, "enriched_persons")["calls_saved_fresh"] == persons["results_written"]
    )


def test_an_unreachable_provider_fails_the_run_naming_the_setting_and_keeps_the_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _landed(tmp_path, "unreachable")
    monkeypatch.setenv("DATA_LEGION_API_KEY", SECRET)
    settings = Settings(
        warehouse_path=settings.warehouse_path,
        export_dir=settings.export_dir,
        # Nothing listens there: every connection is refused.
        base_url=f"http://127.0.0.1:{free_port()}",
        max_attempts=1,
    )
    result = materialise_range(settings, "2026-09-01", "2026-09-03", raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_key == "enriched_persons"
    message = str(failure.event_specific_data.error.message)  # type: ignore[union-attr]
    assert "every one of" in message and "DATA_LEGION_BASE_URL" in message
    assert "ConnectError" in message
    assert SECRET not in message
    statuses = {row[1] for row in _persons(settings.warehouse_path)}
    assert statuses == {"error"}, "the failed look-ups are stored, to be asked again"
