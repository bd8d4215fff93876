"""What a `kill -9` costs: a real run paced by the provider's limit is killed mid-way; it
repeats (pays again next time) at most the couple of seconds of look-ups it had not saved,
not a chunk of 200."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from enrich_pipeline.demo import materialise_command
from enrich_pipeline.ingest import ingest_file
from enrich_pipeline.sandbox import SandboxConfig
from enrich_pipeline.settings import Settings, environment_for
from enrich_pipeline_tests.conftest import REPO
from enrich_pipeline_tests.helpers import materialise_range, read_warehouse, sandbox_over_http

KEY = "dl-killed-run-key-0001"
DAY = "2026-08-03"
CONTACTS = 300
RATE_PER_S = 20
SAVE_EVERY_S = 2.0
KILL_AFTER = 150  # look-ups paid, fewer than one chunk (200)


def _write_contacts(path: Path) -> Path:
    rows = [f"lead{n}@company{n % 40}.com,Lead,Number{n},{DAY} 09:00:00" for n in range(CONTACTS)]
    path.write_text("Email,First Name,Last Name,Create Date\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.slow
def test_a_killed_run_repeats_at_most_a_couple_of_seconds_of_paid_look_ups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    settings = Settings()
    ingest_file(settings.warehouse_path, _write_contacts(tmp_path / "contacts.csv"))
    assert materialise_range(settings, DAY, DAY, assets=["clean_contacts"]).success

    # At most RATE_PER_S look-ups in any one-second window, as a provider with short windows.
    config = SandboxConfig(
        accepted_api_key=KEY, latency_ms=0, rate_limit_per_min=RATE_PER_S, rate_window_s=1
    )
    with sandbox_over_http(config) as url:
        env = {
            **os.environ,
            "DATA_LEGION_API_KEY": KEY,
            **environment_for(base_url=url, use_bulk=False, save_every_s=SAVE_EVERY_S),
        }
        command = materialise_command(DAY, DAY)
        command[command.index("*")] = "enriched_persons"
        proc = subprocess.Popen(
            command, cwd=REPO, env=env, start_new_session=True, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 120
            while httpx.get(f"{url}/_sandbox/stats").json()["items_enriched"] < KILL_AFTER:
                assert proc.poll() is None, "the run ended before it was killed"
                assert time.monotonic() < deadline, "the run did not get going"
                time.sleep(0.05)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        paid = httpx.get(f"{url}/_sandbox/stats").json()["items_enriched"]

    with read_warehouse(settings.warehouse_path) as con:
        (saved,) = con.execute(  # type: ignore[misc]
            "SELECT count(*) FROM person_enrichment WHERE status IN ('matched', 'no_match')"
        ).fetchone()
    assert paid < CONTACTS, "killed mid-way"
    assert saved > 0, "saved before the first chunk filled"
    # Unsaved look-ups are paid again by the next run: at the provider's pace, those of the
    # last save interval, with as much again for a slow machine. A chunk-only save lost all.
    assert paid - saved <= 2 * RATE_PER_S * SAVE_EVERY_S
