"""``preview_crm_records`` (one lead's CRM record in Python, before it lands) against what the
set-based path makes of the same lead once landed, rebuilt and merged.

Scenarios are random but seeded: several leads per email over several days, phone and LinkedIn
leads whose matched work email joins them to an email's record, persons matched at every
confidence, unmatched or in error, companies matched or not, job changes."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from enrich_pipeline.intake.journal import IntakeJournal
from enrich_pipeline.intake.landing import land_from_journal, landed_values
from enrich_pipeline.provider.models import EnrichmentResult, Outcome
from enrich_pipeline.warehouse.connection import connect, hold_open
from enrich_pipeline.warehouse.contacts import clean_contact, rebuild_clean_contacts
from enrich_pipeline.warehouse.crm import crm_records, merge_crm_contacts, preview_crm_records
from enrich_pipeline.warehouse.enrichment import store_companies, store_persons

NOW = datetime(2026, 8, 10, 12, 0, 0, 250_000)
EMAILS = [f"p{i}@acme{i % 3}.example" for i in range(6)] + ["solo@gmail.com"]
DOMAINS = ["acme0.example", "acme1.example", "acme2.example", "other.example"]
PHONES = ["+1 415 555 0101", "(415) 555-0102", "+44 20 7946 0958"]


def _maybe(rng: random.Random, value: Any, share: float = 0.6) -> Any:
    return value if rng.random() < share else rng.choice([None, "", "  "])


def _lead(rng: random.Random, email: str | None) -> dict[str, Any]:
    lead: dict[str, Any] = {
        "email": email,
        "first_name": _maybe(rng, rng.choice(["Ann", " Bo ", "Cy"])),
        "Last Name": _maybe(rng, rng.choice(["Ng", "Okafor", "\u00a0Li"])),
        "phone": _maybe(rng, rng.choice(PHONES), 0.4),
        "company": _maybe(rng, rng.choice(["Acme", "Initech"])),
        "website": _maybe(rng, rng.choice(["https://www.acme1.example/x", "gmail.com", "nope"])),
        "linkedin_url": _maybe(rng, rng.choice(["https://linkedin.com/in/Ann-Ng/", "x.com/a"])),
        "title": _maybe(rng, rng.choice(["CTO", "Head of Sales"])),
        "city": _maybe(rng, "Oslo"),
        "state": _maybe(rng, "CA", 0.3),
        "country": _maybe(rng, rng.choice(["NO", "US"])),
    }
    return {key: value for key, value in lead.items() if value is not None}


def _person(rng: random.Random, identity: str, email: str) -> EnrichmentResult:
    status = rng.choice([Outcome.MATCHED, Outcome.MATCHED, Outcome.NO_MATCH, Outcome.ERROR])
    if status is not Outcome.MATCHED:
        return EnrichmentResult(identity, status, error="boom" if status is Outcome.ERROR else None)
    record = {
        "first_name": _maybe(rng, "Annie"),
        # Some the lead's own value in another case: the lead's spelling must win.
        "job_title": _maybe(rng, rng.choice(["VP Sales", " Engineer ", "cto"])),
        "seniority_level": _maybe(rng, "vp"),
        "company_name": _maybe(rng, "Acme Corp"),
        "company_domain": _maybe(rng, rng.choice(DOMAINS)),
        "city": _maybe(rng, rng.choice(["Bergen", "OSLO"])),
        "country": _maybe(rng, "Norway"),
        "linkedin_url": _maybe(rng, "https://www.linkedin.com/in/annie"),
        "mobile_phone": _maybe(rng, "+4790000000"),
        # Most phone and LinkedIn matches join the record under test.
        "work_email": rng.choice([email, email, rng.choice(EMAILS)]) if ":" in identity else None,
    }
    confidence = rng.choice(["high", "moderate", "low", "HIGH", None])
    return EnrichmentResult(identity, status, record, {"match_confidence": confidence})


def _company(rng: random.Random, domain: str) -> EnrichmentResult:
    if rng.random() < 0.3:
        return EnrichmentResult(domain, Outcome.NO_MATCH)
    record = {"name": "Acme", "industry": _maybe(rng, "software"), "legion_employee_count": 250}
    return EnrichmentResult(domain, Outcome.MATCHED, record)


def _land(journal: IntakeJournal, warehouse: Path, leads: list[tuple[dict, datetime]]) -> None:
    for lead, received_at in leads:
        journal.append([lead], source="api", received_at=received_at)
    land_from_journal(journal, warehouse)


def _build_and_merge(warehouse: Path, now: datetime) -> None:
    with connect(warehouse) as con:
        start, end = NOW.date() - timedelta(days=5), NOW.date() + timedelta(days=1)
        rebuild_clean_contacts(con, start, end, now)
        merge_crm_contacts(con, start, end, now)


@pytest.mark.parametrize("seed", range(24))
def test_the_preview_is_the_record_the_merge_makes(tmp_path: Path, seed: int) -> None:
    # Open throughout, so each step's connection costs no file open.
    with hold_open(tmp_path / "warehouse.duckdb", max_hold_s=60):
        _check_preview(tmp_path, random.Random(seed))


def _check_preview(tmp_path: Path, rng: random.Random) -> None:
    email = rng.choice(EMAILS)
    warehouse = tmp_path / "warehouse.duckdb"
    journal = IntakeJournal(tmp_path / "journal.sqlite3")
    earlier = [
        (
            _lead(rng, rng.choice([*EMAILS, email, None, None])),
            NOW - timedelta(days=rng.randint(0, 4), minutes=i),
        )
        for i in range(rng.randint(0, 12))
    ]
    # Phone and LinkedIn identities need something to land on: a phone or a profile URL.
    earlier = [
        (lead | ({} if "email" in lead else {"phone": rng.choice(PHONES)}), received_at)
        for lead, received_at in earlier
    ]
    _land(journal, warehouse, earlier)
    _build_and_merge(warehouse, NOW - timedelta(hours=1))
    with connect(warehouse) as con:
        identities = [
            row[0]
            for row in con.execute(
                "SELECT DISTINCT identity FROM clean_contacts ORDER BY 1"
            ).fetchall()
        ]
        identities += [email]
        store_persons(
            con,
            [_person(rng, i, email) for i in dict.fromkeys(identities) if rng.random() < 0.8],
            NOW,
        )
        store_companies(con, [_company(rng, d) for d in DOMAINS if rng.random() < 0.7], NOW)
        if rng.random() < 0.5:
            # A refreshed profile at another employer: a job change for that identity.
            store_persons(
                con, [_person(rng, rng.choice(identities), email)], NOW + timedelta(seconds=1)
            )

    lead = _lead(rng, rng.choice([email, email.upper(), f" {email} "]))
    received_at = NOW + timedelta(minutes=5)
    contact = clean_contact(landed_values(lead), received_at)
    assert contact is not None
    with connect(warehouse) as con:
        preview = preview_crm_records(con, [contact], NOW + timedelta(minutes=6))

    _land(journal, warehouse, [(lead, received_at)])
    _build_and_merge(warehouse, NOW + timedelta(minutes=6))
    with connect(warehouse) as con:
        merged = crm_records(con, [email])
    assert preview == merged


def test_a_lead_without_a_valid_email_has_no_preview() -> None:
    assert clean_contact(landed_values({"phone": "+1 415 555 0101"}), NOW) is None
    assert clean_contact(landed_values({"email": "not-an-address"}), NOW) is None
