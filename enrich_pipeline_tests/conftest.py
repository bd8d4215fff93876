"""Shared fixtures: a temp warehouse and export dir, a quiet fast sandbox, and the sample CSV."""

from __future__ import annotations

from pathlib import Path

import pytest

from enrich_pipeline.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CSV = REPO / "data" / "sample_contacts.csv"


@pytest.fixture(autouse=True)
def _no_real_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never reach a real provider and never wait on the sandbox's simulated latency."""
    monkeypatch.delenv("DATA_LEGION_API_KEY", raising=False)
    monkeypatch.delenv("DATA_LEGION_BASE_URL", raising=False)
    monkeypatch.setenv("ENRICH_SANDBOX_LATENCY_MS", "0")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        warehouse_path=str(tmp_path / "warehouse.duckdb"),
        export_dir=str(tmp_path / "exports"),
    )
