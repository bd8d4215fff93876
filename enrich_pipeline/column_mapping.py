"""Which source CSV header feeds which ``raw_contacts`` column.

Exports name the same thing many ways (HubSpot's ``Phone Number``, a form tool's
``phone_number``, a spreadsheet's ``Phone``), so headers are compared after case-folding and
dropping spaces, underscores, hyphens, slashes and dots.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# Target -> accepted header spellings (already in key form, see ``header_key``), in priority
# order: when a file has several (HubSpot's ``Phone Number`` and ``Mobile Phone Number``),
# a row takes its value from the first one that is not blank.
_ALIASES: dict[str, tuple[str, ...]] = {
    "email": ("email", "emailaddress", "workemail", "businessemail"),
    "first_name": ("firstname", "givenname"),
    "last_name": ("lastname", "surname", "familyname"),
    "full_name": ("fullname", "name", "contactname"),
    "phone": ("phone", "phonenumber", "mobilephonenumber", "mobilephone", "mobile"),
    "company_name": ("companyname", "company", "organization", "organisation"),
    "website": ("websiteurl", "website", "domain", "companydomain"),
    "linkedin_url": ("linkedinurl", "linkedin", "linkedinprofile"),
    "job_title": ("jobtitle", "title"),
    "city": ("city",),
    "state": ("stateregion", "state", "province"),
    "country": ("countryregion", "country"),
    # When a file has more than one date, the moment it reached us beats the moment the
    # upstream record was created.
    "received_at": (
        "receivedat",
        "submittedat",
        "createdate",
        "createdat",
        "createddate",
        "signupdate",
    ),
    "source": ("leadsource", "originalsource", "source"),
}

# Headers known to carry nothing we land; listed so they are not reported as unrecognised.
_KNOWN_IGNORED: frozenset[str] = frozenset({"recordid", "contactid", "id"})

# A file needs at least one of these columns for any row to be identifiable.
IDENTIFYING_COLUMNS: tuple[str, ...] = (
    "email",
    "phone",
    "linkedin_url",
    "first_name",
    "last_name",
    "full_name",
)

_KEY_NOISE = re.compile(r"[\s_\-/.]+")
_TARGET_BY_KEY: dict[str, tuple[str, int]] = {
    key: (target, rank) for target, keys in _ALIASES.items() for rank, key in enumerate(keys)
}


class ColumnMappingError(ValueError):
    """The headers cannot be used: no column identifies a contact."""


@dataclass(frozen=True)
class ColumnMapping:
    """``columns``: target column -> source headers in priority order (only targets present).
    ``unrecognised``: headers that feed nothing and are not known to be ignorable."""

    columns: dict[str, tuple[str, ...]]
    unrecognised: tuple[str, ...]


def header_key(header: str) -> str:
    """The form headers are compared in: ``State/Region`` -> ``stateregion``."""
    return _KEY_NOISE.sub("", header).casefold()


def map_columns(headers: Sequence[str], *, require_identity: bool = True) -> ColumnMapping:
    """Map source headers to ``raw_contacts`` columns, or raise ``ColumnMappingError`` if
    none of them identifies a contact (email, phone, LinkedIn URL or a name). Without
    ``require_identity`` such headers map all the same (each lead of a request has its own
    keys, and one without identity is refused or quarantined on its own)."""
    ranked: dict[str, list[tuple[int, int, str]]] = {}
    unrecognised: list[str] = []
    for position, header in enumerate(headers):
        key = header_key(header)
        if key in _TARGET_BY_KEY:
            target, rank = _TARGET_BY_KEY[key]
            # Position breaks ties between spellings that share a key ("Email" and "email").
            ranked.setdefault(target, []).append((rank, position, header))
        elif key not in _KNOWN_IGNORED:
            unrecognised.append(header)
    columns = {
        target: tuple(header for _, _, header in sorted(ranked[target]))
        for target in _ALIASES
        if target in ranked
    }
    if require_identity and not any(target in columns for target in IDENTIFYING_COLUMNS):
        shown = ", ".join(repr(h) for h in headers) or "none"
        raise ColumnMappingError(
            "no column identifies a contact (need one of email, phone, LinkedIn URL, "
            f"first/last/full name); headers found: {shown}"
        )
    return ColumnMapping(columns=columns, unrecognised=tuple(unrecognised))
