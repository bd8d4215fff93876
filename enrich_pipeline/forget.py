"""``enrich-pipeline forget``: erase people everywhere the pipeline keeps them, and keep them
out for good.

For each person (named by email), in this order:
1. the warehouse: every row of theirs in one transaction (``warehouse/erasure.py``), every
   identity of theirs on the suppression list, an audit row; the CRM export files rewritten
   without them; then the whole file rewritten, so no deleted bytes survive in it;
2. the intake journal: their leads, landed or not;
3. with ``crm``, each CRM destination erases them too (HubSpot's GDPR delete).

It waits for the warehouse's write lock like any other writer, and never half-erases: the
warehouse's part commits whole or not at all. Run again, it finds nothing more to remove and
asks the CRMs again: a CRM that failed is retried that way.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from enrich_pipeline.clock import utc_now
from enrich_pipeline.destinations.files import export_paths, write_crm_files
from enrich_pipeline.destinations.hubspot import (
    TOKEN_SETTING,
    EraseOutcome,
    HubSpotAuthError,
    HubSpotClient,
)
from enrich_pipeline.field_profiles import field_profile
from enrich_pipeline.in_flight import claims_path, empty_wal
from enrich_pipeline.intake.journal import open_existing_journal
from enrich_pipeline.intake.landing import landed_values
from enrich_pipeline.masking import mask_email
from enrich_pipeline.normalise import normalise_email, normalise_phone
from enrich_pipeline.settings import PipelineSettings, Settings
from enrich_pipeline.settings_base import env_name
from enrich_pipeline.warehouse.connection import connect, transaction
from enrich_pipeline.warehouse.connection import exists as warehouse_exists
from enrich_pipeline.warehouse.crm_sync import HUBSPOT
from enrich_pipeline.warehouse.erasure import (
    ERASED_TABLES,
    check_all_rows,
    email_pattern,
    erase_subject,
    record_crm_answers,
    rewritten,
)
from enrich_pipeline.warehouse.identities import linkedin_slug, website_domain
from enrich_pipeline.warehouse.schema import SYNC_STATE_DDL

log = logging.getLogger(__name__)

REQUESTED_BY_CLI = "cli"
# How long an erasure waits for a run holding the warehouse before giving up.
DEFAULT_WAIT_S = 600.0


class ForgetError(ValueError):
    """An erasure asked for something that cannot be done; nothing was erased."""


@dataclass
class ForgetReport:
    people: int = 0
    rows_removed: Counter[str] = field(default_factory=Counter)  # table -> rows, all people
    journal_entries: int = 0
    wal_emptied: bool = True  # the intake journal's and the claims file's
    exports_rewritten: bool = False
    # destination -> what it answered (erased / not_found / failed) -> people
    crm_answers: dict[str, Counter[str]] = field(default_factory=dict)
    crm_errors: list[str] = field(default_factory=list)  # masked

    @property
    def crm_failed(self) -> bool:
        return any(answers["failed"] for answers in self.crm_answers.values())


def normalised_emails(values: Sequence[str]) -> list[str]:
    """The distinct normalised emails; an unusable one is an error naming its position, with
    the value masked."""
    emails: dict[str, None] = {}
    for position, value in enumerate(values, start=1):
        email, error = normalise_email(value)
        if email is None:
            raise ForgetError(
                f"email {position} ({mask_email(value.strip())}) is "
                + ("empty" if error is None else "not a valid address")
            )
        emails[email] = None
    return list(emails)


def read_identifier_file(path: str | Path) -> list[str]:
    """One identifier a line (the first cell of a CSV row); blank lines, lines starting with
    ``#`` and a header cell without ``@`` or digits (``Email``) are skipped."""
    with Path(path).open(encoding="utf-8-sig", newline="") as handle:
        cells = [row[0].strip() for row in csv.reader(handle) if row and row[0].strip()]
    return [
        cell
        for index, cell in enumerate(cells)
        if not cell.startswith("#")
        and not (index == 0 and "@" not in cell and not any(c.isdigit() for c in cell))
    ]


def forget(
    settings: Settings,
    emails: Sequence[str],
    *,
    crm: bool,
    requested_by: str = REQUESTED_BY_CLI,
    wait_s: float = DEFAULT_WAIT_S,
) -> ForgetReport:
    """Erase the people with these (normalised) emails; see the module's description."""
    hubspot = _hubspot_client(settings) if crm and HUBSPOT in settings.crm_destinations else None
    report = ForgetReport(people=len(emails))
    if not emails:
        return report
    now = utc_now()
    with rewritten(settings.warehouse_path, lock_timeout_s=wait_s) as con:
        with transaction(con):
            check_all_rows(con, now)
            erased = [
                erase_subject(con, email, requested_by=requested_by, now=now) for email in emails
            ]
        report.exports_rewritten = rewrite_exports(con, settings)
    for subject in erased:
        report.rows_removed.update(subject.rows_removed)
    identities = {identity for subject in erased for identity in subject.identities}
    report.journal_entries, journal_emptied = _erase_from_journal(
        settings, _is_theirs(emails, identities)
    )
    # Claims on their look-ups were released long ago; the claims file's WAL may still hold them.
    report.wal_emptied = journal_emptied and empty_wal(claims_path(settings.warehouse_path))
    if hubspot is not None:
        outcomes = _erase_in_hubspot(hubspot, emails)
        report.crm_answers[HUBSPOT] = Counter(outcome.status for outcome in outcomes)
        report.crm_errors = [
            f"{mask_email(outcome.email)}: {outcome.error}" for outcome in outcomes if outcome.error
        ]
        with connect(settings.warehouse_path, lock_timeout_s=wait_s) as con:
            record_crm_answers(
                con,
                {
                    subject.erasure_id: {HUBSPOT: _answer(outcome)}
                    for subject, outcome in zip(erased, outcomes, strict=True)
                },
            )
    log.info(
        "erased %d people: %s; %d journal entries",
        len(emails),
        ", ".join(f"{table} {report.rows_removed[table]}" for table in ERASED_TABLES),
        report.journal_entries,
    )
    return report


def rewrite_exports(con: duckdb.DuckDBPyConnection, settings: Settings) -> bool:
    """Write the CRM export files again, now without whoever is suppressed, if they exist."""
    csv_path, parquet_path = export_paths(settings.export_dir)
    if not (csv_path.exists() or parquet_path.exists()):
        return False
    write_crm_files(con, settings.export_dir, field_profile(settings.field_profile).crm_columns)
    return True


def emails_for_hubspot_ids(settings: Settings, ids: Collection[str]) -> list[str]:
    """The emails of these HubSpot contact ids, from what the pipeline sent HubSpot and what
    it landed from HubSpot's webhooks; ids it never knew are not in the answer."""
    found: dict[str, None] = {}
    if warehouse_exists(settings.warehouse_path):
        with connect(settings.warehouse_path) as con:
            con.execute(SYNC_STATE_DDL)
            rows = con.execute(
                "SELECT DISTINCT email FROM crm_sync_state "
                "WHERE destination = ? AND remote_id IN (SELECT unnest(?)) ORDER BY email",
                [HUBSPOT, list(ids)],
            ).fetchall()
        found.update((row[0], None) for row in rows)
    journal = open_existing_journal(settings)
    if journal is not None:
        try:
            for object_id in ids:
                # The key the HubSpot receiver journals each read-back contact under.
                for lead in journal.leads_under_key(f"hubspot:{object_id}:"):
                    email = normalise_email(landed_values(lead)["email"])[0]
                    if email is not None:
                        found[email] = None
        finally:
            journal.close()
    return list(found)


def _hubspot_client(settings: Settings) -> Callable[[], HubSpotClient]:
    token = settings.secret("hubspot_access_token")
    if token is None:
        raise ForgetError(
            f"asked to erase in HubSpot, a destination in "
            f"{env_name(PipelineSettings, 'crm_destinations')}, but {TOKEN_SETTING} is not set; "
            "nothing was erased"
        )
    return lambda: HubSpotClient(
        token=token, base_url=settings.hubspot_base_url, max_attempts=settings.max_attempts
    )


def _erase_in_hubspot(
    hubspot: Callable[[], HubSpotClient], emails: Sequence[str]
) -> list[EraseOutcome]:
    async def erase() -> list[EraseOutcome]:
        async with hubspot() as client:
            return await client.gdpr_delete(emails)

    try:
        return asyncio.run(erase())
    except HubSpotAuthError as exc:
        # Names the token setting and the scope; the warehouse's part is done either way.
        return [EraseOutcome(email, "failed", str(exc)) for email in emails]


def _answer(outcome: EraseOutcome) -> str:
    return outcome.status if outcome.error is None else f"{outcome.status}: {outcome.error}"


def _is_theirs(
    emails: Collection[str], identities: Collection[str]
) -> Callable[[dict[str, Any]], bool]:
    """Whether a journaled lead is theirs: one of their addresses anywhere in it (valid or not,
    under any key), or one of their other identities as validation would read the lead."""
    addresses = re.compile("|".join(f"(?:{email_pattern(email)})" for email in emails))
    phones = any(identity.startswith("phone:") for identity in identities)

    def is_theirs(lead: dict[str, Any]) -> bool:
        if addresses.search(json.dumps(lead, ensure_ascii=False).lower()):
            return True
        values = landed_values(lead)
        keys = [f"social:{slug}" if (slug := linkedin_slug(values["linkedin_url"])) else None]
        if phones:
            phone = normalise_phone(values["phone"])[0]
            keys.append(f"phone:{phone}" if phone else None)
        name = values["full_name"] or " ".join(
            v for v in (values["first_name"], values["last_name"]) if v
        )
        company = values["company_name"] or website_domain(values["website"])
        if name and company and not (values["email"] or values["phone"] or keys[0]):
            keys.append(f"name:{name.strip().lower()}|{company.lower()}")
        return any(key in identities for key in keys if key is not None)

    return is_theirs


def _erase_from_journal(
    settings: Settings, is_theirs: Callable[[dict[str, Any]], bool]
) -> tuple[int, bool]:
    journal = open_existing_journal(settings)
    if journal is None:
        return 0, True
    try:
        return journal.erase(is_theirs)
    finally:
        journal.close()
