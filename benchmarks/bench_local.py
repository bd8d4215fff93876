"""``make bench-local``: the per-contact work that is not an API call, at 1,000,000 contacts.

Lands N synthetic contacts, enriches them once against the in-process sandbox with latency and
rate limit off, then times, in the same run:
  * a second materialisation of all four assets over the whole range with the real Dagster CLI
    (everything fresh: zero API calls), and its peak memory (largest process);
  * the same joins written as plain DuckDB SQL on one connection (the floor).
Also lands the CSV, and a file four times as large, with `enrich-pipeline ingest`, and reports
each one's peak memory. Targets: the materialisation within 5x the plain SQL, its peak memory
under 2 GB; landing a file under 1 GB whatever its size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import duckdb
from dagster import DagsterInstance

from enrich_pipeline.dagster_layer.assets import PIPELINE_ASSETS
from enrich_pipeline.demo import materialise_command
from enrich_pipeline.normalise import FREE_MAIL_DOMAINS
from enrich_pipeline.settings import SecretSettings, environment_for
from enrich_pipeline.settings_base import env_name

START = date(2025, 1, 1)
DAYS = 100


def write_contacts_csv(path: Path, n: int) -> None:
    """Synthetic HubSpot-style export: work and free-mail emails, a bounded set of phones,
    some phone-only and name+company leads, repeats across days."""
    con = duckdb.connect()
    con.execute(
        f"""
        COPY (
            SELECT
                CASE
                    WHEN i % 25 = 0 THEN NULL
                    WHEN i % 5 = 0 THEN 'Person' || (i % 900000) || '@gmail.com'
                    ELSE ' person' || (i % 900000) || '@Company' || (i % 40000) || '.com'
                END AS "Email",
                'First' || (i % 997) AS "First Name",
                'Last' || (i % 1009) AS "Last Name",
                CASE WHEN i % 3 = 0 THEN '(415) 555-' || lpad((i % 10000)::VARCHAR, 4, '0')
                END AS "Phone Number",
                'Company ' || (i % 40000) AS "Company Name",
                CASE WHEN i % 4 = 0 THEN 'https://www.company' || (i % 40000) || '.com/' END
                    AS "Website URL",
                CASE WHEN i % 7 = 0 THEN 'Web Form' ELSE 'Partner Sync' END AS "Lead Source",
                strftime(TIMESTAMP '{START}' + to_seconds((i * 8640 // {n}) * {DAYS} * 10),
                         '%Y-%m-%d %H:%M:%S') AS "Create Date"
            FROM range({n}) t(i)
        ) TO '{path}' (HEADER, DELIMITER ',')
        """
    )
    con.close()


# Runs a command and prints the peak RSS (KiB) of its largest process, so each
# materialisation's memory is measured on its own.
_PEAK_RSS = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def with_peak_memory(command: list[str], repo: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall time (s) and peak memory (MB, its largest process) of one command."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, *command],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:3])} failed:\n{done.stderr[-4000:]}")
    elapsed = time.perf_counter() - started
    return elapsed, int(done.stdout.strip().splitlines()[-1]) / 1024


def dagster_materialise(
    repo: Path, env: dict[str, str], first: str, last: str
) -> tuple[float, float]:
    """Wall time (s) and peak memory (MB) of one CLI materialisation of the whole range."""
    return with_peak_memory(materialise_command(first, last), repo, env)


def cli_ingest(repo: Path, env: dict[str, str], csv_path: Path) -> tuple[float, float]:
    """Wall time (s) and peak memory (MB) of `enrich-pipeline ingest` landing one file."""
    cli = Path(sys.executable).with_name("enrich-pipeline")
    return with_peak_memory([str(cli), "ingest", str(csv_path)], repo, env)


def step_durations(dagster_home: Path) -> dict[str, float]:
    """Each asset's own ``duration_s`` from its latest materialisation."""
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    with DagsterInstance.get() as instance:
        durations = {}
        for asset in PIPELINE_ASSETS:
            event = instance.get_latest_materialization_event(asset.key)
            materialisation = event.asset_materialization if event else None
            if materialisation is not None:
                durations[asset.key.to_user_string()] = float(
                    materialisation.metadata["duration_s"].value
                )
    return durations


PLAIN_SQL = """
CREATE OR REPLACE TEMP TABLE w AS
SELECT
    coalesce(c.email, 'phone:' || c.phone) AS identity,
    CAST(r.received_at AS DATE) AS d,
    r.received_at, r.first_name, r.last_name, r.company_name, c.phone, c.email,
    coalesce(
        nullif(regexp_extract(lower(r.website),
            '^(?:[a-z]+://)?(?:www\\.)?([a-z0-9-]+(?:\\.[a-z0-9-]+)+)', 1), ''),
        CASE WHEN NOT list_contains($free, split_part(c.email, '@', 2))
             THEN split_part(c.email, '@', 2) END) AS company_domain
FROM raw_contacts r JOIN contact_checks c USING (ingest_id)
WHERE coalesce(c.email, c.phone) IS NOT NULL;

CREATE OR REPLACE TEMP TABLE leads AS
SELECT d, identity, any_value(email) AS email,
       arg_max(first_name, received_at) AS first_name,
       arg_max(last_name, received_at) AS last_name,
       arg_max(phone, received_at) AS phone,
       arg_max(company_name, received_at) AS company_name,
       arg_max(company_domain, received_at) AS company_domain,
       max(received_at) AS last_received_at
FROM w GROUP BY d, identity;

SELECT count(*) FILTER (WHERE p.identity IS NULL OR p.enriched_at < now() - INTERVAL 30 DAY)
FROM (SELECT DISTINCT identity FROM leads) l LEFT JOIN person_enrichment p USING (identity);

SELECT count(*) FILTER (WHERE e.domain IS NULL OR e.enriched_at < now() - INTERVAL 90 DAY)
FROM (SELECT DISTINCT coalesce(p.company_domain, l.company_domain) AS domain
      FROM leads l LEFT JOIN person_enrichment p USING (identity)) d
LEFT JOIN company_enrichment e USING (domain);

CREATE OR REPLACE TEMP TABLE merged AS
SELECT coalesce(l.email, lower(p.work_email)) AS email,
       coalesce(arg_max(l.first_name, l.last_received_at), any_value(p.first_name)) AS first_name,
       coalesce(arg_max(l.last_name, l.last_received_at), any_value(p.last_name)) AS last_name,
       arg_max(l.phone, l.last_received_at) AS phone,
       any_value(p.job_title) AS job_title,
       coalesce(any_value(co.name), arg_max(l.company_name, l.last_received_at)) AS company_name,
       any_value(co.industry) AS industry,
       any_value(co.employee_count) AS employee_count
FROM leads l
LEFT JOIN person_enrichment p USING (identity)
LEFT JOIN company_enrichment co ON co.domain = coalesce(p.company_domain, l.company_domain)
WHERE coalesce(l.email, p.work_email) IS NOT NULL
GROUP BY 1;

COPY (SELECT * FROM merged ORDER BY email) TO $out (HEADER, DELIMITER ',');
"""


def plain_sql(warehouse: Path, out: Path) -> float:
    con = duckdb.connect(str(warehouse))
    started = time.perf_counter()
    for statement in filter(str.strip, PLAIN_SQL.split(";")):
        params = {}
        if "$free" in statement:
            params["free"] = sorted(FREE_MAIL_DOMAINS)
        if "$out" in statement:
            params["out"] = str(out)
        con.execute(statement, params).fetchall()
    elapsed = time.perf_counter() - started
    con.close()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the warehouse and CSV")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parents[1]
    work = Path(tempfile.mkdtemp(prefix="bench-local-"))
    warehouse, exports = work / "warehouse.duckdb", work / "exports"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(work / "dagster_home"),
        **environment_for(
            warehouse_path=warehouse,
            export_dir=exports,
            latency_ms=0,
            rate_limit_per_min=None,
            chunk_size=5000,
        ),
    }
    env.pop(env_name(SecretSettings, "data_legion_api_key"), None)
    (work / "dagster_home").mkdir()
    shutil.copy(repo / "dagster.yaml", work / "dagster_home" / "dagster.yaml")
    first, last = START.isoformat(), (START + timedelta(days=DAYS - 1)).isoformat()
    try:
        csv_path = work / "contacts.csv"
        write_contacts_csv(csv_path, args.contacts)
        ingest_s, ingest_mb = cli_ingest(repo, env, csv_path)
        print(
            f"landed {args.contacts:,} rows in {ingest_s:.1f}s, peak {ingest_mb:.0f} MB", flush=True
        )
        # Memory must not grow with the file: a file four times as large, landed on its own.
        large_csv = work / "contacts_x4.csv"
        write_contacts_csv(large_csv, 4 * args.contacts)
        large_env = {**env, **environment_for(warehouse_path=work / "large.duckdb")}
        large_s, large_mb = cli_ingest(repo, large_env, large_csv)
        large_mb_file = large_csv.stat().st_size / 1e6
        large_csv.unlink()
        print(
            f"landed {4 * args.contacts:,} rows in {large_s:.1f}s, peak {large_mb:.0f} MB",
            flush=True,
        )

        enrich_s, enrich_mb = dagster_materialise(repo, env, first, last)
        print(
            f"first materialisation (enrich everything once): {enrich_s:.1f}s, "
            f"peak {enrich_mb:.0f} MB",
            flush=True,
        )

        again_s, peak_mb = dagster_materialise(repo, env, first, last)
        steps = step_durations(work / "dagster_home")
        sql_s = plain_sql(warehouse, work / "plain.csv")
        calls = duckdb.connect(str(warehouse), read_only=True)
        persons = calls.execute("SELECT count(*) FROM person_enrichment").fetchone()[0]
        calls.close()

        in_steps = sum(steps.values())
        print()
        print(f"bench-local: {args.contacts:,} contacts over {DAYS} daily partitions")
        print(f"  person records                              {persons:>9,}")
        print(f"  first materialisation (enrich once)         {enrich_s:9.1f} s")
        print("  second materialisation, everything fresh (0 API calls):")
        for asset, seconds in steps.items():
            print(f"    {asset:<20} inside its step           {seconds:9.1f} s")
        print(
            f"    all four steps                            {in_steps:9.1f} s"
            f"   {in_steps / sql_s:4.1f}x plain SQL (target <= 5x)"
        )
        print(
            f"    whole CLI run (start-up, event log)       {again_s:9.1f} s"
            f"   {again_s / sql_s:4.1f}x plain SQL"
        )
        print(f"  same joins as plain DuckDB SQL              {sql_s:9.1f} s")
        print(
            f"  landing the CSV ({csv_path.stat().st_size / 1e6:.0f} MB), enrich-pipeline ingest"
            f"   {ingest_s:7.1f} s   peak {ingest_mb:5.0f} MB (target < 1024)"
        )
        print(
            f"  landing a file 4x as large ({large_mb_file:.0f} MB)"
            f"            {large_s:7.1f} s   peak {large_mb:5.0f} MB (target < 1024)"
        )
        print(f"  peak memory, largest process                {peak_mb:9.0f} MB (target < 2048)")
        print(f"  peak memory, first materialisation          {enrich_mb:9.0f} MB")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
