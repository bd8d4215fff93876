"""The code location loads the way users load it: the CLI, the four asset keys, the partitions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, BackfillPolicy, DailyPartitionsDefinition

from enrich_pipeline.definitions import build_definitions
from enrich_pipeline.settings import SettingError, Settings
from enrich_pipeline_tests.conftest import REPO
from enrich_pipeline_tests.helpers import ASSET_KEYS


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


def test_four_assets_share_daily_partitions_and_single_run_backfills() -> None:
    defs = build_definitions(Settings())
    for key in ASSET_KEYS:
        asset = defs.get_assets_def(AssetKey(key))
        assert isinstance(asset.partitions_def, DailyPartitionsDefinition)
        assert asset.partitions_def.start.strftime("%Y-%m-%d") == "2024-01-01"
        assert asset.backfill_policy is not None
        assert asset.backfill_policy == BackfillPolicy.single_run()
    graph = defs.resolve_asset_graph()
    assert graph.get(AssetKey("crm_exports")).parent_keys == {AssetKey("enriched_companies")}
    assert graph.get(AssetKey("enriched_persons")).parent_keys == {AssetKey("raw_contacts")}


def test_the_sandbox_is_used_without_a_key_and_the_key_comes_through_envvar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    no_key = build_definitions(Settings()).resources["enrichment"]
    assert no_key.provider == "sandbox"
    monkeypatch.setenv("DATA_LEGION_API_KEY", "k-123")
    with_key = build_definitions(Settings(base_url="https://example.test")).resources["enrichment"]
    assert with_key.provider == "https://example.test"
    # The key stays an EnvVar reference in the definitions, resolved only when a run starts.
    assert "k-123" not in repr(with_key)


def test_a_bad_setting_names_the_variable() -> None:
    with pytest.raises(SettingError, match="ENRICH_PERSON_TTL_DAYS"):
        Settings.from_env({"ENRICH_PERSON_TTL_DAYS": "thirty"})
    with pytest.raises(SettingError, match="ENRICH_USE_BULK"):
        Settings.from_env({"ENRICH_USE_BULK": "maybe"})
    assert Settings.from_env({"ENRICH_BULK_SIZE": "500"}).bulk_size == 100
