"""Display casing of the provider's lower-case answers, and the lead's own spelling kept where
an enriched value is the same ignoring case."""

from __future__ import annotations

from datetime import datetime

import pytest

from enrich_pipeline.display_case import Style, display_case
from enrich_pipeline.merge_policy import DEFAULT_POLICY, merge_one
from enrich_pipeline.provider.models import EnrichmentResult, Outcome
from enrich_pipeline.warehouse.enrichment import company_rows, person_rows

NOW = datetime(2026, 9, 10, 12, 0)


@pytest.mark.parametrize(
    ("answered", "style", "shown"),
    [
        ("senior product manager", "title", "Senior Product Manager"),
        ("head of marketing", "title", "Head of Marketing"),
        ("vp of sales", "title", "VP of Sales"),
        ("cto", "title", "CTO"),
        ("co-founder & ceo", "title", "Co-Founder & CEO"),
        ("director, r&d", "title", "Director, R&D"),
        ("mcdonald", "name", "McDonald"),
        ("van der berg", "name", "van der Berg"),
        ("o'brien", "name", "O'Brien"),
        ("smith-jones", "name", "Smith-Jones"),
        ("são paulo", "place", "São Paulo"),
        ("san francisco", "place", "San Francisco"),
        ("rio de janeiro", "place", "Rio de Janeiro"),
        ("stratford-upon-avon", "place", "Stratford-upon-Avon"),
        ("ca", "place", "CA"),
        ("united states", "place", "United States"),
        ("tech company", "words", "Tech Company"),
        ("information technology and services", "words", "Information Technology and Services"),
        ("vandelay332", "words", "Vandelay332"),
        # Cased by someone already: kept.
        ("iPhone Team", "title", "iPhone Team"),
        ("deVries", "name", "deVries"),
        ("NYC", "place", "NYC"),
        ("", "title", ""),
        ("42", "words", "42"),
    ],
)
def test_a_lower_case_answer_is_cased_for_display(answered: str, style: Style, shown: str) -> None:
    assert display_case(answered, style) == shown


def test_stored_profiles_are_cased_and_their_raw_answer_kept() -> None:
    answer = {"job_title": "vp of sales", "last_name": "mcdonald", "city": "são paulo"}
    (row,) = person_rows([EnrichmentResult("a@b.io", Outcome.MATCHED, answer)], NOW).to_dict(
        "records"
    )
    assert (row["job_title"], row["last_name"], row["city"]) == (
        "VP of Sales",
        "McDonald",
        "São Paulo",
    )
    assert '"vp of sales"' in row["raw"]
    (company,) = company_rows(
        [EnrichmentResult("b.io", Outcome.MATCHED, {"name": "vandelay332", "industry": "tech"})],
        NOW,
    ).to_dict("records")
    assert (company["name"], company["industry"]) == ("Vandelay332", "Tech")


def test_the_leads_spelling_wins_over_the_same_value_in_another_case() -> None:
    values, provenance = merge_one(
        DEFAULT_POLICY,
        {
            "lead_company_name": "VANDELAY332",
            "co_name": "Vandelay332",
            "lead_city": "seattle",
            "person_city": "Seattle",
            "person_job_title": "Head of Marketing",
            "lead_job_title": "Head of Sales",
            "person_match_confidence": "high",
        },
    )
    assert values["company_name"] == "VANDELAY332"
    assert provenance["company_name"]["source"] == "company"  # matched, spelled as typed
    assert values["city"] == "seattle"
    assert values["job_title"] == "Head of Marketing", "another value: enrichment's wins"
