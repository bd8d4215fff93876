"""``enrich-pipeline``: land a CSV in the warehouse, or serve the sandbox provider over HTTP."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from enrich_pipeline.ingest import IngestError, ingest_file
from enrich_pipeline.settings import SettingError, Settings
from enrich_pipeline.warehouse.connection import WarehouseBusy


def _ingest(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    report = ingest_file(settings.warehouse_path, args.file, source=args.source)
    print(
        f"{report.source_file}: {report.rows_read} rows read, {report.accepted} accepted, "
        f"{report.quarantined} quarantined -> {settings.warehouse_path}"
    )
    for reason, count in sorted(report.quarantine_reasons.items()):
        print(f"  quarantined: {count} x {reason}")
    return 0


def _sandbox(args: argparse.Namespace) -> int:
    from enrich_pipeline.sandbox.server import serve

    serve(host=args.host, port=args.port, config=Settings.from_env().sandbox)
    return 0


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
    ingest.set_defaults(run=_ingest)

    sandbox = commands.add_parser(
        "sandbox", help="serve the sandbox provider over HTTP (ENRICH_SANDBOX_* settings)"
    )
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8787)
    sandbox.set_defaults(run=_sandbox)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (IngestError, SettingError, WarehouseBusy) as exc:
        print(f"enrich-pipeline: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
