"""Deterministic synthetic person and company profiles for the sandbox provider.

Everything is derived from the sha256 of the normalised identifier and built-in word lists: no
real people, no network, and the same identifier always gives the same answer. Faker is avoided on
purpose (dev-only dependency, and far too slow for benchmark volumes).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import random
import re
import unicodedata
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from enrich_pipeline.merge_policy import Confidence
from enrich_pipeline.normalise import FREE_MAIL_DOMAINS

PERSON_PRIMARY_FIELDS = ("email", "phone", "social_url", "linkedin_id", "legion_id", "email_hash")
PERSON_NAME_CONTEXT_FIELDS = (
    "company",
    "job_title",
    "school",
    "city",
    "state",
    "country",
    "postal_code",
    "address",
    "birth_date",
)
PERSON_INPUT_FIELDS = (
    *PERSON_PRIMARY_FIELDS,
    "full_name",
    "first_name",
    "last_name",
    *PERSON_NAME_CONTEXT_FIELDS,
)
COMPANY_INPUT_FIELDS = (
    "domain",
    "name",
    "linkedin_id",
    "social_url",
    "ticker_symbol",
    "industry",
    "legion_id",
)

FIRST_NAMES = (
    "Amara", "Ben", "Carla", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas",
    "Keiko", "Liam", "Maya", "Nikhil", "Olivia", "Pedro", "Quinn", "Rosa", "Samuel", "Tara",
    "Umar", "Vera", "Wei", "Ximena", "Yusuf", "Zoe", "Aiden", "Bianca", "Chloe", "Daniel",
    "Esther", "Felix", "Hannah", "Ivan", "Julia", "Kofi", "Lena", "Marco", "Nadia", "Oscar",
)  # fmt: skip
LAST_NAMES = (
    "Abbott", "Banerjee", "Castillo", "Dubois", "Eriksen", "Fontaine", "Garcia", "Haddad",
    "Ibarra", "Jensen", "Kowalski", "Lindqvist", "Moreau", "Nakamura", "Okafor", "Petrov",
    "Quintero", "Rossi", "Schneider", "Tanaka", "Urquhart", "Varga", "Whitfield", "Xu",
    "Yilmaz", "Zimmerman", "Adeyemi", "Brennan", "Costa", "Delgado", "Fischer", "Novak",
)  # fmt: skip
COMPANY_PREFIXES = (
    "Northwind", "Bluepeak", "Ironbark", "Silverline", "Brightwave", "Cobalt", "Redwood",
    "Lumen", "Harbor", "Summit", "Quartz", "Evergreen", "Kestrel", "Meridian", "Orchid",
    "Pinecrest", "Stratus", "Tidewater", "Vantage", "Willow",
)  # fmt: skip
COMPANY_SUFFIXES = (
    "Analytics", "Robotics", "Logistics", "Health", "Labs", "Systems", "Foods", "Energy",
    "Software", "Partners", "Dynamics", "Networks", "Biotech", "Capital", "Studios", "Works",
)  # fmt: skip
INDUSTRIES = (
    "computer software", "information technology and services", "financial services",
    "hospital & health care", "marketing and advertising", "logistics and supply chain",
    "renewables & environment", "biotechnology", "retail", "food & beverages",
    "management consulting", "education management", "real estate", "telecommunications",
    "automotive", "insurance",
)  # fmt: skip
COMPANY_SIZES = (
    ("1-10", 1, 10),
    ("11-50", 11, 50),
    ("51-200", 51, 200),
    ("201-500", 201, 500),
    ("501-1000", 501, 1000),
    ("1001-5000", 1001, 5000),
    ("5001-10000", 5001, 10000),
    ("10001+", 10001, 60000),
)
COMPANY_SIZE_WEIGHTS = (10, 22, 25, 15, 10, 10, 5, 3)
COMPANY_TYPES = ("private", "public", "nonprofit", "educational", "government")
COMPANY_TYPE_WEIGHTS = (78, 12, 5, 3, 2)

SENIORITIES = ("entry", "senior", "manager", "director", "vp", "cxo")
SENIORITY_WEIGHTS = (25, 30, 20, 12, 8, 5)
SENIORITY_YEARS = {
    "entry": (0, 3),
    "senior": (4, 10),
    "manager": (5, 15),
    "director": (8, 20),
    "vp": (12, 25),
    "cxo": (15, 30),
}
# Title per job function, in SENIORITIES order.
TITLES: dict[str, tuple[str, ...]] = {
    "engineering": (
        "Software Engineer", "Senior Software Engineer", "Engineering Manager",
        "Director of Engineering", "VP of Engineering", "Chief Technology Officer",
    ),
    "sales": (
        "Sales Development Representative", "Senior Account Executive", "Sales Manager",
        "Director of Sales", "VP of Sales", "Chief Revenue Officer",
    ),
    "marketing": (
        "Marketing Coordinator", "Senior Marketing Manager", "Marketing Manager",
        "Director of Marketing", "VP of Marketing", "Chief Marketing Officer",
    ),
    "finance": (
        "Financial Analyst", "Senior Financial Analyst", "Finance Manager",
        "Director of Finance", "VP of Finance", "Chief Financial Officer",
    ),
    "operations": (
        "Operations Associate", "Senior Operations Specialist", "Operations Manager",
        "Director of Operations", "VP of Operations", "Chief Operating Officer",
    ),
    "human_resources": (
        "HR Coordinator", "Senior HR Business Partner", "HR Manager",
        "Director of People", "VP of People", "Chief People Officer",
    ),
    "product": (
        "Associate Product Manager", "Senior Product Manager", "Group Product Manager",
        "Director of Product", "VP of Product", "Chief Product Officer",
    ),
    "customer_success": (
        "Customer Success Associate", "Senior Customer Success Manager",
        "Customer Success Manager", "Director of Customer Success", "VP of Customer Success",
        "Chief Customer Officer",
    ),
    "data": (
        "Data Analyst", "Senior Data Scientist", "Data Science Manager",
        "Director of Data", "VP of Data", "Chief Data Officer",
    ),
    "legal": (
        "Paralegal", "Senior Counsel", "Legal Manager",
        "Director of Legal", "VP of Legal", "General Counsel",
    ),
}  # fmt: skip
JOB_FUNCTIONS = tuple(TITLES)
LOCATIONS = (
    ("New York", "New York", "United States", "212"),
    ("San Francisco", "California", "United States", "415"),
    ("Austin", "Texas", "United States", "512"),
    ("Chicago", "Illinois", "United States", "312"),
    ("Seattle", "Washington", "United States", "206"),
    ("Boston", "Massachusetts", "United States", "617"),
    ("Denver", "Colorado", "United States", "303"),
    ("Atlanta", "Georgia", "United States", "404"),
    ("Miami", "Florida", "United States", "305"),
    ("Portland", "Oregon", "United States", "503"),
    ("Raleigh", "North Carolina", "United States", "919"),
    ("Minneapolis", "Minnesota", "United States", "612"),
    ("Toronto", "Ontario", "Canada", "416"),
    ("Vancouver", "British Columbia", "Canada", "604"),
)
SCHOOLS = (
    "University of Michigan", "University of Texas at Austin", "Georgia Institute of Technology",
    "University of Washington", "Boston University", "University of Toronto",
    "Ohio State University", "University of Colorado Boulder", "Purdue University",
    "University of Illinois Urbana-Champaign", "Arizona State University", "McGill University",
)  # fmt: skip
DEGREES = ("bachelors", "bachelors", "masters", "mba", "associates")
FIELDS_OF_STUDY = (
    "computer science", "economics", "business administration", "marketing", "statistics",
    "mechanical engineering", "psychology", "finance", "communications", "political science",
)  # fmt: skip

_REFERENCE_YEAR = 2025
_DATES = tuple(
    (dt.date(_REFERENCE_YEAR, 1, 1) + dt.timedelta(days=i)).isoformat() for i in range(365)
)
_NAME_PART = re.compile(r"[a-z][a-z']+")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_NON_DIGIT = re.compile(r"\D+")
_URL_PREFIX = re.compile(r"^(?:[a-z][a-z0-9+.-]*://)?(?:www\.)?")
_COMPANY_SUFFIX_WORDS = frozenset({"inc", "llc", "ltd", "corp", "co", "gmbh", "plc", "sa", "ag"})
_SECOND_LEVEL_LABELS = frozenset({"co", "com", "org", "net", "ac", "gov", "edu"})


def normalise_text(value: str) -> str:
    return " ".join(value.split()).lower()


def normalise_email(value: str) -> str:
    return value.strip().lower()


def normalise_phone(value: str) -> str:
    return _NON_DIGIT.sub("", value)


def normalise_url(value: str) -> str:
    return _URL_PREFIX.sub("", value.strip().lower()).rstrip("/")


def normalise_domain(value: str) -> str:
    return normalise_url(value).split("/", 1)[0].rstrip(".")


@dataclasses.dataclass(frozen=True, slots=True)
class MatchKey:
    """What a query is looked up by: the normalised seed and how trustworthy the match is."""

    matched_on: tuple[str, ...]
    seed: str
    confidence: Confidence
    digest: bytes

    @property
    def draw(self) -> float:
        """Uniform in [0, 1), fixed per identifier: the match decision compares it to the rate."""
        return int.from_bytes(self.digest[:8]) / 2.0**64

    def matches(self, match_rate: float) -> bool:
        return self.draw < match_rate

    def metadata(self) -> dict[str, Any]:
        return {
            "matched_on": list(self.matched_on),
            "match_type": "exact",
            "match_confidence": self.confidence.value,
        }

    def rng(self) -> random.Random:
        return random.Random(int.from_bytes(self.digest))


def _key(matched_on: tuple[str, ...], seed: str, confidence: Confidence) -> MatchKey:
    return MatchKey(matched_on, seed, confidence, hashlib.sha256(seed.encode()).digest())


def _text(identifiers: Mapping[str, Any], name: str) -> str:
    value = identifiers.get(name)
    return value if isinstance(value, str) else ""


_PRIMARY_NORMALISERS = {
    "email": normalise_email,
    "phone": normalise_phone,
    "social_url": normalise_url,
    "linkedin_id": normalise_text,
    "legion_id": normalise_text,
    "email_hash": normalise_text,
}


def person_key(identifiers: Mapping[str, Any]) -> MatchKey | None:
    """The identifier a person query is seeded on, in priority order; None if none is usable
    (no primary identifier, and no name with context)."""
    for name in PERSON_PRIMARY_FIELDS:
        value = _PRIMARY_NORMALISERS[name](_text(identifiers, name))
        if value:
            return _key((name,), f"{name}:{value}", Confidence.HIGH)
    full_name = normalise_text(_text(identifiers, "full_name"))
    name_fields: tuple[str, ...] = ("full_name",)
    if not full_name:
        first = normalise_text(_text(identifiers, "first_name"))
        last = normalise_text(_text(identifiers, "last_name"))
        if not (first and last):
            return None
        full_name = f"{first} {last}"
        name_fields = ("first_name", "last_name")
    context = [
        (field, value)
        for field in PERSON_NAME_CONTEXT_FIELDS
        if (value := normalise_text(_text(identifiers, field)))
    ]
    if not context:
        return None
    seed = "name:" + full_name + "".join(f"|{field}:{value}" for field, value in context)
    return _key(name_fields + tuple(field for field, _ in context), seed, Confidence.MODERATE)


def company_key(identifiers: Mapping[str, Any]) -> MatchKey | None:
    """Companies are seeded on their domain (a name stands for ``<name>.com``); the other
    identifiers seed a generated company. None when nothing usable was given."""
    domain = normalise_domain(_text(identifiers, "domain"))
    if domain:
        return _key(("domain",), f"domain:{domain}", Confidence.HIGH)
    name = normalise_text(_text(identifiers, "name"))
    if name and (slug := _company_slug(name)):
        return _key(("name",), f"domain:{slug}.com", Confidence.MODERATE)
    for field in ("linkedin_id", "social_url", "ticker_symbol", "legion_id"):
        normalise = normalise_url if field == "social_url" else normalise_text
        if value := normalise(_text(identifiers, field)):
            return _key((field,), f"{field}:{value}", Confidence.HIGH)
    return None


def _company_slug(name: str) -> str:
    words = [w for w in _NON_ALNUM.split(name.lower()) if w and w not in _COMPANY_SUFFIX_WORDS]
    return "".join(words)


def _name_from_domain(domain: str) -> str:
    labels = domain.split(".")
    label = labels[0]
    if len(labels) >= 2:
        label = labels[-2]
        if label in _SECOND_LEVEL_LABELS and len(labels) >= 3:
            label = labels[-3]
    return " ".join(part.capitalize() for part in re.split(r"[-_]+", label) if part)


@dataclasses.dataclass(frozen=True, slots=True)
class CompanyTraits:
    name: str
    domain: str
    industry: str
    size: str
    employee_count: int
    type: str
    founded: int
    legion_id: str
    rng_seed: int


@lru_cache(maxsize=65536)
def company_traits(domain: str) -> CompanyTraits:
    """What a company looks like, fixed per domain, shared by person and company answers."""
    digest = hashlib.sha256(f"company:{domain}".encode()).digest()
    rng = random.Random(int.from_bytes(digest))
    size, low, high = rng.choices(COMPANY_SIZES, weights=COMPANY_SIZE_WEIGHTS)[0]
    return CompanyTraits(
        name=_name_from_domain(domain),
        domain=domain,
        industry=rng.choice(INDUSTRIES),
        size=size,
        employee_count=rng.randint(low, high),
        type=rng.choices(COMPANY_TYPES, weights=COMPANY_TYPE_WEIGHTS)[0],
        founded=rng.randint(1950, 2022),
        legion_id="lc_" + digest[8:20].hex(),
        rng_seed=int.from_bytes(digest[20:]),
    )


def _generated_company(rng: random.Random) -> CompanyTraits:
    name = f"{rng.choice(COMPANY_PREFIXES)} {rng.choice(COMPANY_SUFFIXES)}"
    traits = company_traits(f"{_company_slug(name)}.com")
    return traits if traits.name == name else _with_name(traits, name)


def _with_name(traits: CompanyTraits, name: str) -> CompanyTraits:
    return dataclasses.replace(traits, name=name)


def _title(value: str) -> str:
    return " ".join(part.capitalize() for part in value.split())


def _ascii_slug(value: str) -> str:
    folded = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode()
    return _NON_ALNUM.sub("", folded.lower())


def _name_from_local_part(local: str) -> tuple[str, str] | None:
    # "jane.doe84" is still Jane Doe: a real provider would find the person the address names.
    local = local.rstrip("0123456789")
    for sep in (".", "_", "-"):
        parts = local.split(sep)
        if len(parts) == 2 and all(_NAME_PART.fullmatch(p) for p in parts):
            return parts[0].capitalize(), parts[1].capitalize()
    return None


def _query_name(identifiers: Mapping[str, Any]) -> tuple[str, str] | None:
    full = _text(identifiers, "full_name").split()
    if len(full) >= 2:
        return _title(full[0]), _title(" ".join(full[1:]))
    first = _text(identifiers, "first_name").strip()
    last = _text(identifiers, "last_name").strip()
    if first and last:
        return _title(first), _title(last)
    return None


def _e164(digits: str) -> str:
    return f"+1{digits}" if len(digits) == 10 else f"+{digits}"


def build_person(key: MatchKey, identifiers: Mapping[str, Any]) -> dict[str, Any]:
    """A full person record for a query that matched. Names, company and contact points come
    from the query where it carries them (a first.last@company email), the rest from ``key``."""
    rng = key.rng()
    email = normalise_email(_text(identifiers, "email"))
    local, _, email_domain = email.partition("@")
    company_email = bool(email_domain) and email_domain not in FREE_MAIL_DOMAINS

    names = (_name_from_local_part(local) if email else None) or _query_name(identifiers)
    first, last = names or (rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES))

    query_company = _text(identifiers, "company").strip()
    if company_email:
        company = company_traits(normalise_domain(email_domain))
    elif query_company and (slug := _company_slug(query_company)):
        company = _with_name(company_traits(f"{slug}.com"), _title(query_company))
    else:
        company = _generated_company(rng)

    seniority_index = rng.choices(range(len(SENIORITIES)), weights=SENIORITY_WEIGHTS)[0]
    seniority = SENIORITIES[seniority_index]
    function = rng.choice(JOB_FUNCTIONS)
    city, state, country, area_code = rng.choice(LOCATIONS)
    years = rng.randint(*SENIORITY_YEARS[seniority])
    updated, confirmed = sorted((rng.randrange(365), rng.randrange(365)))
    last_seen = _DATES[max(confirmed, rng.randrange(365))]

    work_email = (
        email if company_email else f"{_ascii_slug(first)}.{_ascii_slug(last)}@{company.domain}"
    )
    emails = [_email_entry(work_email, "work", last_seen, rng)]
    if email and not company_email:
        emails.append(_email_entry(email, "personal", last_seen, rng))

    phone_digits = normalise_phone(_text(identifiers, "phone"))
    mobile: str | None
    if phone_digits:
        mobile = _e164(phone_digits)
    elif rng.random() < 0.65:
        # 555-01XX numbers are reserved for fiction: never a real subscriber.
        mobile = f"+1{area_code}55501{rng.randrange(100):02d}"
    else:
        mobile = None
    phones = (
        [
            {
                "type": "mobile",
                "number": mobile,
                "current": True,
                "confidence": "high",
                "last_seen": last_seen,
                "num_sources": rng.randint(1, 6),
            }
        ]
        if mobile
        else []
    )

    social_url = normalise_url(_text(identifiers, "social_url"))
    linkedin_id = normalise_text(_text(identifiers, "linkedin_id"))
    if "linkedin.com/in/" in social_url:
        linkedin_url = social_url
    elif linkedin_id:
        linkedin_url = f"linkedin.com/in/{linkedin_id}"
    else:
        linkedin_url = (
            f"linkedin.com/in/{_ascii_slug(first)}-{_ascii_slug(last)}-{key.digest[28:31].hex()}"
        )

    title = TITLES[function][seniority_index]
    start_year = _REFERENCE_YEAR - rng.randint(0, min(years, 8))
    experience = [
        {
            "company_name": company.name,
            "company_domain": company.domain,
            "title": title,
            "start_date": f"{start_year}-{rng.randint(1, 12):02d}",
            "end_date": None,
            "is_current": True,
        }
    ]
    if years - (_REFERENCE_YEAR - start_year) >= 2:
        previous = _generated_company(rng)
        experience.append(
            {
                "company_name": previous.name,
                "company_domain": previous.domain,
                "title": TITLES[function][max(0, seniority_index - 1)],
                "start_date": f"{start_year - rng.randint(2, 5)}-{rng.randint(1, 12):02d}",
                "end_date": f"{start_year}-{rng.randint(1, 12):02d}",
                "is_current": False,
            }
        )
    education = (
        [
            {
                "school": rng.choice(SCHOOLS),
                "degree": rng.choice(DEGREES),
                "field_of_study": rng.choice(FIELDS_OF_STUDY),
                "end_date": str(_REFERENCE_YEAR - years - rng.randint(0, 2)),
            }
        ]
        if rng.random() < 0.8
        else []
    )

    legion_id = normalise_text(_text(identifiers, "legion_id")) or "lp_" + key.digest[8:24].hex()
    return {
        "legion_id": legion_id,
        "full_name": f"{first} {last}",
        "first_name": first,
        "last_name": last,
        "job_title": title,
        "company_name": company.name,
        "company_domain": company.domain,
        "company_industry": company.industry,
        "company_size": company.size,
        "seniority_level": seniority,
        "job_function": function,
        "city": city,
        "state": state,
        "country": country,
        "years_of_experience": years,
        "linkedin_url": linkedin_url,
        "work_email": work_email,
        "mobile_phone": mobile,
        "current_jobs_last_updated": _DATES[updated],
        "current_jobs_last_confirmed": _DATES[confirmed],
        "last_seen": last_seen,
        "emails": emails,
        "phones": phones,
        "experience": experience,
        "education": education,
        "socials": [
            {
                "network": "linkedin",
                "url": linkedin_url,
                "username": linkedin_url.rsplit("/", 1)[-1],
            }
        ],
        "locations": [{"city": city, "state": state, "country": country, "is_primary": True}],
    }


def _email_entry(address: str, kind: str, last_seen: str, rng: random.Random) -> dict[str, Any]:
    return {
        "address": address,
        "type": kind,
        "current": True,
        "validated": rng.random() < 0.9,
        "confidence": "high" if kind == "work" else "moderate",
        "last_seen": last_seen,
        "num_sources": rng.randint(1, 8),
    }


def build_company(key: MatchKey, identifiers: Mapping[str, Any]) -> dict[str, Any]:
    """A full company record for a query that matched ``key``."""
    if key.seed.startswith("domain:"):
        traits = company_traits(key.seed.removeprefix("domain:"))
        query_name = _text(identifiers, "name").strip()
        if query_name and key.matched_on == ("name",):
            traits = _with_name(traits, _title(query_name))
    else:
        traits = _generated_company(key.rng())
    rng = random.Random(traits.rng_seed)
    growth = {
        period: round(rng.uniform(-0.02, 0.04) * months, 4)
        for period, months in (("1m", 1), ("3m", 3), ("6m", 6), ("12m", 12))
    }
    return {
        "legion_id": traits.legion_id,
        "name": {"cleaned": traits.name, "raw": [traits.name]},
        "domain": traits.domain,
        "industry": traits.industry,
        "type": traits.type,
        "size": traits.size,
        "founded": traits.founded,
        "linkedin_url": "linkedin.com/company/" + "-".join(traits.name.lower().split()),
        "legion_employee_count": traits.employee_count,
        "legion_employee_growth_rate": growth,
        "legion_new_hire_count": round(traits.employee_count * rng.uniform(0.02, 0.2)),
        "legion_attrition_count": round(traits.employee_count * rng.uniform(0.02, 0.15)),
    }


def split_fields(value: str | None) -> list[str]:
    """A comma-separated field list, as the options ``include_fields`` etc. are sent."""
    return [name for part in value.split(",") if (name := part.strip())] if value else []


def shape_record(
    record: dict[str, Any],
    *,
    include_fields: str | None = None,
    exclude_fields: str | None = None,
    required_fields: str | None = None,
) -> dict[str, Any] | None:
    """Apply the field options to a record; None when a required field is missing or empty."""
    for name in split_fields(required_fields):
        if record.get(name) in (None, "", [], {}):
            return None
    if include := split_fields(include_fields):
        record = {name: record[name] for name in include if name in record}
    for name in split_fields(exclude_fields):
        record.pop(name, None)
    return record
