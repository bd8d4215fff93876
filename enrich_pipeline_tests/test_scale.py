"""Past one machine, at a small size: two intake services taking leads at once and three
overlapping Dagster runs, processes that share nothing but the Postgres warehouse, one API key
on a provider with fixed windows and one HubSpot stand-in (``benchmarks/bench_scale.py``'s
scenario, which `make bench-scale` runs at a realistic size)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_scale import Sizes, scenario

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

# Four or five 6 s windows of look-ups (two or three busy ones), small enough for two busy cores.
SMALL = Sizes(
    days=8,
    per_day=400,
    companies=200,
    intake_leads=200,
    limit=1200,
    window_s=6,
    latency_ms=100,
    posting_s=12.0,
    run_timeout_s=120.0,
    settle_s=60.0,
)
# The issue's 95% utilisation is `make bench-scale`'s to show, over a dozen busy 10 s windows
# of 2,000 look-ups (99.5% there). Here the two or three busy 6 s windows do not average out a
# stall: a machine whose chunk write waits for the warehouse's writer lock (seconds, while
# landings, builds and other machines' writes take turns) stops sending meanwhile, because the
# write runs on its client's event loop, and when every machine is stalled at once the window
# goes mostly unused. Measured at this size over about twenty runs: 58% to 100%, each low figure
# one window of 125 to 900 look-ups during such waits. What holds in every run, and says the
# machines together pace up to the one key's limit, is that some window is full.
FULL = 0.95


def test_machines_sharing_only_the_database_lose_no_lead_and_pay_for_nobody_twice(
    postgres_database: str, tmp_path: Path
) -> None:
    figures = scenario(postgres_database, tmp_path, SMALL, log=lambda message: None)

    assert all(run.success for run in figures.runs), [run.error for run in figures.runs]
    assert figures.acknowledged == figures.leads
    assert figures.journals_landed
    assert figures.lost == 0
    assert figures.landed == figures.acknowledged
    assert figures.landed_twice == 0
    # Re-posts at the other service were answered as what they are.
    assert figures.answered_as_replay == figures.reposted > 0
    assert figures.errors == 0
    assert figures.lookups == figures.identities, figures.asked_again
    # The key was the bottleneck: in some window the limiter counted (close to) its whole limit.
    assert max(figures.every_window, default=0) >= FULL * SMALL.limit, figures.every_window
    assert figures.hubspot_missing == figures.hubspot_extra == 0
    assert figures.hubspot_contacts == figures.hubspot_expected
