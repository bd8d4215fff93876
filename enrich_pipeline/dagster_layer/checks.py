"""Data-quality checks and freshness policies: what the UI shows beside each asset.

The checks are unpartitioned: each judges the whole warehouse (every partition's rows), once per
run that includes it, whichever partition range the run materialised. Their figures come from
``warehouse.quality``; every result carries them (counts, share, threshold) as metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetKey,
    AssetsDefinition,
    FreshnessPolicy,
    MetadataValue,
    apply_freshness_policy,
    asset_check,
)

from enrich_pipeline.clock import utc_now
from enrich_pipeline.dagster_layer.assets import (
    clean_contacts,
    crm_exports,
    enriched_companies,
    enriched_persons,
)
from enrich_pipeline.dagster_layer.resources import (
    PipelineResource,
    SettingsResource,
    WarehouseResource,
)
from enrich_pipeline.settings import PipelineSettings, QualitySettings
from enrich_pipeline.settings_base import env_name
from enrich_pipeline.warehouse.crm_sync import HUBSPOT, waiting_for
from enrich_pipeline.warehouse.quality import (
    Staleness,
    company_staleness,
    duplicate_crm_emails,
    person_coverage,
    person_match_rate,
    person_staleness,
    quarantine_share,
)


class QualityThresholds(SettingsResource, QualitySettings):
    """What the warning checks accept, as shares between 0 and 1."""


def _percent(share: float) -> str:
    return f"{share:.1%}"


def _share_metadata(share: float | None, threshold: float) -> dict[str, Any]:
    figures: dict[str, Any] = {"threshold": MetadataValue.float(threshold)}
    if share is not None:
        figures["share"] = MetadataValue.float(round(share, 4))
    return figures


@asset_check(
    asset=crm_exports,
    name="no_duplicate_emails",
    description="No email is held by more than one CRM record (the import is keyed by email).",
)
def no_duplicate_emails(warehouse: WarehouseResource) -> AssetCheckResult:
    with warehouse.connect() as con:
        found = duplicate_crm_emails(con)
    passed = found.duplicated_emails == 0
    return AssetCheckResult(
        passed=passed,
        severity=AssetCheckSeverity.ERROR,
        description=(
            f"{found.records} CRM records, every email once"
            if passed
            else f"{found.duplicated_emails} emails are held by more than one record "
            f"({found.extra_records} records too many)"
        ),
        metadata={
            "crm_records": found.records,
            "duplicated_emails": found.duplicated_emails,
            "extra_records": found.extra_records,
        },
    )


@asset_check(
    asset=enriched_persons,
    name="every_contact_has_a_person_status",
    description="Every clean contact's identity has a person answer (matched, no_match or error).",
)
def every_contact_has_a_person_status(warehouse: WarehouseResource) -> AssetCheckResult:
    with warehouse.connect() as con:
        coverage = person_coverage(con)
    passed = coverage.without_status == 0
    return AssetCheckResult(
        passed=passed,
        severity=AssetCheckSeverity.ERROR,
        description=(
            f"all {coverage.identities} contact identities have a person answer"
            if passed
            else f"{coverage.without_status} of {coverage.identities} contact identities have "
            "no person answer: materialise enriched_persons for their partitions"
        ),
        metadata={
            "contact_identities": coverage.identities,
            "without_person_status": coverage.without_status,
        },
    )


@asset_check(
    asset=enriched_persons,
    name="match_rate_above_floor",
    description=(
        "Matched / (matched + no_match) over every stored person answer is at least "
        f"{env_name(QualitySettings, 'min_match_rate')}."
    ),
)
def match_rate_above_floor(
    warehouse: WarehouseResource, quality: QualityThresholds
) -> AssetCheckResult:
    with warehouse.connect() as con:
        found = person_match_rate(con)
    rate, floor = found.rate, quality.min_match_rate
    passed = rate is None or rate >= floor
    if rate is None:
        description = "no matched or no_match answers yet"
    else:
        relation = "at or above" if passed else "below"
        description = f"match rate {_percent(rate)} is {relation} the floor of {_percent(floor)}"
    return AssetCheckResult(
        passed=passed,
        severity=AssetCheckSeverity.WARN,
        description=description,
        metadata={
            "matched": found.matched,
            "no_match": found.no_match,
            **_share_metadata(rate, floor),
        },
    )


def _staleness_result(found: Staleness, ceiling: float, what: str) -> AssetCheckResult:
    share = found.share
    passed = share is None or share <= ceiling
    if share is None:
        description = f"no {what} records yet"
    else:
        relation = "within" if passed else "above"
        description = (
            f"{found.stale} of {found.records} {what} records ({_percent(share)}) are past "
            f"their TTL, {relation} the ceiling of {_percent(ceiling)}"
        )
    return AssetCheckResult(
        passed=passed,
        severity=AssetCheckSeverity.WARN,
        description=description,
        metadata={
            "records": found.records,
            "stale": found.stale,
            "matched_past_ttl": found.matched_past_ttl,
            "no_match_past_retry": found.no_match_past_retry,
            "errors": found.errors,
            **_share_metadata(share, ceiling),
        },
    )


_STALE_DESCRIPTION = (
    "The share of {what} records past their TTL (matched past the {what} TTL, no_match past "
    f"the retry window, errors) is at most {env_name(QualitySettings, 'max_stale_share')}."
)


def _stale_share_check(
    asset: AssetsDefinition, what: str, staleness: Callable[..., Staleness]
) -> AssetChecksDefinition:
    @asset_check(
        asset=asset,
        name="stale_share_below_ceiling",
        description=_STALE_DESCRIPTION.format(what=what),
    )
    def stale_share_below_ceiling(
        warehouse: WarehouseResource, pipeline: PipelineResource, quality: QualityThresholds
    ) -> AssetCheckResult:
        with warehouse.connect() as con:
            found = staleness(con, utc_now(), pipeline.freshness)
        return _staleness_result(found, quality.max_stale_share, what)

    return stale_share_below_ceiling


person_stale_share_below_ceiling = _stale_share_check(enriched_persons, "person", person_staleness)
company_stale_share_below_ceiling = _stale_share_check(
    enriched_companies, "company", company_staleness
)


@asset_check(
    asset=clean_contacts,
    name="quarantine_share_below_ceiling",
    description=(
        "Rows refused at landing or quarantined by validation, as a share of the rows checked "
        f"so far, are at most {env_name(QualitySettings, 'max_quarantine_share')}."
    ),
)
def quarantine_share_below_ceiling(
    warehouse: WarehouseResource, quality: QualityThresholds
) -> AssetCheckResult:
    with warehouse.connect() as con:
        found = quarantine_share(con)
    share, ceiling = found.share, quality.max_quarantine_share
    passed = share is None or share <= ceiling
    if share is None:
        description = "no rows checked yet"
    else:
        relation = "within" if passed else "above"
        description = (
            f"{found.quarantined} of {found.checked} rows ({_percent(share)}) quarantined, "
            f"{relation} the ceiling of {_percent(ceiling)}"
        )
    return AssetCheckResult(
        passed=passed,
        severity=AssetCheckSeverity.WARN,
        description=description,
        metadata={
            "rows_checked": found.checked,
            "quarantined": found.quarantined,
            "refused_at_ingest": found.refused_at_ingest,
            "quarantined_at_validation": found.quarantined_at_validation,
            **_share_metadata(share, ceiling),
        },
    )


@asset_check(
    asset=crm_exports,
    name="every_record_reached_hubspot",
    description=(
        "Every CRM record is in HubSpot when it is a destination: how many wait (failed at their "
        "last attempt, or never sent), to be sent by the next run."
    ),
)
def every_record_reached_hubspot(
    warehouse: WarehouseResource, pipeline: PipelineResource
) -> AssetCheckResult:
    if HUBSPOT not in pipeline.crm_destinations:
        return AssetCheckResult(passed=True, description="hubspot is not a destination")
    with warehouse.connect() as con:
        waiting = waiting_for(con, HUBSPOT)
    return AssetCheckResult(
        passed=waiting.total == 0,
        severity=AssetCheckSeverity.WARN,
        description=(
            "every CRM record has reached HubSpot"
            if waiting.total == 0
            else f"{waiting.total} CRM records wait for HubSpot ({waiting.failed} failed at "
            f"their last attempt, {waiting.never_sent} never sent): the next run sends them"
        ),
        metadata={
            "waiting": waiting.total,
            "failed": waiting.failed,
            "never_sent": waiting.never_sent,
        },
    )


QUALITY_CHECKS = [
    quarantine_share_below_ceiling,
    every_contact_has_a_person_status,
    match_rate_above_floor,
    person_stale_share_below_ceiling,
    company_stale_share_below_ceiling,
    no_duplicate_emails,
    every_record_reached_hubspot,
]


def freshness_policies(settings: PipelineSettings) -> dict[AssetKey, FreshnessPolicy]:
    """How long each asset may go without a materialisation (of any partition) before the UI
    calls it late: its records' TTL, past which everything it holds is due again. The CRM
    export carries the person profiles, so it follows the person TTL. clean_contacts has none:
    contacts arrive when they arrive."""
    person = FreshnessPolicy.time_window(fail_window=timedelta(days=settings.person_ttl_days))
    company = FreshnessPolicy.time_window(fail_window=timedelta(days=settings.company_ttl_days))
    return {
        enriched_persons.key: person,
        enriched_companies.key: company,
        crm_exports.key: person,
    }


def with_freshness(
    assets: Sequence[AssetsDefinition], settings: PipelineSettings
) -> list[AssetsDefinition]:
    """The assets with their freshness policies attached (the others unchanged)."""
    policies = freshness_policies(settings)
    return [
        asset.map_asset_specs(
            lambda spec: (
                apply_freshness_policy(spec, policies[spec.key]) if spec.key in policies else spec
            )
        )
        for asset in assets
    ]
