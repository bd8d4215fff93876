"""The code location loads the way users load it: the CLI, the asset graph, the partitions, the
provider chosen by whether a key is set, and settings read only when the location loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, BackfillPolicy, DailyPartitionsDefinition

from enrich_pipeline.dagster_layer.resources import (
    DataLegionResource,
    SandboxEnrichmentResource,
)
from enrich_pipeline.definitions import build_definitions
from enrich_pipeline.settings import SettingError, Settings
from enrich_pipeline_tests.conftest import REPO
from enrich_pipeline_tests.helpers import ASSET_KEYS


@pytest.mark.slow
def test_dagster_cli_validates_the_module(tmp_path: Path) -> None:
    dagster = Path(sys.executable).with_name("dagster")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    done = subprocess.run(
        [str(dagster), "definitions", "validate", "-m", "enrich_pipeline.definitions"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Validation successful" in done.stderr + done.stdout


def test_the_assets_share_daily_partitions_from_the_configured_start() -> None:
    defs = build_definitions(Settings(partition_start="2025-06-01"))
    for key in ASSET_KEYS:
        asset = defs.get_assets_def(AssetKey(key))
        assert isinstance(asset.partitions_def, DailyPartitionsDefinition)
        assert asset.partitions_def.start.strftime("%Y-%m-%d") == "2025-06-01"
        assert asset.backfill_policy == BackfillPolicy.single_run()
    job = defs.resolve_job_def("enrich_contacts")
    assert job.partitions_def is not None
    assert job.partitions_def.get_first_partition_key() == "2025-06-01"


def test_contacts_land_upstream_of_the_enrichment_chain() -> None:
    graph = build_definitions(Settings()).resolve_asset_graph()
    parents = {key: graph.get(AssetKey(key)).parent_keys for key in ASSET_KEYS}
    assert parents == {
        "clean_contacts": {AssetKey("raw_contacts")},
        "enriched_persons": {AssetKey("clean_contacts")},
        "enriched_companies": {AssetKey("enriched_persons")},
        "crm_exports": {AssetKey("enriched_companies")},
    }
    # Landed by `enrich-pipeline ingest`, not materialised by Dagster.
    assert not graph.get(AssetKey("raw_contacts")).is_materializable


def test_the_sandbox_is_a_resource_of_its_own_with_its_settings_as_configuration() -> None:
    resource = build_definitions(Settings(match_rate=0.4)).resources["enrichment"]
    assert isinstance(resource, SandboxEnrichmentResource)
    assert resource.provider == "sandbox"
    assert resource.match_rate == 0.4
    assert resource.latency_ms == 0  # from the environment the tests set


def test_with_a_key_the_real_provider_gets_it_through_envvar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATA_LEGION_API_KEY", "k-123")
    resource = build_definitions(Settings(base_url="https://example.test/")).resources["enrichment"]
    assert isinstance(resource, DataLegionResource)
    assert resource.provider == "https://example.test"
    # The key stays an EnvVar reference in the definitions, resolved only when a run starts.
    assert "k-123" not in repr(resource)


def test_a_bad_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICH_PERSON_TTL_DAYS", "thirty")
    with pytest.raises(SettingError, match="ENRICH_PERSON_TTL_DAYS='thirty'"):
        Settings.from_env()
    monkeypatch.delenv("ENRICH_PERSON_TTL_DAYS")
    monkeypatch.setenv("ENRICH_USE_BULK", "maybe")
    with pytest.raises(SettingError, match="ENRICH_USE_BULK"):
        Settings.from_env()
    monkeypatch.setenv("ENRICH_USE_BULK", "false")
    monkeypatch.setenv("ENRICH_BULK_SIZE", "500")
    monkeypatch.setenv("ENRICH_CRM_DESTINATIONS", " File , hubspot")
    settings = Settings.from_env()
    assert (settings.use_bulk, settings.bulk_size) == (False, 100)
    assert settings.crm_destinations == ["file", "hubspot"]


@pytest.mark.slow
def test_importing_the_code_location_reads_no_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    # A broken value fails where the location is loaded (with the variable named), not at import.
    monkeypatch.setenv("ENRICH_PARTITION_START", "not-a-date")
    code = "import enrich_pipeline.definitions, enrich_pipeline.dagster_layer.partitions"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with pytest.raises(SettingError, match="ENRICH_PARTITION_START"):
        Settings.from_env()
