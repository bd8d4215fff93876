"""``enrich-pipeline forget``: a person erased from every table under every identity that was
theirs, from the exports and the intake journal, the bytes gone from the files, the audit kept
without naming them, and the CRM asked to erase them too."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import pytest
import respx

from enrich_pipeline.cli import main
from enrich_pipeline.dagster_layer.assets.enriched_persons import PERSON_STEP
from enrich_pipeline.dagster_layer.enrichment_asset import WindowEnrichment
from enrich_pipeline.definitions import build_definitions
from enrich_pipeline.forget import ForgetError, emails_for_hubspot_ids, forget, normalised_emails
from enrich_pipeline.in_flight import InFlight, claims_path
from enrich_pipeline.ingest import ingest_file
from enrich_pipeline.intake.journal import IntakeJournal
from enrich_pipeline.intake.landing import land_from_journal
from enrich_pipeline.sandbox.hubspot import create_hubspot_sandbox
from enrich_pipeline.settings import Settings, environment_for
from enrich_pipeline.warehouse.connection import WarehouseBusy, connect
from enrich_pipeline.warehouse.erasure import ERASED_TABLES
from enrich_pipeline.warehouse.suppression import keyed_hash, load_key
from enrich_pipeline_tests.conftest import REPO
from enrich_pipeline_tests.helpers import (
    held_by_another_process,
    materialise_range,
    read_warehouse,
    rows_of,
    served_over_http,
)

EMAIL = "zenobia.quillfeather@orrery-works.example"
# Her lead under every identity kind: email (with phone, LinkedIn, name + company), phone
# alone, LinkedIn alone, name + company alone; one row that cannot land; and two other people.
CONTACTS = f"""Email,First Name,Last Name,Phone Number,Company Name,Website URL,LinkedIn URL,Lead Source,Create Date
 {EMAIL.title()} ,Zenobia,Quillfeather,+1 (212) 736-4180,Orrery Works,,https://www.linkedin.com/in/zenobia-quillfeather/,Web Form,2026-09-01 10:00:00
,Zenobia,Quillfeather,212.736.4180,,,,Event Scan,2026-09-02 09:00:00
,,,,,,linkedin.com/in/zenobia-quillfeather,CSV Import,2026-09-02 10:00:00
,Zenobia,Quillfeather,,Orrery Works,,,Partner Sync,2026-09-03 08:00:00
{EMAIL},Zenobia,,,,,,Web Form,the day before yesterday
grace@gmail.com,Grace,Hopper,,,,,Web Form,2026-09-01 12:00:00
,Alan,Turing,+44 20 7946 0958,,,,Event Scan,2026-09-02 09:00:00
"""
log = logging.getLogger(__name__)
THEIRS = ("quillfeather", "zenobia", "2127364180", "736-4180", "736.4180")


def _land_and_run(tmp_path: Path, settings: Settings) -> None:
    ingest_file(settings.warehouse_path, _csv(tmp_path))
    materialise_range(settings, "2026-09-01", "2026-09-03")


def _theirs_in(warehouse: str, table: str, extra: tuple[str, ...] = ()) -> int:
    with read_warehouse(warehouse) as con:
        text = f"lower(CAST({table} AS VARCHAR))"
        found = " OR ".join(f"contains({text}, ?)" for _ in THEIRS + extra)
        return con.execute(
            f"SELECT count(*) FROM {table} WHERE {found}", [*THEIRS, *extra]
        ).fetchone()[0]  # type: ignore[index]


def _profile_values(warehouse: str) -> tuple[str, ...]:
    """What the provider told us about her, that nobody typed in."""
    with read_warehouse(warehouse) as con:
        rows = con.execute(
            "SELECT work_email, legion_id, linkedin_url FROM person_enrichment "
            "WHERE identity = ? AND status = 'matched'",
            [EMAIL],
        ).fetchall()
    return tuple(value.lower() for row in rows for value in row if value)


def test_every_row_of_every_identity_of_theirs_is_removed_and_others_kept(
    tmp_path: Path, settings: Settings
) -> None:
    _land_and_run(tmp_path, settings)
    with connect(settings.warehouse_path) as con:
        # Job changes are found by refreshes; one under her phone identity and one by email.
        con.execute(
            "INSERT INTO job_changes (identity, email, old_company, new_company, detected_at) "
            "VALUES ('phone:+12127364180', NULL, 'A', 'B', now()), (?, ?, 'B', 'C', now())",
            [EMAIL, EMAIL],
        )
    profile = _profile_values(settings.warehouse_path)
    for table in ERASED_TABLES:
        assert _theirs_in(settings.warehouse_path, table) > 0, f"{table} holds nothing of hers"

    report = forget(settings, [EMAIL], crm=False)

    for table in ERASED_TABLES:
        assert _theirs_in(settings.warehouse_path, table, profile) == 0, table
    assert report.rows_removed["raw_contacts"] == 4  # her email, phone, LinkedIn, name leads
    assert report.rows_removed["clean_contacts"] == 4
    assert report.rows_removed["person_enrichment"] == 4
    assert report.rows_removed["job_changes"] == 2
    assert report.rows_removed["quarantine"] >= 1
    with read_warehouse(settings.warehouse_path) as con:
        others = {row[0] for row in con.execute("SELECT identity FROM clean_contacts").fetchall()}
        crm = {row[0] for row in con.execute("SELECT email FROM crm_contacts").fetchall()}
        listed = {row[0] for row in con.execute("SELECT key_hash FROM suppression_list").fetchall()}
        audit = con.execute("SELECT * FROM erasures").fetchall()
    assert others == {"grace@gmail.com", "phone:+442079460958"}
    assert "grace@gmail.com" in crm
    key = load_key(settings.warehouse_path)
    for identity in (
        EMAIL,
        "phone:+12127364180",
        "social:zenobia-quillfeather",
        "name:zenobia quillfeather|orrery works",
    ):
        assert keyed_hash(key, identity) in listed, identity
    assert len(audit) == 1 and "quillfeather" not in str(audit).lower()


def test_the_bytes_are_gone_from_the_warehouse_file_and_the_exports(
    tmp_path: Path, settings: Settings
) -> None:
    _land_and_run(tmp_path, settings)
    folders = [Path(settings.warehouse_path).parent, Path(settings.export_dir)]
    assert _files_holding(folders, EMAIL), "the check below could not fail"

    forget(settings, [EMAIL], crm=False)

    assert _files_holding(folders, EMAIL, "zenobia-quillfeather") == []
    csv = (Path(settings.export_dir) / "crm_contacts.csv").read_text(encoding="utf-8")
    assert "grace@gmail.com" in csv
    with read_warehouse(settings.warehouse_path) as con:
        # The file was rewritten whole: ids keep growing from where they were.
        before = con.execute("SELECT max(ingest_id) FROM raw_contacts").fetchone()[0]  # type: ignore[index]
    csv_more = tmp_path / "more.csv"
    csv_more.write_text("Email,Create Date\nnew@acme.io,2026-09-04 08:00:00\n", encoding="utf-8")
    landed = ingest_file(settings.warehouse_path, csv_more)
    assert landed.first_ingest_id is not None and landed.first_ingest_id > before


def _files_holding(folders: list[Path], *values: str) -> list[str]:
    """The files under ``folders`` holding any of ``values`` (any case), but the CSVs the test
    wrote for landing."""
    holding = []
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and "incoming" not in path.parts:
                data = path.read_bytes().lower()
                if any(value.lower().encode() in data for value in values):
                    holding.append(str(path))
    return holding


def test_the_intake_journal_loses_their_leads_landed_or_not(
    tmp_path: Path, settings: Settings, journal: IntakeJournal
) -> None:
    now = datetime(2026, 9, 1, 10, tzinfo=UTC)
    journal.append([{"email": EMAIL, "first_name": "Zenobia"}], source="form", received_at=now)
    land_from_journal(journal, settings.warehouse_path)
    journal.append(
        [{"Email": EMAIL.upper()}, {"email": "ada@acme.io"}], source="form", received_at=now
    )

    report = forget(settings, [EMAIL], crm=False)

    assert report.journal_entries == 2
    assert [entry.lead for entry in journal.read_after(0, 10)] == [{"email": "ada@acme.io"}]
    assert land_from_journal(journal, settings.warehouse_path).landed == 1
    journal_file = Path(settings.intake_journal_path)
    assert _files_holding([journal_file.parent], "quillfeather") == []


def test_an_erasure_waits_for_the_warehouse_and_never_half_erases(
    tmp_path: Path, settings: Settings
) -> None:
    _land_and_run(tmp_path, settings)
    with held_by_another_process(settings.warehouse_path), pytest.raises(WarehouseBusy):
        forget(settings, [EMAIL], crm=False, wait_s=0.5)
    assert _theirs_in(settings.warehouse_path, "raw_contacts") == 4
    forget(settings, [EMAIL], crm=False)
    assert _theirs_in(settings.warehouse_path, "raw_contacts") == 0


_WRITER = """
import sys
from pathlib import Path
from enrich_pipeline.ingest import ingest_file
folder = Path(sys.argv[2])
for n in range(int(sys.argv[3])):
    path = folder / f"batch{n}.csv"
    path.write_text(f"Email,Create Date\\nwriter{n}@acme.io,2026-09-0{1 + n % 3} 08:00:00\\n")
    ingest_file(sys.argv[1], path)
    print(n, flush=True)
"""


@pytest.mark.slow
def test_erasures_while_another_process_lands_lose_none_of_its_rows(
    tmp_path: Path, settings: Settings
) -> None:
    _land_and_run(tmp_path, settings)
    batches = 40
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, settings.warehouse_path, str(tmp_path), str(batches)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    erasures = 0
    try:
        # An erasure each time a batch has landed, so the next landing and the erasure's swap
        # run at once: each swap is a chance for a landing to go to a file being replaced.
        for _ in writer.stdout:
            forget(settings, [f"nobody{erasures}@acme.io"], crm=False)
            erasures += 1
    finally:
        assert writer.wait(timeout=120) == 0
    assert erasures == batches
    with read_warehouse(settings.warehouse_path) as con:
        landed = con.execute(
            "SELECT count(*) FROM raw_contacts WHERE email LIKE 'writer%'"
        ).fetchone()[0]  # type: ignore[index]
    assert landed == batches


def test_emails_are_checked_before_anything_is_erased() -> None:
    assert normalised_emails([" Ada@ACME.io", "ada@acme.io"]) == ["ada@acme.io"]
    with pytest.raises(ForgetError, match=r"email 2 \(n\*\*\*\) is not a valid address"):
        normalised_emails(["ada@acme.io", "not-an-email"])


def test_the_cli_erases_and_reports_without_naming_anyone(
    tmp_path: Path, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    _land_and_run(tmp_path, settings)
    listed = tmp_path / "erase.txt"
    listed.write_text(f"# erasure requests\n{EMAIL}\n", encoding="utf-8")

    assert main(["forget", "--file", str(listed)]) == 0
    assert main(["forget", "--report"]) == 0

    out = capsys.readouterr().out
    assert "erased 1 person(s): raw_contacts 4" in out
    assert "1 erasure(s)" in out and "by cli" in out
    assert "quillfeather" not in out.lower()


# --- CRM destinations ------------------------------------------------------------------------


@pytest.fixture
def hubspot_url() -> Iterator[str]:
    with served_over_http(create_hubspot_sandbox(token="pat-test")) as url:
        yield url


def _with_hubspot(monkeypatch: pytest.MonkeyPatch, url: str) -> Settings:
    monkeypatch.setenv("HUBSPOT_ACCESS_TOKEN", "pat-test")
    for name, value in environment_for(
        crm_destinations="file,hubspot", hubspot_base_url=url
    ).items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_with_crm_hubspot_erases_them_and_the_audit_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hubspot_url: str
) -> None:
    settings = _with_hubspot(monkeypatch, hubspot_url)
    _land_and_run(tmp_path, settings)
    assert httpx.get(f"{hubspot_url}/_sandbox/contacts/{EMAIL}").status_code == 200

    report = forget(settings, [EMAIL], crm=True)

    assert report.crm_answers["hubspot"]["erased"] == 1 and not report.crm_failed
    assert httpx.get(f"{hubspot_url}/_sandbox/contacts/{EMAIL}").status_code == 404
    with read_warehouse(settings.warehouse_path) as con:
        (answers,) = con.execute("SELECT crm_answers FROM erasures").fetchone()  # type: ignore[misc]
    assert json.loads(answers) == {"hubspot": "erased"}
    # Landed again by a partner sync, she is refused, so nothing is pushed to HubSpot again.
    again = tmp_path / "again.csv"
    again.write_text(f"Email,First Name,Create Date\n{EMAIL},Zenobia,2026-09-04 08:00:00\n")
    assert ingest_file(settings.warehouse_path, again).quarantine_reasons == {"suppressed": 1}
    materialise_range(settings, "2026-09-01", "2026-09-04")
    assert httpx.get(f"{hubspot_url}/_sandbox/contacts/{EMAIL}").status_code == 404


def test_a_hubspot_contact_id_names_the_person_to_erase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hubspot_url: str
) -> None:
    settings = _with_hubspot(monkeypatch, hubspot_url)
    _land_and_run(tmp_path, settings)
    contact_id = httpx.get(f"{hubspot_url}/_sandbox/contacts/{EMAIL}").json()["id"]

    assert emails_for_hubspot_ids(settings, [str(contact_id), "999999"]) == [EMAIL]
    assert main(["forget", "--hubspot-id", str(contact_id)]) == 0
    assert _theirs_in(settings.warehouse_path, "crm_contacts") == 0


def test_a_crm_that_fails_is_reported_and_asked_again_next_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(*next(iter(environment_for(max_attempts=2).items())))
    settings = _with_hubspot(monkeypatch, "https://hubspot.test")
    ingest_file(settings.warehouse_path, _csv(tmp_path))
    with respx.mock(base_url="https://hubspot.test") as hubspot:
        erase = hubspot.post("/crm/v3/objects/contacts/gdpr-delete")
        erase.side_effect = [httpx.Response(500)] * 2 + [httpx.Response(204)]
        assert main(["forget", "--crm", EMAIL]) == 1
        assert main(["forget", "--crm", EMAIL]) == 0
    assert json.loads(erase.calls[-1].request.content) == {"objectId": EMAIL, "idProperty": "email"}
    out = capsys.readouterr()
    assert "hubspot: 1 failed" in out.out and "hubspot: 1 erased" in out.out
    assert EMAIL not in out.out + out.err


def test_crm_erasure_without_a_token_erases_nothing(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in environment_for(crm_destinations="file,hubspot").items():
        monkeypatch.setenv(name, value)
    ingest_file(settings.warehouse_path, _csv(tmp_path))
    with pytest.raises(ForgetError, match="HUBSPOT_ACCESS_TOKEN is not set"):
        forget(Settings(), [EMAIL], crm=True)
    assert _theirs_in(settings.warehouse_path, "raw_contacts") == 4


def _csv(folder: Path) -> Path:
    """The contacts as a file, out of the folder the warehouse is in (it is searched)."""
    path = folder / "incoming" / "contacts.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_text(CONTACTS, encoding="utf-8")
    return path


# --- after a whole demo run --------------------------------------------------------------------


@pytest.mark.slow
def test_after_a_demo_run_the_erased_values_are_in_no_file(tmp_path: Path) -> None:
    data, dagster_home = tmp_path / "data", tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        **environment_for(
            warehouse_path=data / "warehouse.duckdb",
            export_dir=data / "exports",
            intake_journal_path=data / "intake.sqlite3",
        ),
    }
    ingest_file(data / "warehouse.duckdb", _csv(tmp_path))
    demo = subprocess.run(
        [sys.executable, "-m", "enrich_pipeline.demo"], cwd=REPO, env=env, capture_output=True
    )
    assert demo.returncode == 0, demo.stderr.decode()[-2000:]
    profile = _profile_values(str(data / "warehouse.duckdb"))
    values = (EMAIL, "Quillfeather", "zenobia-quillfeather", "+12127364180", *profile)
    assert _files_holding([data], EMAIL), "the check below could not fail"

    erased = subprocess.run(
        [sys.executable, "-m", "enrich_pipeline.cli", "forget", EMAIL],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )

    assert erased.returncode == 0, erased.stderr
    assert _files_holding([data, dagster_home], *values) == []


SHARED = """Email,First Name,Last Name,Phone Number,Company Name,Create Date
jo@acme.com,Jo,Smith,+1 (212) 736-4180,Acme,2026-09-01 10:00:00
bob@acme.com,Bob,Jones,+1 (212) 736-4180,Acme,2026-09-01 11:00:00
,Front,Desk,212-736-4180,,2026-09-02 09:00:00
mojo@acme.com,Mo,,,,not a date
jo@acme.com.au,Jo,,,,not a date
"""


def test_what_they_share_with_someone_else_is_neither_erased_nor_suppressed(
    tmp_path: Path, settings: Settings
) -> None:
    # An office's main line on two people's leads, and addresses that contain theirs.
    path = tmp_path / "incoming" / "shared.csv"
    path.parent.mkdir()
    path.write_text(SHARED, encoding="utf-8")
    ingest_file(settings.warehouse_path, path)
    materialise_range(settings, "2026-09-01", "2026-09-02")

    report = forget(settings, ["jo@acme.com"], crm=False)

    assert report.rows_removed["raw_contacts"] == 1
    assert report.rows_removed["quarantine"] == 0
    emails = {row[0] for row in rows_of(settings, "SELECT email FROM raw_contacts")}
    assert emails == {"bob@acme.com", None}, "Bob and the front desk's lead stay"
    kept = {row[0] for row in rows_of(settings, "SELECT original->>'Email' FROM quarantine")}
    assert kept == {"mojo@acme.com", "jo@acme.com.au"}
    key = load_key(settings.warehouse_path)
    listed = {row[0] for row in rows_of(settings, "SELECT key_hash FROM suppression_list")}
    assert keyed_hash(key, "jo@acme.com") in listed
    assert keyed_hash(key, "name:jo smith|acme") in listed
    assert keyed_hash(key, "phone:+12127364180") not in listed
    again = tmp_path / "incoming" / "again.csv"
    again.write_text("Email,Phone Number,Create Date\nbob@acme.com,212 736 4180,2026-09-03\n")
    assert ingest_file(settings.warehouse_path, again).accepted == 1


def test_a_run_that_selected_them_before_the_erasure_does_not_store_them_again(
    tmp_path: Path, settings: Settings
) -> None:
    ingest_file(settings.warehouse_path, _csv(tmp_path))
    materialise_range(settings, "2026-09-01", "2026-09-03", assets=["clean_contacts"])
    defs = build_definitions(settings)
    resources = defs.resources
    work = WindowEnrichment.select(
        PERSON_STEP,
        date(2026, 9, 1),
        date(2026, 9, 4),
        resources["warehouse"],
        resources["pipeline"],
    )
    assert EMAIL in {query.key for query in work.selection.queries}

    forget(settings, [EMAIL], crm=False)
    asyncio.run(
        work.run_async(resources["enrichment"], resources["warehouse"], resources["pipeline"], log)
    )

    assert _theirs_in(settings.warehouse_path, "person_enrichment") == 0
    assert rows_of(settings, "SELECT count(*) FROM person_enrichment")[0][0] > 0, "others stored"


@pytest.mark.duckdb_file
def test_claims_a_running_service_released_leave_no_trace_in_the_claims_files(
    tmp_path: Path, settings: Settings
) -> None:
    ingest_file(settings.warehouse_path, _csv(tmp_path))
    # A long-running process (the intake service) that claimed and released her look-up.
    claims = InFlight(claims_path(settings.warehouse_path))
    try:
        claims.release(claims.claim({("person", EMAIL)}))
        assert _files_holding([tmp_path], "quillfeather"), "the check below could not fail"

        report = forget(settings, [EMAIL], crm=False)

        assert report.wal_emptied
        assert _files_holding([tmp_path], "quillfeather") == []
    finally:
        claims.close()


def test_a_phone_another_person_landed_is_not_suppressed_before_their_day_is_built(
    tmp_path: Path, settings: Settings
) -> None:
    _land_and_run(tmp_path, settings)
    later = tmp_path / "incoming" / "bob.csv"
    later.write_text("Email,Phone Number,Create Date\nbob@acme.com,212-736-4180,2026-09-05\n")
    ingest_file(settings.warehouse_path, later)  # landed, not built yet

    forget(settings, [EMAIL], crm=False)

    listed = {row[0] for row in rows_of(settings, "SELECT key_hash FROM suppression_list")}
    key = load_key(settings.warehouse_path)
    assert keyed_hash(key, EMAIL) in listed
    assert keyed_hash(key, "phone:+12127364180") not in listed
    materialise_range(settings, "2026-09-05", "2026-09-05")
    assert rows_of(settings, "SELECT email FROM crm_contacts WHERE email = 'bob@acme.com'")
