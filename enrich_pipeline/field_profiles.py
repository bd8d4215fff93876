"""Field profiles: which fields are asked of the provider and which CRM columns are exported.

Asking for fewer fields means smaller answers and less personal data stored (only the fields
asked for are kept, whatever the provider answers); the CRM columns a profile exports are the
ones its fields can fill (plus the lead's own identifying columns).
"""

from __future__ import annotations

from dataclasses import dataclass

from enrich_pipeline.provider.models import (
    PERSON_EMPLOYER_FIELDS,
    PERSON_FIELDS,
    PERSON_LOCATION_FIELDS,
    PERSON_NAME_FIELDS,
    PERSON_ROLE_FIELDS,
    Kind,
)

# The company fields the pipeline can ask the provider for and keeps (company_enrichment's
# columns are filled from them).
COMPANY_FIELDS = (
    "legion_id",
    "name",
    "domain",
    "industry",
    "type",
    "size",
    "founded",
    "linkedin_url",
    "legion_employee_count",
)


@dataclass(frozen=True)
class FieldProfile:
    name: str
    description: str
    person_fields: tuple[str, ...]
    company_fields: tuple[str, ...]
    crm_columns: tuple[str, ...]

    def fields(self, kind: Kind) -> tuple[str, ...]:
        return self.person_fields if kind == "person" else self.company_fields

    @property
    def person_include_fields(self) -> str:
        return ",".join(self.person_fields)

    @property
    def company_include_fields(self) -> str:
        return ",".join(self.company_fields)


_IDENTITY = ("email", "first_name", "last_name")

PROFILES: dict[str, FieldProfile] = {
    profile.name: profile
    for profile in (
        FieldProfile(
            name="sales_prospecting",
            description="everything a rep needs to reach out: contact, role, company, location",
            person_fields=PERSON_FIELDS,
            company_fields=COMPANY_FIELDS,
            crm_columns=(
                *_IDENTITY,
                "phone",
                "mobile_phone",
                "job_title",
                "seniority",
                "company_name",
                "website",
                "city",
                "state",
                "country",
                "industry",
                "employee_count",
                "linkedin_url",
                "job_changed_at",
            ),
        ),
        FieldProfile(
            name="lead_scoring",
            description="firmographics and seniority for scoring; no phone numbers or profiles",
            person_fields=("legion_id", *PERSON_ROLE_FIELDS, *PERSON_EMPLOYER_FIELDS, "country"),
            company_fields=(
                "legion_id",
                "name",
                "domain",
                "industry",
                "size",
                "founded",
                "legion_employee_count",
            ),
            crm_columns=(
                *_IDENTITY,
                "job_title",
                "seniority",
                "job_function",
                "company_name",
                "country",
                "industry",
                "employee_count",
                "job_changed_at",
            ),
        ),
        FieldProfile(
            name="data_hygiene",
            description="who the contact is and where they work, to clean up existing records",
            person_fields=(
                "legion_id",
                *PERSON_NAME_FIELDS,
                "company_name",
                "company_domain",
                *PERSON_LOCATION_FIELDS,
                "work_email",
            ),
            company_fields=("legion_id", "name", "domain"),
            crm_columns=(
                *_IDENTITY,
                "phone",
                "company_name",
                "website",
                "city",
                "state",
                "country",
            ),
        ),
    )
}

DEFAULT_PROFILE = "sales_prospecting"


def field_profile(name: str) -> FieldProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown field profile {name!r}; choose one of {sorted(PROFILES)}"
        ) from None
