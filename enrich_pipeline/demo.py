"""``make demo``: land the sample contacts, materialise all four assets over the sample's whole
date range as one run with the real Dagster CLI, and print what happened."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from dagster import AssetKey, DagsterInstance

from enrich_pipeline.dagster_layer.run_workers import fail_dead_runs
from enrich_pipeline.destinations.files import export_paths
from enrich_pipeline.ingest import ingest_file
from enrich_pipeline.settings import SettingError, Settings
from enrich_pipeline.warehouse.connection import connect, describe

SAMPLE = Path("data/sample_contacts.csv")


def materialise_command(first: str, last: str) -> list[str]:
    """The Dagster CLI call that materialises all four assets over ``first...last`` as one run."""
    beside_python = Path(sys.executable).with_name("dagster")
    cli = str(beside_python) if beside_python.exists() else (shutil.which("dagster") or "dagster")
    return [
        cli,
        "asset",
        "materialize",
        "-m",
        "enrich_pipeline.definitions",
        "--select",
        "*",
        "--partition-range",
        f"{first}...{last}",
    ]


def _run_metadata(instance: DagsterInstance, asset: str) -> dict[str, object]:
    event = instance.get_latest_materialization_event(AssetKey(asset))
    if event is None or event.asset_materialization is None:
        return {}
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    report = ingest_file(
        settings.warehouse_path,
        SAMPLE,
        skip_if_landed=True,
        memory_limit=settings.ingest_memory_limit,
    )
    if report.already_landed:
        print(f"{SAMPLE}: already landed earlier ({report.rows_read} rows); not landed twice")
    else:
        print(
            f"{SAMPLE}: {report.rows_read} rows read, {report.accepted} landed, "
            f"{report.quarantined} quarantined at ingest"
        )
    with connect(settings.warehouse_path) as con:
        first, last = con.execute(
            "SELECT min(received_at)::DATE, max(received_at)::DATE FROM raw_contacts"
        ).fetchone()  # type: ignore[misc]
    partition_range = f"{first}...{last}"
    # A demo run killed earlier would hold its pool slot and block this one.
    with DagsterInstance.get() as instance:
        for dead in fail_dead_runs(instance):
            print(f"An earlier run ({dead.run_id}) was killed: marked failed, its slots freed")
    print(f"Materialising all four assets over {partition_range} as one run ...")
    materialise_started = time.monotonic()
    done = subprocess.run(
        materialise_command(str(first), str(last)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if done.returncode != 0:
        # The run's own log says why; without it the user sees only an exit status.
        if done.stderr:
            print(done.stderr[-4000:], file=sys.stderr)
        print("The materialisation failed: see the Dagster log above.", file=sys.stderr)
        return done.returncode
    materialise_s = time.monotonic() - materialise_started

    with connect(settings.warehouse_path) as con:
        landed = con.execute("SELECT count(*) FROM raw_contacts").fetchone()[0]  # type: ignore[index]
        quarantined = con.execute("SELECT count(*) FROM quarantine").fetchone()[0]  # type: ignore[index]
        statuses = dict(
            con.execute("SELECT status, count(*) FROM person_enrichment GROUP BY ALL").fetchall()
        )
        companies = con.execute(
            "SELECT count(*) FILTER (WHERE status = 'matched'), count(*) FROM company_enrichment"
        ).fetchone()
        crm = con.execute("SELECT count(*) FROM crm_contacts").fetchone()[0]  # type: ignore[index]
    instance = DagsterInstance.get()
    persons_run = _run_metadata(instance, "enriched_persons")
    companies_run = _run_metadata(instance, "enriched_companies")
    csv_path, parquet_path = export_paths(settings.export_dir)
    calls = int(persons_run.get("api_calls", 0)) + int(companies_run.get("api_calls", 0))
    saved = int(persons_run.get("calls_saved_fresh", 0)) + int(
        companies_run.get("calls_saved_fresh", 0)
    )
    print()
    print("enrich_pipeline demo")
    print(f"  provider            {persons_run.get('provider', 'unknown')}")
    print(f"  contacts landed     {landed} rows in raw_contacts")
    print(f"  quarantined         {quarantined} rows (table quarantine, with reasons)")
    print(
        f"  persons             {statuses.get('matched', 0)} matched, "
        f"{statuses.get('no_match', 0)} no match, {statuses.get('error', 0)} errors"
    )
    print(f"  companies           {companies[0]} matched of {companies[1]} domains")  # type: ignore[index]
    print(f"  CRM records         {crm} (one per email, table crm_contacts)")
    print(f"  API calls this run  {calls} ({saved} look-ups skipped: still fresh)")
    print(
        f"  time                {materialise_s:.1f}s materialising, "
        f"{time.monotonic() - started:.1f}s in all"
    )
    print(f"  export, HubSpot CSV {csv_path.resolve()}")
    print(f"  export, Parquet     {parquet_path.resolve()}")
    print(f"  warehouse           {describe(settings.warehouse_path)}")
    print(
        "  next                `make dev`: the Dagster UI on http://127.0.0.1:3000 and the "
        "intake API on http://127.0.0.1:8000/docs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
