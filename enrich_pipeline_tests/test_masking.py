"""Personal data stays out of Dagster's event log, which no erasure reaches: previews and
failure lists show masked examples; a development setting shows them in full."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from dagster import DagsterInstance
from dagster._serdes import serialize_value

from enrich_pipeline.dagster_layer.destinations import DestinationReport
from enrich_pipeline.ingest import ingest_file
from enrich_pipeline.masking import (
    mask_email,
    mask_emails_in,
    mask_frame,
    mask_identity,
    mask_phone,
)
from enrich_pipeline.settings import Settings
from enrich_pipeline_tests.helpers import (
    materialise_range,
    metadata_of,
    read_warehouse,
    write_small_csv,
)


@pytest.mark.parametrize(
    ("mask", "value", "masked"),
    [
        # An email keeps its initial and its domain.
        (mask_email, "jane.doe@acme.com", "j***@acme.com"),
        (mask_email, "x@acme.com", "x***@acme.com"),
        (mask_email, "no-at-sign", "n***"),
        # A phone keeps its first and last two characters.
        (mask_phone, "+14155550134", "+1***34"),
        (mask_phone, "(415) 555-0134", "(4***34"),
        (mask_phone, "12345", "***"),
        # Every kind of identity key.
        (mask_identity, "jane@acme.com", "j***@acme.com"),
        (mask_identity, "phone:+14155550134", "phone:+1***34"),
        (mask_identity, "social:edsger-dijkstra", "social:e***"),
        (mask_identity, "name:katherine johnson|nasa langley", "name:k***|nasa langley"),
    ],
)
def test_a_masked_value_is_recognisable_but_not_the_value(
    mask: Callable[[str], str], value: str, masked: str
) -> None:
    assert mask(value) == masked


def test_a_frame_is_masked_column_by_column_and_the_rest_kept() -> None:
    frame = pd.DataFrame(
        {
            "identity": ["jane@acme.com", None],
            "email": ["jane@acme.com", None],
            "mobilephone": ["+14155550134", None],
            "first_name": ["Jane", "Alan"],
            "full_name": ["Jane Doe", "Alan Turing"],
            "linkedin_url": ["https://linkedin.com/in/jane", None],
            "company_name": ["Acme", "Bletchley"],
            "job_title": ["CTO", "Cryptanalyst"],
        }
    )
    masked = mask_frame(frame)
    assert masked.iloc[0].tolist() == [
        "j***@acme.com",
        "j***@acme.com",
        "+1***34",
        "J***",
        "J***",
        "h***",
        "Acme",
        "CTO",
    ]
    assert masked["email"].isna().tolist() == [False, True]
    assert frame["email"].iloc[0] == "jane@acme.com", "the original is left alone"


def test_a_failure_list_masks_the_email_and_any_address_in_the_error() -> None:
    report = DestinationReport()
    report.add_failure("jane@acme.com", "Contact jane@acme.com already exists (id 42)")
    assert report.failures == [("j***@acme.com", "Contact j***@acme.com already exists (id 42)")]
    assert mask_emails_in("no address here") == "no address here"
    # The addresses a server rejects are the ones it quotes, valid or not.
    assert (
        mask_emails_in("Email address jane@acme is invalid") == "Email address j***@acme is invalid"
    )
    assert mask_emails_in("Bad value JANE (first name)", "JANE") == "Bad value J*** (first name)"


def _run_text(instance: DagsterInstance, run_id: str) -> str:
    """Everything the run put in Dagster's event log: messages, metadata, previews."""
    return "\n".join(serialize_value(record) for record in instance.all_logs(run_id))


def _personal_values(warehouse: str) -> set[str]:
    with read_warehouse(warehouse) as con:
        rows = con.execute(
            """
            SELECT email FROM clean_contacts UNION SELECT phone FROM clean_contacts
            UNION SELECT last_name FROM clean_contacts UNION SELECT full_name FROM person_enrichment
            UNION SELECT mobile_phone FROM person_enrichment
            UNION SELECT work_email FROM person_enrichment
            """
        ).fetchall()
    return {value for (value,) in rows if value and len(value) >= 5}


def test_a_whole_runs_event_log_holds_no_email_phone_or_name(tmp_path: Path) -> None:
    settings = Settings()
    ingest_file(settings.warehouse_path, write_small_csv(tmp_path))
    with DagsterInstance.ephemeral() as instance:
        result = materialise_range(settings, "2026-09-01", "2026-09-03", instance)
        text = _run_text(instance, result.run_id)
    values = _personal_values(settings.warehouse_path)
    assert "ada.lovelace@analytical-engines.io" in values and "Lovelace" in values
    assert [value for value in values if value in text] == []
    assert "a***@analytical-engines.io" in text, "masked examples are shown"


def test_full_previews_show_the_values_on_a_development_machine(tmp_path: Path) -> None:
    settings = Settings(full_previews=True)
    ingest_file(settings.warehouse_path, write_small_csv(tmp_path))
    result = materialise_range(settings, "2026-09-01", "2026-09-03")
    preview = metadata_of(result, "clean_contacts")["preview"]
    assert "ada.lovelace@analytical-engines.io" in str(preview)
