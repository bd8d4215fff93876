"""The suppression list: people and domains refused at every entry point with nothing of them
kept, never looked up and never sent to a CRM again, and kept as keyed hashes only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from enrich_pipeline.cli import main
from enrich_pipeline.ingest import ingest_file
from enrich_pipeline.intake.app import create_intake_app
from enrich_pipeline.intake.journal import IntakeJournal
from enrich_pipeline.intake.mover import JournalMover
from enrich_pipeline.sandbox import SandboxConfig
from enrich_pipeline.settings import Settings
from enrich_pipeline.warehouse.connection import connect
from enrich_pipeline.warehouse.postgres import is_postgres
from enrich_pipeline.warehouse.suppression import identifier_key, keyed_hash, load_key
from enrich_pipeline_tests.helpers import (
    materialise_range,
    metadata_of,
    rows_of,
    sandbox_over_http,
    write_small_csv,
)

ADA = "ada.lovelace@analytical-engines.io"  # twice in the small CSV, once with a phone
LANDED = """Email,First Name,Phone Number,LinkedIn URL,Company Name,Create Date
{rows}"""


def _land(folder: Path, settings: Settings, *rows: str) -> dict[str, int]:
    path = folder / "incoming.csv"
    path.write_text(LANDED.format(rows="\n".join(rows)) + "\n", encoding="utf-8")
    return ingest_file(settings.warehouse_path, path).quarantine_reasons


def test_a_suppressed_person_is_refused_at_landing_and_nothing_of_them_is_kept(
    tmp_path: Path, settings: Settings
) -> None:
    assert main(["suppress", " Ada@Acme.IO ", "+1 (212) 736-4180"]) == 0

    reasons = _land(
        tmp_path,
        settings,
        "ADA@acme.io ,Ada,,,,2026-09-01 10:00:00",
        ",Ada,212.736.4180,,,2026-09-01 10:00:00",  # the phone alone, written another way
        ",Ada,+1 212-736-4180 ext. 12,,,2026-09-01 10:00:00",  # with an extension
        "ada.l@other.io,Ada,(212) 736-4180,,,2026-09-01 10:00:00",  # the phone beside an email
        "grace@navy.example,Grace,,,,not a date",
        "alan@turing.example,Alan,,,,2026-09-01 10:00:00",
    )

    assert reasons == {"suppressed": 4, "unparseable date": 1}
    assert rows_of(settings, "SELECT email FROM raw_contacts") == [("alan@turing.example",)]
    refused = rows_of(
        settings,
        "SELECT original, field, source_row FROM quarantine WHERE reason = 'suppressed'",
    )
    assert refused == [(None, None, row) for row in (1, 2, 3, 4)]
    # The rows refused for any other reason keep their values, as always.
    assert "grace@navy.example" in str(rows_of(settings, "SELECT original FROM quarantine"))


@pytest.mark.parametrize(
    ("suppressed", "landed", "refused"),
    [
        (["--domain", "Rival.COM"], "x@rival.com,X,,,,2026-09-01 10:00:00", True),
        (["--domain", "rival.com"], "x@notrival.com,X,,,,2026-09-01 10:00:00", False),
        (
            ["https://www.linkedin.com/in/Ada-L/"],
            ",,,linkedin.com/in/ada-l?trk=x,,2026-09-01 10:00:00",
            True,
        ),
        (["+44 20 7946 0958"], ",Alan,+44 (0) 20 7946 0958,,,2026-09-01 10:00:00", True),
    ],
    ids=["domain", "another-domain", "linkedin", "trunk-prefix"],
)
def test_domains_and_linkedin_profiles_are_suppressed_as_given(
    tmp_path: Path, settings: Settings, suppressed: list[str], landed: str, refused: bool
) -> None:
    assert main(["suppress", *suppressed]) == 0
    reasons = _land(tmp_path, settings, landed)
    assert reasons == ({"suppressed": 1} if refused else {})


@pytest.mark.duckdb_file
def test_the_list_holds_keyed_hashes_never_the_identifiers(
    tmp_path: Path, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["suppress", "ada@acme.io", "--domain", "rival.com"]) == 0
    assert main(["suppress", "ADA@acme.io"]) == 0
    assert "0 added to the suppression list (1 already on it)" in capsys.readouterr().out

    rows = rows_of(settings, "SELECT key_hash, kind, reason FROM suppression_list ORDER BY kind")
    key = load_key(settings.warehouse_path)
    assert rows == [
        (keyed_hash(key, "domain:rival.com"), "domain", "suppressed"),
        (keyed_hash(key, "ada@acme.io"), "email", "suppressed"),
    ]
    data = Path(settings.warehouse_path).read_bytes()
    assert b"ada@acme.io" not in data and b"rival.com" not in data
    # Without the key (kept owner-only beside the warehouse) the hashes name nobody.
    assert (Path(settings.warehouse_path + ".suppression.key").stat().st_mode & 0o077) == 0


def test_an_unusable_identifier_is_refused_naming_its_position(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["suppress", "ada@acme.io", "call me maybe"]) == 2
    assert "identifier 2 is not an email" in capsys.readouterr().err
    assert identifier_key("HTTPS://linkedin.com/in/Ada-L") == "social:ada-l"
    assert identifier_key("+44 20 7946 0958") == "phone:+442079460958"


# --- people already in the warehouse --------------------------------------------------------


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with sandbox_over_http(SandboxConfig(accepted_api_key="key", match_rate=1.0)) as url:
        monkeypatch.setenv("DATA_LEGION_API_KEY", "key")
        yield url


def _look_ups(provider: str) -> int:
    return httpx.get(f"{provider}/_sandbox/stats").json()["items_enriched"]


def test_a_person_suppressed_after_landing_is_never_looked_up_or_exported_again(
    tmp_path: Path, provider: str
) -> None:
    settings = Settings(base_url=provider)
    ingest_file(settings.warehouse_path, write_small_csv(tmp_path))
    materialise_range(settings, "2026-09-01", "2026-09-03")
    first = _look_ups(provider)
    export = Path(settings.export_dir) / "crm_contacts.csv"
    assert ADA in export.read_text(encoding="utf-8")

    assert main(["suppress", ADA]) == 0
    assert ADA not in export.read_text(encoding="utf-8"), "out of the files at once"
    long_ago = datetime(2025, 1, 1)
    with connect(settings.warehouse_path) as con:
        # Everything has gone stale: the next run refreshes every record but hers.
        con.execute("UPDATE person_enrichment SET enriched_at = ?", [long_ago])
        con.execute("UPDATE company_enrichment SET enriched_at = ?", [long_ago])
    materialise_range(settings, "2026-09-01", "2026-09-03")

    refreshed = rows_of(
        settings,
        f"SELECT (SELECT count(*) FROM person_enrichment WHERE enriched_at > '{long_ago}') "
        f"+ (SELECT count(*) FROM company_enrichment WHERE enriched_at > '{long_ago}')",
    )[0][0]
    assert _look_ups(provider) - first == refreshed
    hers = f"SELECT enriched_at FROM person_enrichment WHERE identity = '{ADA}'"
    assert rows_of(settings, hers) == [(long_ago,)]
    assert ADA not in export.read_text(encoding="utf-8")
    landed = f"SELECT count(*) FROM raw_contacts WHERE lower(email) LIKE '%{ADA}%'"
    assert rows_of(settings, landed) == [(2,)], "suppressing erases nothing"


def test_a_suppressed_person_landed_by_file_costs_no_look_up(tmp_path: Path, provider: str) -> None:
    settings = Settings(base_url=provider)
    assert main(["suppress", ADA]) == 0
    ingest_file(settings.warehouse_path, write_small_csv(tmp_path))
    materialise_range(settings, "2026-09-01", "2026-09-03")

    stored = rows_of(
        settings,
        "SELECT (SELECT count(*) FROM person_enrichment) "
        "+ (SELECT count(*) FROM company_enrichment)",
    )[0][0]
    assert _look_ups(provider) == stored
    assert rows_of(settings, f"SELECT * FROM person_enrichment WHERE identity = '{ADA}'") == []


# --- the intake service ---------------------------------------------------------------------


@pytest.fixture
async def client(journal: IntakeJournal, mover: JournalMover) -> AsyncIterator[httpx.AsyncClient]:
    app = create_intake_app(journal, token=None, mover=mover)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://intake"
    ) as http:
        yield http


@pytest.mark.anyio
async def test_a_suppressed_lead_posted_to_the_intake_is_refused_and_leaves_the_journal(
    client: httpx.AsyncClient, journal: IntakeJournal, mover: JournalMover, settings: Settings
) -> None:
    assert main(["suppress", "--domain", "rival.com"]) == 0
    leads = [{"Email": "spy@rival.com", "First Name": "Spy"}, {"email": "ada@acme.io"}]

    answer = await client.post("/v1/leads", json=leads)
    mover.land_pending()

    # Accepted like any lead (the caller learns nothing), then refused at landing.
    assert answer.status_code == 202
    assert rows_of(settings, "SELECT email FROM raw_contacts") == [("ada@acme.io",)]
    assert rows_of(settings, "SELECT reason, original FROM quarantine") == [("suppressed", None)]
    assert [entry.lead for entry in journal.read_after(0, 10)] == [{"email": "ada@acme.io"}]
    if not is_postgres(settings.warehouse_path):  # there, read_after above is the whole journal
        assert b"spy@rival.com" not in Path(settings.intake_journal_path).read_bytes()


def test_a_suppressed_phone_keeps_its_record_out_of_the_export(
    tmp_path: Path, settings: Settings
) -> None:
    ingest_file(settings.warehouse_path, write_small_csv(tmp_path))
    materialise_range(settings, "2026-09-01", "2026-09-03")
    export = Path(settings.export_dir) / "crm_contacts.csv"
    assert ADA in export.read_text(encoding="utf-8")

    assert main(["suppress", "+1 415-555-0134"]) == 0  # Ada's, written another way
    materialise_range(settings, "2026-09-01", "2026-09-03")

    text = export.read_text(encoding="utf-8")
    assert ADA not in text and "grace@gmail.com" in text


def test_a_row_landing_did_not_recognise_is_refused_when_its_day_is_built(
    tmp_path: Path, settings: Settings
) -> None:
    assert main(["suppress", "+1 212 736 4180"]) == 0
    # Landing reads a phone's digits (here it sees an eleventh, the extension's); validation
    # reads it with the numbering plan's library, as +12127364180.
    path = tmp_path / "odd.csv"
    path.write_text(
        "Email,First Name,Phone Number,Create Date\n"
        '"",Jo,"(212) 736-4180, ext. 5.",2026-09-01 10:00:00\n'
        "grace@gmail.com,Grace,,2026-09-01 12:00:00\n",
        encoding="utf-8",
    )
    assert ingest_file(settings.warehouse_path, path).accepted == 2
    materialise_range(settings, "2026-09-01", "2026-09-01")

    assert rows_of(settings, "SELECT email FROM raw_contacts") == [("grace@gmail.com",)]
    assert rows_of(settings, "SELECT reason, original FROM quarantine") == [("suppressed", None)]
    assert rows_of(settings, "SELECT identity FROM clean_contacts") == [("grace@gmail.com",)]
    # Built from what is left, the day is not built again.
    again = materialise_range(settings, "2026-09-01", "2026-09-01")
    assert metadata_of(again, "clean_contacts")["days_rebuilt"] == 0
