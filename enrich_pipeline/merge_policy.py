"""Which value wins in a CRM record, as data: per field, the candidates in priority order.

A candidate is a column of the lead (what a person typed or a source sent), of the matched
person profile, or of the matched company. The first non-empty candidate wins, so an empty value
never overwrites anything. Person candidates can be gated on the match's confidence: a guess the
provider itself is unsure of does not replace what the lead said.

The policy compiles to SQL expressions (value and provenance per field) that the CRM merge runs
over every record at once, and evaluates in Python for one record (``merge_one``) where an answer
cannot wait for the set-based merge; a test holds the two to the same results.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

Origin = Literal["lead", "person", "company"]


class Confidence(StrEnum):
    LOW = "low"
    MODERATE = "moderate"
    HIGH = "high"

    @property
    def rank(self) -> int:
        # Looked up for every record the sandbox answers: a table, not a dict built per call.
        return _CONFIDENCE_RANK[self]


_CONFIDENCE_RANK = {Confidence.LOW: 1, Confidence.MODERATE: 2, Confidence.HIGH: 3}


@dataclass(frozen=True)
class Candidate:
    origin: Origin
    column: str


@dataclass(frozen=True)
class FieldRule:
    field: str
    candidates: tuple[Candidate, ...]
    # Person values count only when the match confidence reaches the policy's minimum.
    confidence_gated: bool = False


def lead(column: str) -> Candidate:
    return Candidate("lead", column)


def person(column: str) -> Candidate:
    return Candidate("person", column)


def company(column: str) -> Candidate:
    return Candidate("company", column)


@dataclass(frozen=True)
class MergePolicy:
    rules: tuple[FieldRule, ...]
    min_confidence: Confidence = Confidence.MODERATE

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(rule.field for rule in self.rules)

    def rule(self, field: str) -> FieldRule:
        return next(rule for rule in self.rules if rule.field == field)

    @property
    def fingerprint(self) -> str:
        """Changes whenever a rule or the confidence bar does: records merged under another
        policy are merged again."""
        return hashlib.sha256(repr(self).encode()).hexdigest()[:16]


# What a person typed wins for name and phone; enrichment wins for title, company, seniority
# and location when the match is confident enough; the rest is filled by whoever has it.
DEFAULT_RULES: tuple[FieldRule, ...] = (
    FieldRule("first_name", (lead("first_name"), person("first_name"))),
    FieldRule("last_name", (lead("last_name"), person("last_name"))),
    FieldRule("phone", (lead("phone"),)),
    FieldRule("mobile_phone", (person("mobile_phone"),)),
    FieldRule("job_title", (person("job_title"), lead("job_title")), confidence_gated=True),
    FieldRule("seniority", (person("seniority_level"),), confidence_gated=True),
    FieldRule("job_function", (person("job_function"),), confidence_gated=True),
    FieldRule(
        "company_name",
        (company("name"), person("company_name"), lead("company_name")),
        confidence_gated=True,
    ),
    FieldRule("website", (lead("website"), person("company_website"), lead("company_website"))),
    FieldRule("city", (person("city"), lead("city")), confidence_gated=True),
    FieldRule("state", (person("state"), lead("state")), confidence_gated=True),
    FieldRule("country", (person("country"), lead("country")), confidence_gated=True),
    FieldRule("industry", (company("industry"), person("company_industry"))),
    FieldRule("employee_count", (company("employee_count"),)),
    FieldRule("linkedin_url", (person("linkedin_url"), lead("linkedin_url"))),
)

DEFAULT_POLICY = MergePolicy(rules=DEFAULT_RULES)


def confidence_rank_sql(column: str) -> str:
    return (
        f"CASE lower({column}) WHEN 'high' THEN 3 WHEN 'moderate' THEN 2 "
        f"WHEN 'low' THEN 1 ELSE 0 END"
    )


# Input column prefixes in the merge query; distinct from every CRM field name.
PREFIX: dict[Origin, str] = {"lead": "lead_", "person": "person_", "company": "co_"}
# Per origin: the confidence and the moment a value of that origin carries.
_PROVENANCE: dict[Origin, tuple[str, str]] = {
    "lead": ("NULL", "lead_received_at"),
    "person": ("person_match_confidence", "person_enriched_at"),
    "company": ("NULL", "co_enriched_at"),
}


def _text_sql(candidate: Candidate) -> str:
    return f"nullif(trim(CAST({PREFIX[candidate.origin]}{candidate.column} AS VARCHAR)), '')"


def _lead_candidate(rule: FieldRule) -> Candidate | None:
    return next((c for c in rule.candidates if c.origin == "lead"), None)


def _candidate_sql(candidate: Candidate, rule: FieldRule, policy: MergePolicy) -> str:
    """The candidate's value in the merge query, NULL when it may not be used. An enriched
    value that is the lead's ignoring case takes the lead's spelling ("Vandelay332", not the
    provider's "vandelay332")."""
    value = _text_sql(candidate)
    lead_candidate = _lead_candidate(rule)
    if candidate.origin != "lead" and lead_candidate is not None:
        typed = _text_sql(lead_candidate)
        value = f"CASE WHEN lower({value}) = lower({typed}) THEN {typed} ELSE {value} END"
    if candidate.origin == "person" and rule.confidence_gated:
        gate = f"{confidence_rank_sql('person_match_confidence')} >= {policy.min_confidence.rank}"
        return f"CASE WHEN {gate} THEN {value} END"
    return value


def value_sql(rule: FieldRule, policy: MergePolicy) -> str:
    """The first usable candidate: an empty value never wins over anything."""
    values = ", ".join(_candidate_sql(c, rule, policy) for c in rule.candidates)
    return f"coalesce({values}, NULL)"


def provenance_sql(rule: FieldRule, policy: MergePolicy) -> str:
    """A struct saying where the winning value came from, how sure and how recent it is."""
    branches = []
    for candidate in rule.candidates:
        condition = f"{_candidate_sql(candidate, rule, policy)} IS NOT NULL"
        confidence, when = _PROVENANCE[candidate.origin]
        branches.append(
            f"WHEN {condition} THEN {{'source': '{candidate.origin}', "
            f"'confidence': {confidence}, 'enriched_at': {when}}}"
        )
    return f"CASE {' '.join(branches)} END"


def _candidate_value(
    candidate: Candidate, rule: FieldRule, policy: MergePolicy, inputs: Mapping[str, Any]
) -> str | None:
    """``_candidate_sql`` for one record: ``inputs`` holds the merge query's columns."""
    text = _text(candidate, inputs)
    lead_candidate = _lead_candidate(rule)
    if text is not None and candidate.origin != "lead" and lead_candidate is not None:
        typed = _text(lead_candidate, inputs)
        if typed is not None and typed.lower() == text.lower():
            text = typed
    if text is not None and candidate.origin == "person" and rule.confidence_gated:
        # Confidence is a StrEnum: its members are found by their text.
        confidence = str(inputs.get("person_match_confidence") or "").lower()
        if _CONFIDENCE_RANK.get(confidence, 0) < policy.min_confidence.rank:  # type: ignore[call-overload]
            return None
    return text


def _text(candidate: Candidate, inputs: Mapping[str, Any]) -> str | None:
    value = inputs.get(f"{PREFIX[candidate.origin]}{candidate.column}")
    # DuckDB's trim() removes spaces only.
    return None if value is None else (str(value).strip(" ") or None)


def merge_one(
    policy: MergePolicy, inputs: Mapping[str, Any]
) -> tuple[dict[str, str | None], dict[str, dict[str, Any] | None]]:
    """Per field, the winning value (as text, as the SQL's) and its provenance (source,
    confidence, enriched_at), for one record whose inputs are the merge query's columns."""
    values: dict[str, str | None] = {}
    provenance: dict[str, dict[str, Any] | None] = {}
    for rule in policy.rules:
        values[rule.field] = provenance[rule.field] = None
        for candidate in rule.candidates:
            value = _candidate_value(candidate, rule, policy, inputs)
            if value is not None:
                confidence, when = _PROVENANCE[candidate.origin]
                values[rule.field] = value
                provenance[rule.field] = {
                    "source": candidate.origin,
                    "confidence": None if confidence == "NULL" else inputs.get(confidence),
                    "enriched_at": inputs.get(when),
                }
                break
    return values, provenance
