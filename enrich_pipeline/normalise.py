"""Per-value checks that need a library (email syntax, phone numbering plans) and small
domain helpers.

These run row by row in Python, so the pipeline calls them only for rows it has not checked
before; everything that can be done in SQL is done there instead.
"""

from __future__ import annotations

import re

import phonenumbers
from email_validator import EmailNotValidError, validate_email

# Providers whose domain says nothing about the person's employer, so company enrichment
# must not be attempted from an address at one of them.
FREE_MAIL_DOMAINS: frozenset[str] = frozenset(
    {
        "gmail.com",
        "googlemail.com",
        "yahoo.com",
        "yahoo.co.uk",
        "yahoo.co.in",
        "yahoo.co.jp",
        "yahoo.ca",
        "yahoo.com.au",
        "yahoo.de",
        "yahoo.fr",
        "yahoo.es",
        "yahoo.it",
        "ymail.com",
        "rocketmail.com",
        "hotmail.com",
        "hotmail.co.uk",
        "hotmail.de",
        "hotmail.fr",
        "hotmail.it",
        "hotmail.es",
        "outlook.com",
        "live.com",
        "live.co.uk",
        "msn.com",
        "icloud.com",
        "me.com",
        "mac.com",
        "aol.com",
        "proton.me",
        "protonmail.com",
        "pm.me",
        "gmx.com",
        "gmx.de",
        "gmx.net",
        "mail.com",
        "yandex.com",
        "yandex.ru",
        "mail.ru",
        "zoho.com",
        "qq.com",
        "163.com",
        "126.com",
        "web.de",
        "t-online.de",
        "fastmail.com",
        "tutanota.com",
        "hey.com",
        "comcast.net",
        "orange.fr",
        "free.fr",
        "libero.it",
        "naver.com",
        "rediffmail.com",
    }
)


def normalise_email(value: str | None) -> tuple[str | None, str | None]:
    """Return ``(normalised address, error)``; blank input is absent, not an error."""
    if value is None:
        return None, None
    candidate = value.strip().lower()
    if not candidate:
        return None, None
    try:
        result = validate_email(candidate, check_deliverability=False)
    except EmailNotValidError as exc:
        return None, f"email {value.strip()!r} is not a valid address: {exc}"
    # The library keeps the local part's case (RFC says it may matter); CRMs treat it as
    # case-insensitive, and so does identity matching here.
    address = result.normalized.lower()
    if runs_as_formula(address):
        return None, (
            f"email {value.strip()!r} would run as a formula in a spreadsheet, and an address "
            "is never altered to stop it"
        )
    return address, None


# RFC 5322 lets an address start with '=' or a sign and hold '|', '!' and quotes: enough for a
# spreadsheet to evaluate it ('=cmd|...'!A0). A sign before a plain name ('+tag@acme.com') is an
# error cell at worst, and the address is real: exported as it is.
_FORMULA_ADDRESS = re.compile(r"^[=@]|^[+-].*[=|!()'\"]")


def runs_as_formula(address: str) -> bool:
    """Whether a spreadsheet opening the export would evaluate this address as a formula."""
    return _FORMULA_ADDRESS.search(address) is not None


def normalise_phone(value: str | None, default_region: str = "US") -> tuple[str | None, str | None]:
    """Return ``(E.164 number, error)``; numbers without a country code are read as
    ``default_region`` numbers. Blank input is absent, not an error."""
    if value is None or not value.strip():
        return None, None
    text = value.strip()
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        return None, f"phone {text!r} could not be parsed: {exc}"
    if not phonenumbers.is_possible_number(number):
        return None, f"phone {text!r} has the wrong number of digits"
    # Possible-but-invalid numbers (e.g. 555 test prefixes, unassigned area codes) would be
    # rejected by the enrichment provider and by CRMs, so they are errors here too.
    if not phonenumbers.is_valid_number(number):
        return None, f"phone {text!r} is not a valid number"
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), None


def is_free_mail(domain: str | None) -> bool:
    """Whether ``domain`` (e.g. the part of an address after '@') is a free-mail provider."""
    if not domain:
        return False
    return domain.strip().lower().rstrip(".") in FREE_MAIL_DOMAINS
