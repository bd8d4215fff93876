"""Values that cross the client's boundary: what we ask for, what comes back, what it cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

Kind = Literal["person", "company"]

# The most look-ups one bulk call may carry (the wire format's limit).
MAX_BULK_SIZE = 100

# The person fields the pipeline can ask the provider for and keeps (person_enrichment's
# profile columns), grouped by what they tell; field profiles ask for some of the groups.
PERSON_NAME_FIELDS = ("full_name", "first_name", "last_name")
PERSON_ROLE_FIELDS = ("job_title", "seniority_level", "job_function")
PERSON_EMPLOYER_FIELDS = ("company_name", "company_domain", "company_industry", "company_size")
PERSON_LOCATION_FIELDS = ("city", "state", "country")
PERSON_CONTACT_FIELDS = ("linkedin_url", "work_email", "mobile_phone")
PERSON_FIELDS = (
    "legion_id",
    *PERSON_NAME_FIELDS,
    *PERSON_ROLE_FIELDS,
    *PERSON_EMPLOYER_FIELDS,
    *PERSON_LOCATION_FIELDS,
    *PERSON_CONTACT_FIELDS,
)

PERSON_IDENTIFIER_FIELDS = (
    "email",
    "phone",
    "social_url",
    "first_name",
    "last_name",
    "full_name",
    "company",
)


@dataclass(frozen=True, slots=True)
class PersonQuery:
    """One person look-up. ``key`` is our identity for the record; it is never sent as an
    identifier (bulk calls carry it in ``metadata`` to map answers back)."""

    key: str
    email: str | None = None
    phone: str | None = None
    social_url: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    full_name: str | None = None
    company: str | None = None

    def identifiers(self) -> dict[str, str]:
        return {name: value for name in PERSON_IDENTIFIER_FIELDS if (value := getattr(self, name))}


@dataclass(frozen=True, slots=True)
class CompanyQuery:
    key: str
    domain: str

    def identifiers(self) -> dict[str, str]:
        return {"domain": self.domain}


Query = PersonQuery | CompanyQuery


class Outcome(StrEnum):
    MATCHED = "matched"
    NO_MATCH = "no_match"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class EnrichmentResult:
    key: str
    status: Outcome
    record: dict[str, Any] | None = None
    match_metadata: dict[str, Any] | None = None
    error: str | None = None


@dataclass(slots=True)
class CallStats:
    """What the enrichment calls cost, as the user sees it in asset metadata."""

    requests: int = 0
    responses_by_status: dict[int, int] = field(default_factory=dict)
    rate_limited: int = 0
    retries: int = 0
    credits_used: int = 0
    credits_remaining: int | None = None
    bulk_fallbacks: int = 0
    # Pauses imposed by the provider's rate limit, so slow runs can be explained.
    throttle_waits: int = 0
    throttle_wait_s: float = 0.0
    # The rate limit as learned from the provider's headers (None: it never said).
    rate_limit: int | None = None
    rate_window_s: float | None = None
    # Requests allowed in flight, sized to the rate and the provider's latency (Little's law).
    concurrency_target: int | None = None
    # A per-run credit budget was reached: the run stopped cleanly, ``deferred`` queries were
    # not attempted and wait for the next run.
    budget_exhausted: bool = False
    deferred: int = 0
    # Look-ups still refused with 429 after every retry: pending for the next run, not errors.
    rate_limited_pending: int = 0

    def record_response(self, status_code: int) -> None:
        self.responses_by_status[status_code] = self.responses_by_status.get(status_code, 0) + 1
