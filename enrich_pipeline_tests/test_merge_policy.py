"""The merge policy, rule by rule and in both directions, on the SQL it compiles to."""

from __future__ import annotations

import json
from typing import Any

import duckdb
import pytest

from enrich_pipeline.merge_policy import (
    DEFAULT_POLICY,
    PREFIX,
    Candidate,
    Confidence,
    FieldRule,
    MergePolicy,
    provenance_sql,
    value_sql,
)


def column(candidate: Candidate) -> str:
    return f"{PREFIX[candidate.origin]}{candidate.column}"


ALL_INPUTS = list(
    dict.fromkeys(column(c) for rule in DEFAULT_POLICY.rules for c in rule.candidates)
)


def merge_one(
    rule: FieldRule, values: dict[str, Any], confidence: str | None, policy: MergePolicy
) -> tuple[Any, dict[str, Any] | None]:
    """Run one rule's compiled SQL over a single input row."""
    columns = {name: None for name in ALL_INPUTS} | values
    columns |= {
        "person_match_confidence": confidence,
        "person_enriched_at": "2026-09-02 00:00:00",
        "co_enriched_at": "2026-09-03 00:00:00",
        "lead_received_at": "2026-09-01 00:00:00",
    }
    select = ", ".join(f"$v{i}::VARCHAR AS {name}" for i, name in enumerate(columns))
    params = {f"v{i}": value for i, value in enumerate(columns.values())}
    con = duckdb.connect()
    value, provenance = con.execute(
        f"SELECT {value_sql(rule, policy)}, to_json({provenance_sql(rule, policy)}) "
        f"FROM (SELECT {select})",
        params,
    ).fetchone()
    con.close()
    return value, json.loads(provenance) if provenance else None


CASES = [
    (rule, first, second)
    for rule in DEFAULT_POLICY.rules
    for first, second in zip(rule.candidates, rule.candidates[1:], strict=False)
]


@pytest.mark.parametrize("rule", DEFAULT_POLICY.rules, ids=lambda r: r.field)
def test_each_candidate_alone_fills_the_field_and_says_where_from(rule: FieldRule) -> None:
    for candidate in rule.candidates:
        value, provenance = merge_one(rule, {column(candidate): "X"}, "high", DEFAULT_POLICY)
        assert value == "X"
        assert provenance is not None and provenance["source"] == candidate.origin


@pytest.mark.parametrize(
    ("rule", "first", "second"), CASES, ids=lambda x: getattr(x, "field", None)
)
def test_the_earlier_candidate_wins_over_the_later_both_ways(
    rule: FieldRule, first: Candidate, second: Candidate
) -> None:
    both = {column(first): "first", column(second): "second"}
    assert merge_one(rule, both, "high", DEFAULT_POLICY)[0] == "first"
    # The other direction: without the first, the second fills it.
    assert merge_one(rule, {column(second): "second"}, "high", DEFAULT_POLICY)[0] == "second"


@pytest.mark.parametrize("rule", DEFAULT_POLICY.rules, ids=lambda r: r.field)
def test_an_empty_value_never_overwrites(rule: FieldRule) -> None:
    last = rule.candidates[-1]
    values = {column(c): "  " for c in rule.candidates[:-1]} | {column(last): "kept"}
    value, provenance = merge_one(rule, values, "high", DEFAULT_POLICY)
    assert value == "kept"
    assert provenance is not None and provenance["source"] == last.origin


GATED = [rule for rule in DEFAULT_POLICY.rules if rule.confidence_gated]


@pytest.mark.parametrize("rule", GATED, ids=lambda r: r.field)
@pytest.mark.parametrize(
    ("confidence", "trusted"),
    [("high", True), ("moderate", True), ("low", False), (None, False)],
)
def test_person_values_count_only_at_the_minimum_confidence(
    rule: FieldRule, confidence: str | None, trusted: bool
) -> None:
    person = next(c for c in rule.candidates if c.origin == "person")
    values = {column(person): "from profile"}
    lead = next((c for c in rule.candidates if c.origin == "lead"), None)
    if lead is not None:
        values[column(lead)] = "from lead"
    value, provenance = merge_one(rule, values, confidence, DEFAULT_POLICY)
    if trusted:
        assert value == "from profile"
        assert provenance == {
            "source": "person",
            "confidence": confidence,
            "enriched_at": "2026-09-02 00:00:00",
        }
    else:
        assert value == ("from lead" if lead is not None else None)


def test_the_minimum_confidence_is_configurable() -> None:
    strict = MergePolicy(rules=DEFAULT_POLICY.rules, min_confidence=Confidence.HIGH)
    rule = strict.rule("job_title")
    values = {"person_job_title": "CTO", "lead_job_title": "Engineer"}
    assert merge_one(rule, values, "moderate", strict)[0] == "Engineer"
    assert merge_one(rule, values, "moderate", DEFAULT_POLICY)[0] == "CTO"


def test_the_defaults_keep_what_a_person_typed_for_name_and_phone() -> None:
    for field in ("first_name", "last_name", "phone"):
        assert DEFAULT_POLICY.rule(field).candidates[0].origin == "lead"
    for field in ("job_title", "company_name", "seniority", "city", "state", "country"):
        rule = DEFAULT_POLICY.rule(field)
        assert rule.confidence_gated
        assert rule.candidates[0].origin in ("person", "company")
