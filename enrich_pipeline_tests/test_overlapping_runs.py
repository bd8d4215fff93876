"""Runs that overlap (a backfill, a sensor's run, the stale refresh) pay for an identity once:
two real processes enrich overlapping windows of one warehouse against one provider."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from enrich_pipeline.definitions import build_definitions
from enrich_pipeline.ingest import ingest_file
from enrich_pipeline.sandbox import SandboxConfig
from enrich_pipeline.settings import Settings, environment_for
from enrich_pipeline_tests.helpers import (
    in_processes_together,
    materialise_range,
    metadata_of,
    read_warehouse,
    sandbox_over_http,
)

KEY = "dl-overlap-key-0001"
DAYS = [f"2026-08-{day:02d}" for day in range(1, 11)]
PER_DAY = 30


def _write_contacts(path: Path) -> Path:
    lines = ["Email,First Name,Last Name,Create Date"]
    for day_index, day in enumerate(DAYS):
        for i in range(PER_DAY):
            n = day_index * PER_DAY + i
            lines.append(f"lead{n}@company{n % 40}.com,Lead,Number{n},{day} 09:00:00")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _enrich_persons(first: str, last: str, start: Any, results: Any) -> None:
    settings = Settings()
    build_definitions(settings)  # imports and builds before the start line, not after it
    start.wait()
    result = materialise_range(
        settings, first, last, raise_on_error=False, assets=["enriched_persons"]
    )
    metadata = metadata_of(result, "enriched_persons") if result.success else {}
    results.put((result.success, metadata.get("lookups_done_by_other_runs")))


@pytest.mark.slow
def test_overlapping_runs_look_each_person_up_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings()
    ingest_file(settings.warehouse_path, _write_contacts(tmp_path / "contacts.csv"))
    assert materialise_range(settings, DAYS[0], DAYS[-1], assets=["clean_contacts"]).success

    # Slow answers, so each run is still looking up when the other selects its window.
    config = SandboxConfig(accepted_api_key=KEY, latency_ms=400)
    with sandbox_over_http(config) as url:
        monkeypatch.setenv("DATA_LEGION_API_KEY", KEY)
        for name, value in environment_for(base_url=url).items():
            monkeypatch.setenv(name, value)
        finished = in_processes_together(
            _enrich_persons, [(first, DAYS[-1]) for first in (DAYS[0], DAYS[4])]
        )
        served = httpx.get(f"{url}/_sandbox/stats").json()

    assert all(success for success, _ in finished)
    with read_warehouse(settings.warehouse_path) as con:
        (stored,) = con.execute(
            "SELECT count(*) FROM person_enrichment WHERE status IN ('matched', 'no_match')"
        ).fetchone()
    assert stored == len(DAYS) * PER_DAY
    # Each person was asked for once, though the second window lies inside the first.
    assert served["items_enriched"] == stored
    # The runs did overlap: one waited for the other's look-ups instead of making its own.
    assert sum(done for _, done in finished) > 0
