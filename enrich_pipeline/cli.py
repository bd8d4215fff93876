"""``enrich-pipeline``: land a CSV in the warehouse, serve the intake API, or serve the sandbox
provider over HTTP."""

from __future__ import annotations

import argparse
import gc
import ipaddress
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from enrich_pipeline.forget import DEFAULT_WAIT_S, ForgetError
from enrich_pipeline.ingest import IngestError, ingest_file
from enrich_pipeline.settings import IntakeSettings, SettingError, Settings
from enrich_pipeline.settings_base import env_name
from enrich_pipeline.warehouse.connection import WarehouseBusy, connect

if TYPE_CHECKING:
    from enrich_pipeline.intake.mover import JournalMover
    from enrich_pipeline.intake.mover_process import Publish


def _ingest(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    report = ingest_file(
        settings.warehouse_path,
        args.file,
        source=args.source,
        encoding=args.encoding,
        memory_limit=settings.ingest_memory_limit,
    )
    print(
        f"{report.source_file}: {report.rows_read} rows read, {report.accepted} accepted, "
        f"{report.quarantined} quarantined -> {settings.warehouse_path}"
    )
    for reason, count in sorted(report.quarantine_reasons.items()):
        print(f"  quarantined: {count} x {reason}")
    if report.ignored_columns:
        print(f"  ignored columns (no field takes them): {', '.join(report.ignored_columns)}")
    return 0


def _forget(args: argparse.Namespace) -> int:
    from enrich_pipeline.forget import (
        emails_for_hubspot_ids,
        forget,
        normalised_emails,
        read_identifier_file,
    )
    from enrich_pipeline.warehouse.erasure import erasure_records

    settings = Settings.from_env()
    if args.report:
        with connect(settings.warehouse_path, lock_timeout_s=args.wait_s) as con:
            records = erasure_records(con)
        for record in records:
            removed = ", ".join(f"{t} {n}" for t, n in record.rows_removed.items() if n)
            crm = "; ".join(f"{d}: {a}" for d, a in (record.crm_answers or {}).items())
            print(
                f"{record.erased_at:%Y-%m-%d %H:%M:%S} UTC  {record.erasure_id}  "
                f"by {record.requested_by}  removed: {removed or 'nothing'}"
                + (f"  CRM: {crm}" if crm else "")
            )
        print(f"{len(records)} erasure(s)")
        return 0
    if args.hubspot_id:
        emails = emails_for_hubspot_ids(settings, args.hubspot_id)
        print(f"{len(emails)} of {len(args.hubspot_id)} HubSpot contact(s) known here")
    else:
        given = list(args.emails) + (read_identifier_file(args.file) if args.file else [])
        if not given:
            print("enrich-pipeline: give emails, --file or --hubspot-id", file=sys.stderr)
            return 2
        emails = normalised_emails(given)
    report = forget(
        settings, emails, crm=args.crm, requested_by=args.requested_by, wait_s=args.wait_s
    )
    removed = ", ".join(f"{t} {n}" for t, n in report.rows_removed.items() if n)
    print(f"erased {report.people} person(s): {removed or 'nothing stored'}")
    print(f"  intake journal: {report.journal_entries} entries")
    if not report.wal_emptied:
        print(
            "  a reader kept the intake journal's or the claims file's WAL busy: it still holds "
            "them until its next checkpoint; run the command again when the service is quiet",
            file=sys.stderr,
        )
    if report.exports_rewritten:
        print(f"  exports rewritten in {settings.export_dir}")
    for destination, answers in report.crm_answers.items():
        print(f"  {destination}: " + ", ".join(f"{n} {a}" for a, n in sorted(answers.items())))
    for error in report.crm_errors:
        print(f"  {error}", file=sys.stderr)
    if args.crm and not report.crm_answers:
        print("  no CRM destination is configured: nothing asked of a CRM")
    return 1 if report.crm_failed else 0


def _suppress(args: argparse.Namespace) -> int:
    from enrich_pipeline.clock import utc_now
    from enrich_pipeline.forget import read_identifier_file, rewrite_exports
    from enrich_pipeline.warehouse.suppression import add_to_list, identifier_key

    settings = Settings.from_env()
    given = list(args.identifiers) + (read_identifier_file(args.file) if args.file else [])
    texts = []
    for position, value in enumerate(given, start=1):
        try:
            texts.append(identifier_key(value))
        except ValueError as exc:
            print(f"enrich-pipeline: identifier {position} {exc}", file=sys.stderr)
            return 2
    for position, value in enumerate(args.domain, start=1):
        try:
            texts.append(identifier_key(value, domain=True))
        except ValueError as exc:
            print(f"enrich-pipeline: --domain {position} {exc}", file=sys.stderr)
            return 2
    if not texts:
        print("enrich-pipeline: give identifiers, --domain or --file", file=sys.stderr)
        return 2
    with connect(settings.warehouse_path, lock_timeout_s=args.wait_s) as con:
        added = add_to_list(con, texts, reason="suppressed", now=utc_now())
        rewritten = rewrite_exports(con, settings)
    print(
        f"{added} added to the suppression list ({len(texts) - added} already on it): never "
        "landed, looked up or sent to a CRM again"
    )
    if rewritten:
        print(f"  exports rewritten in {settings.export_dir}")
    return 0


def _recover_runs(args: argparse.Namespace) -> int:
    from dagster import DagsterInstance

    from enrich_pipeline.dagster_layer.run_workers import fail_dead_runs

    if not os.environ.get("DAGSTER_HOME"):
        print(
            "enrich-pipeline: DAGSTER_HOME is not set: set it to the Dagster instance's folder "
            "(the Makefile's targets use .dagster_home)",
            file=sys.stderr,
        )
        return 2
    with DagsterInstance.get() as instance:
        dead = fail_dead_runs(instance)
    for run in dead:
        print(
            f"run {run.run_id} ({run.job_name}): {run.worker.describe()}; marked failed, "
            f"{run.slots_freed} pool slot(s) freed"
        )
    print(f"{len(dead)} dead run(s) found" if dead else "no dead runs: every STARTED run is alive")
    return 0


def _sandbox(args: argparse.Namespace) -> int:
    from enrich_pipeline.sandbox.server import serve

    serve(host=args.host, port=args.port, config=Settings.from_env().sandbox)
    return 0


def _hubspot_sandbox(args: argparse.Namespace) -> int:
    from enrich_pipeline.sandbox.hubspot import serve_hubspot_sandbox

    serve_hubspot_sandbox(
        args.host,
        args.port,
        token=args.token,
        requests_per_interval=args.requests_per_10s,
        interval_ms=10_000,
        latency_ms=args.latency_ms,
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from enrich_pipeline.destinations.hubspot import HubSpotClient
    from enrich_pipeline.intake.app import create_intake_app
    from enrich_pipeline.intake.enrich_now import ReadyRecords
    from enrich_pipeline.intake.hubspot_webhooks import HubSpotWebhookReceiver, events_location
    from enrich_pipeline.intake.journal import journal_location, open_journal
    from enrich_pipeline.intake.mover_process import MoverProcess
    from enrich_pipeline.intake.standard_webhooks import StandardWebhookReceiver

    settings = Settings.from_env()
    host = args.host or settings.intake_host
    port = args.port or settings.intake_port
    token = settings.secret("intake_token")
    if token is None and not _is_loopback(host):
        raise SettingError(
            f"refusing to listen on {host} without a token: set "
            f"{env_name(IntakeSettings, 'intake_token')}, or listen on 127.0.0.1"
        )
    # With a Postgres warehouse, in that database: one journal for every replica.
    journal = open_journal(journal_location(settings))
    ready = ReadyRecords()
    mover = MoverProcess(_intake_mover, settings.warehouse_path, ready)
    hubspot_token = settings.secret("hubspot_access_token")
    receivers = [
        StandardWebhookReceiver(journal, secret=settings.secret("webhook_secret"), wake=mover.wake),
        HubSpotWebhookReceiver(
            journal,
            client_secret=settings.secret("hubspot_client_secret"),
            # Received events wait beside the journal until their contacts are read back.
            events_path=events_location(journal_location(settings)),
            hubspot=None
            if hubspot_token is None
            else lambda: HubSpotClient(token=hubspot_token, base_url=settings.hubspot_base_url),
            wake=mover.wake,
            erase=_forget_hubspot_contacts,
        ),
    ]
    app = create_intake_app(journal, token=token, mover=mover, receivers=receivers, ready=ready)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print(f"Intake listening on http://{host}:{port}: POST /v1/leads, API docs at /docs")
    # What start-up leaves behind lives as long as the process; moved out of the collector's
    # reach, a full collection stops pausing requests for milliseconds at a time.
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="info")
    return 0


def _forget_hubspot_contacts(ids: Sequence[str]) -> None:
    """``enrich-pipeline forget`` in a process of its own: an erasure replaces the warehouse
    file, which no process may hold open across it."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "enrich_pipeline.cli",
            "forget",
            "--hubspot-id",
            *ids,
            "--requested-by",
            "hubspot privacy deletion",
        ],
        check=True,
    )


def _intake_mover(publish: Publish) -> JournalMover:
    """The intake service's mover, built in its own process (``MoverProcess``): lands the
    journal, then writes back; and answers the callers who wait, publishing their records."""
    from enrich_pipeline.dagster_layer.landing_events import report_landing
    from enrich_pipeline.dagster_layer.write_back import WriteBack
    from enrich_pipeline.intake.journal import journal_location, open_journal
    from enrich_pipeline.intake.mover import JournalMover

    settings = Settings.from_env()
    write_back = WriteBack.from_settings(settings, on_merged=publish.merged)
    on_request = write_back.on_request(publish.records)
    return JournalMover(
        open_journal(journal_location(settings)),
        settings.warehouse_path,
        on_landed=lambda report: report_landing(report, source="intake"),
        then=write_back.catch_up,
        on_request=on_request.submit,
        give_way=on_request.wait_until_quiet,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="enrich-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    ingest = commands.add_parser(
        "ingest", help="append a CSV's rows to raw_contacts (unusable rows go to quarantine)"
    )
    ingest.add_argument("file", help="CSV file (HubSpot export labels or snake_case headers)")
    ingest.add_argument(
        "--source", help="source name for rows without their own (default: the file's name)"
    )
    ingest.add_argument(
        "--encoding",
        help="the file's encoding, e.g. latin-1 (default: UTF-8, or UTF-16 with its byte-order "
        "mark)",
    )
    ingest.set_defaults(run=_ingest)

    forget = commands.add_parser(
        "forget",
        help="erase people everywhere (warehouse, exports, intake journal; with --crm the "
        "CRMs too) and suppress them for good",
    )
    forget.add_argument("emails", nargs="*", help="the people's emails")
    forget.add_argument("--file", help="a file of emails, one a line (or a CSV's first column)")
    forget.add_argument(
        "--hubspot-id",
        nargs="+",
        default=[],
        help="HubSpot contact ids instead of emails (as HubSpot's privacy deletion names them)",
    )
    forget.add_argument(
        "--crm", action="store_true", help="ask each CRM destination to erase them too"
    )
    forget.add_argument(
        "--report", action="store_true", help="print the erasures made so far, and nothing else"
    )
    forget.add_argument(
        "--wait-s",
        type=float,
        default=DEFAULT_WAIT_S,
        help=f"how long to wait for a run holding the warehouse (default: {DEFAULT_WAIT_S:g})",
    )
    forget.add_argument("--requested-by", default="cli", help=argparse.SUPPRESS)
    forget.set_defaults(run=_forget)

    suppress = commands.add_parser(
        "suppress",
        help="never land, look up or push these people or domains again, erasing nothing",
    )
    suppress.add_argument(
        "identifiers", nargs="*", help="emails, phone numbers or LinkedIn profile URLs"
    )
    suppress.add_argument(
        "--domain", action="append", default=[], help="a whole email domain, e.g. rival.com"
    )
    suppress.add_argument("--file", help="a file of identifiers, one a line")
    suppress.add_argument("--wait-s", type=float, default=DEFAULT_WAIT_S, help=argparse.SUPPRESS)
    suppress.set_defaults(run=_suppress)

    recover = commands.add_parser(
        "recover-runs",
        help="mark runs whose process is gone (kill -9, out of memory, a reboot) failed and "
        "free their pool slots, without the daemon (DAGSTER_HOME)",
    )
    recover.set_defaults(run=_recover_runs)

    sandbox = commands.add_parser(
        "sandbox", help="serve the sandbox provider over HTTP (ENRICH_SANDBOX_* settings)"
    )
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8787)
    sandbox.set_defaults(run=_sandbox)

    hubspot_sandbox = commands.add_parser(
        "hubspot-sandbox",
        help="serve a HubSpot stand-in over HTTP (contacts upsert, read, GDPR delete; "
        "contents at GET /_sandbox/contacts)",
    )
    hubspot_sandbox.add_argument("--host", default="127.0.0.1")
    hubspot_sandbox.add_argument("--port", type=int, default=8788)
    hubspot_sandbox.add_argument(
        "--token",
        help="accept only this bearer token (default: none, any bearer token is accepted)",
    )
    hubspot_sandbox.add_argument(
        "--requests-per-10s",
        type=int,
        default=100,
        help="rolling rate limit, as HubSpot's per-10-second limit (default: 100)",
    )
    hubspot_sandbox.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="delay every API answer by this much, to imitate the network (default: 0)",
    )
    hubspot_sandbox.set_defaults(run=_hubspot_sandbox)

    serve = commands.add_parser(
        "serve",
        help="serve the intake API: POST /v1/leads lands leads within seconds (ENRICH_INTAKE_*)",
    )
    serve.add_argument("--host", help="default: the intake host setting (127.0.0.1)")
    serve.add_argument("--port", type=int, help="default: the intake port setting (8000)")
    serve.set_defaults(run=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (IngestError, SettingError, WarehouseBusy, ForgetError) as exc:
        print(f"enrich-pipeline: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
