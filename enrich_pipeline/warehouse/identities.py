"""How a lead is known: its LinkedIn profile, its website's domain, its name with its company.

Spelled once here for SQL and once for Python (where an answer cannot wait for a window's SQL),
the two held alike; the window's validation, the suppression list and erasures all use them.
"""

from __future__ import annotations

import re

# Read alike by the window's SQL (RE2) and by ``clean_contact`` (Python's re): whitespace is
# spelled out, as the two engines' \s differ.
LINKEDIN_SLUG_PATTERN = r"linkedin\.com/in/([^/?#\t\n\f\r ]+)"
WEBSITE_DOMAIN_PATTERN = r"^(?:[a-z][a-z0-9+.-]*://)?(?:www\.)?([a-z0-9-]+(?:\.[a-z0-9-]+)+)"
LINKEDIN_PROFILE_PREFIX = "https://www.linkedin.com/in/"


def slug_sql(url: str) -> str:
    """The LinkedIn profile of a URL expression, as ``linkedin_slug`` reads it."""
    return f"nullif(regexp_extract(lower({url}), '{LINKEDIN_SLUG_PATTERN}', 1), '')"


def landed_name_sql(row: str | None = None) -> str:
    """A landed row's name: its full name, else first and last (``row`` is its alias, if the
    columns need one)."""
    at = f"{row}." if row else ""
    return (
        f"nullif(trim(coalesce({at}full_name, concat_ws(' ', {at}first_name, {at}last_name))), '')"
    )


def website_domain_sql(website: str) -> str:
    return f"nullif(regexp_extract(lower(trim({website})), '{WEBSITE_DOMAIN_PATTERN}', 1), '')"


def name_identity_sql(name: str, company: str) -> str:
    """The identity of a lead known by name and company (``name:ada lovelace|acme``)."""
    return f"'name:' || lower({name}) || '|' || lower({company})"


def website_domain(website: str | None) -> str | None:
    """A website's domain, as the window's SQL reads it."""
    return _found(WEBSITE_DOMAIN_PATTERN, (website or "").strip(" "))


def linkedin_slug(url: str | None) -> str | None:
    """The profile of a LinkedIn URL, as the window's SQL reads it."""
    return _found(LINKEDIN_SLUG_PATTERN, url or "")


def _found(pattern: str, text: str) -> str | None:
    """``nullif(regexp_extract(lower(text), pattern, 1), '')``."""
    found = re.search(pattern, text.lower())
    return (found.group(1) or None) if found else None
