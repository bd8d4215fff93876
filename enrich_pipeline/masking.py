"""Personal values as run metadata, logs and failure lists may show them: enough to recognise
a record (an initial, the email's domain, a phone's last digits), never the value itself.

Orchestration metadata lives in Dagster's event log, which no erasure reaches; the values stay
in the warehouse and the exports, where they belong."""

from __future__ import annotations

import re
from collections.abc import Callable

import pandas as pd

HIDDEN = "***"


def mask_text(value: str) -> str:
    """A name or a profile handle: its initial."""
    return f"{value[:1]}{HIDDEN}" if value else value


def mask_email(value: str) -> str:
    """``j***@acme.com``: the domain says which company, not who."""
    local, at, domain = value.rpartition("@")
    if not at:
        return mask_text(value)
    return f"{local[:1]}{HIDDEN}@{domain}"


# Anything around an @, valid address or not: the addresses a server rejects are the ones its
# error messages quote ("jane@acme is invalid").
_EMAIL_IN_TEXT = re.compile(r"[^\s@<>()\[\]\"',;:|]+@[^\s@<>()\[\]\"',;:|]+")


def mask_emails_in(text: str, *values: str) -> str:
    """``text`` (a server's error message) with every email address in it masked, and each of
    ``values`` (the record's own email, phone, name, however the server spelled the rest)."""
    text = _EMAIL_IN_TEXT.sub(lambda found: mask_email(found.group()), text)
    for value in values:
        if value:
            text = text.replace(value, mask_text(value))
    return text


def mask_phone(value: str) -> str:
    """``+1***34``: the country code and the last two digits."""
    if len(value) <= 6:
        return HIDDEN
    return f"{value[:2]}{HIDDEN}{value[-2:]}"


def mask_identity(value: str) -> str:
    """A person's identity key (``jane@acme.com``, ``phone:+1…``, ``social:slug``,
    ``name:jane doe|acme``) with its personal part masked; the company of a name key stays."""
    kind, colon, rest = value.partition(":")
    if not colon:
        return mask_email(value)
    if kind == "phone":
        return f"phone:{mask_phone(rest)}"
    if kind == "name":
        name, bar, company = rest.partition("|")
        return f"name:{mask_text(name)}{bar}{company}"
    if kind == "social":
        return f"social:{mask_text(rest)}"
    return mask_email(value)


def column_mask(column: str) -> Callable[[str], str] | None:
    """How a column of this name is masked; None for a column that holds nothing personal
    (a company, a title, a status)."""
    name = column.lower()
    if name == "identity":
        return mask_identity
    if "email" in name:
        return mask_email
    if "phone" in name:
        return mask_phone
    if name in _NAME_COLUMNS or "linkedin" in name or "social" in name:
        return mask_text
    return None


_NAME_COLUMNS = {"first_name", "last_name", "full_name", "firstname", "lastname", "name_norm"}


def mask_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` with every personal column masked, other columns as they are."""
    masked = frame.copy()
    for column in masked.columns:
        if (mask := column_mask(str(column))) is not None:
            masked[column] = masked[column].map(
                lambda value, mask=mask: mask(str(value)) if pd.notna(value) else value
            )
    return masked
