"""The suppression list: people and domains that are never landed, looked up or pushed again.

Kept as keyed hashes (HMAC-SHA256) of normalised identifiers, never in clear, so the list
names nobody to whoever reads the warehouse without the key. An identifier's hashed text is
what ``clean_contacts.identity`` holds for it (``ada@acme.com``, ``phone:+14155550100``,
``social:ada-lovelace``, ``name:ada lovelace|acme``), or ``domain:acme.com`` for a whole domain.

The key is a random 32 bytes in a file beside the warehouse (``<warehouse>.suppression.key``,
readable by its owner only), made on first use. SQL hashes with it through session variables,
so the key never appears in a statement's text (nor in an error quoting one).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import duckdb

from enrich_pipeline.normalise import normalise_email, normalise_phone
from enrich_pipeline.warehouse import postgres
from enrich_pipeline.warehouse.connection import connect, sync_folder
from enrich_pipeline.warehouse.identities import (
    landed_name_sql,
    linkedin_slug,
    name_identity_sql,
    slug_sql,
)

KEY_FILE_SUFFIX = ".suppression.key"
KEY_BYTES = 32
SUPPRESSED = "suppressed"  # the quarantine reason of a refused row, which keeps no values


class Kind(StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    SOCIAL = "social"
    NAME = "name"
    DOMAIN = "domain"


_PREFIXED = frozenset({Kind.PHONE, Kind.SOCIAL, Kind.NAME, Kind.DOMAIN})


def identity_kind(identity: str) -> Kind:
    """The kind of a hashed text: a ``clean_contacts.identity`` or a ``domain:`` key."""
    prefix = identity.partition(":")[0]
    return Kind(prefix) if prefix in _PREFIXED else Kind.EMAIL


def identifier_key(text: str, *, domain: bool = False) -> str:
    """The hashed text of an identifier given by a person (``enrich-pipeline suppress``): an
    email, a phone number, a LinkedIn profile URL, or with ``domain`` a whole email domain.
    Raises ``ValueError`` saying what is wrong, without the value."""
    value = text.strip()
    if domain or value.lower().startswith("domain:"):
        name = value.lower().removeprefix("domain:").lstrip("@").strip().rstrip(".")
        if "." not in name or "@" in name or " " in name:
            raise ValueError("is not a domain (expected e.g. competitor.com)")
        return f"domain:{name}"
    if "@" in value:
        email, _ = normalise_email(value)
        if email is None:
            raise ValueError("is not a valid email address")
        return email
    if "linkedin.com/in/" in value.lower():
        slug = linkedin_slug(value)
        if slug is None:
            raise ValueError("is not a LinkedIn profile URL")
        return f"social:{slug}"
    phone, _ = normalise_phone(value)
    if phone is None:
        raise ValueError("is not an email, a LinkedIn profile URL, a phone number or a domain")
    return f"phone:{phone}"


_keys: dict[str, bytes] = {}
_keys_lock = threading.Lock()


def key_path(warehouse_path: str | Path) -> Path:
    path = Path(warehouse_path)
    return path.with_name(path.name + KEY_FILE_SUFFIX)


def load_key(warehouse_path: str | Path, *, create: bool = True) -> bytes:
    """The warehouse's suppression key; with ``create``, made (owner-only) when there is none.
    Without it, a list already holding hashes would match nobody: callers that have a list
    pass ``create=False`` and are refused."""
    if postgres.is_postgres(warehouse_path):
        with connect(warehouse_path, read_only=not create) as con:
            return _stored_key(con, create=create)
    path = key_path(warehouse_path).resolve()
    with _keys_lock:
        if (key := _keys.get(str(path))) is not None:
            return key
        if not path.exists():
            if not create:
                raise FileNotFoundError(
                    f"the suppression list's key {path} is missing: restore it from the "
                    "warehouse's backup (without it the list matches nobody)"
                )
            _write_new_key(path)
        key = bytes.fromhex(path.read_text().strip())
        if len(key) != KEY_BYTES:
            raise ValueError(f"{path} holds no usable suppression key ({KEY_BYTES} bytes, hex)")
        _keys[str(path)] = key
        return key


def _write_new_key(path: Path) -> None:
    """Written whole, then linked into place: of two processes making it at once, one wins
    and both read its key; neither ever reads a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(KEY_BYTES))
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(partial, path)
        sync_folder(path.parent)
    finally:
        partial.unlink(missing_ok=True)


def keyed_hash(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def list_key(con: duckdb.DuckDBPyConnection) -> bytes:
    """The key of this warehouse's list: made if the list is empty, else required."""
    return _key_of(con, create=not _any_listed(con))


def add_to_list(
    con: duckdb.DuckDBPyConnection,
    identifiers: Iterable[str],
    *,
    reason: str,
    now: datetime,
) -> int:
    """Add identifiers (their hashed texts) not on the list yet; returns how many were new."""
    key = list_key(con)
    rows = {keyed_hash(key, text): identity_kind(text).value for text in identifiers}
    if not rows:
        return 0
    hashes, kinds = list(rows), list(rows.values())
    return con.execute(
        """
        INSERT INTO suppression_list
        SELECT h.key_hash, h.kind, $reason, $now
        FROM (SELECT unnest($hashes) AS key_hash, unnest($kinds) AS kind) h
        ANTI JOIN suppression_list s USING (key_hash)
        """,
        {"hashes": hashes, "kinds": kinds, "reason": reason, "now": now},
    ).fetchone()[0]  # type: ignore[index]


def listed_among(con: duckdb.DuckDBPyConnection, texts: Iterable[str]) -> set[str]:
    """Which of these hashed texts are on the list."""
    texts = list(texts)
    if not texts or not _any_listed(con):
        return set()
    key = _key_of(con, create=False)
    by_hash = {keyed_hash(key, text): text for text in texts}
    found = con.execute(
        "SELECT key_hash FROM suppression_list WHERE key_hash IN (SELECT unnest(?))",
        [list(by_hash)],
    ).fetchall()
    return {by_hash[row[0]] for row in found}


def unsuppressed(
    con: duckdb.DuckDBPyConnection, contacts: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The ``clean_contacts``-shaped contacts none of whose keys is on the list: the Python
    twin of ``NOT suppressed_sql(con, clean_contact_keys_sql(...))``, for one request's few."""
    keys = [_contact_keys(contact) for contact in contacts]
    listed = listed_among(con, (text for texts in keys for text in texts))
    return [c for c, texts in zip(contacts, keys, strict=True) if listed.isdisjoint(texts)]


def result_key(kind: str, key: str) -> str:
    """The hashed text of a look-up's key: a person's identity, a company's domain."""
    return key if kind == "person" else f"domain:{key}"


def _contact_keys(contact: Mapping[str, Any]) -> list[str]:
    email, phone = contact.get("email"), contact.get("phone")
    slug = linkedin_slug(contact.get("linkedin_url"))
    texts = [contact["identity"]]
    if email:
        texts += [email, f"domain:{email.partition('@')[2]}"]
    if contact.get("company_domain"):
        texts.append(f"domain:{contact['company_domain']}")
    if phone:
        texts.append(f"phone:{phone}")
    if slug:
        texts.append(f"social:{slug}")
    return texts


def _any_listed(con: duckdb.DuckDBPyConnection) -> bool:
    return bool(con.execute("SELECT EXISTS (SELECT 1 FROM suppression_list)").fetchone()[0])  # type: ignore[index]


def _key_of(con: duckdb.DuckDBPyConnection, *, create: bool) -> bytes:
    if postgres.in_use(con):
        return _stored_key(con, create=create)
    return load_key(_warehouse_path(con), create=create)


def _stored_key(con: duckdb.DuckDBPyConnection, *, create: bool) -> bytes:
    """A Postgres warehouse's key, which every machine shares: in its ``suppression_key`` table
    (a file would be one machine's). Made under the writer lock, so by one process."""
    row = con.execute("SELECT key_hex FROM suppression_key").fetchone()
    if row is None:
        if not create:
            raise FileNotFoundError(
                "the suppression list's key is missing from the warehouse's suppression_key "
                "table: restore it from the warehouse's backup (without it the list matches "
                "nobody)"
            )
        row = (secrets.token_hex(KEY_BYTES),)
        con.execute("INSERT INTO suppression_key VALUES (?)", [row[0]])
    return bytes.fromhex(row[0])


def _warehouse_path(con: duckdb.DuckDBPyConnection) -> str:
    row = con.execute(
        "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchone()
    if row is None or row[0] is None:
        raise ValueError("the suppression list needs a warehouse file, not an in-memory database")
    return str(row[0])


def suppressed_sql(con: duckdb.DuckDBPyConnection, keys: Sequence[str]) -> str:
    """A SQL condition, true for a row any of whose ``keys`` (SQL expressions giving hashed
    texts; NULL for none) is on the list. With an empty list it is ``false``, costing nothing
    per row; else this connection is given the key to hash with."""
    if not _any_listed(con):
        return "false"
    key = _key_of(con, create=False).ljust(64, b"\0")
    con.execute("SET VARIABLE __suppression_inner = ?", [bytes(b ^ 0x36 for b in key)])
    con.execute("SET VARIABLE __suppression_outer = ?", [bytes(b ^ 0x5C for b in key)])
    # HMAC-SHA256 (RFC 2104) from DuckDB's sha256, for a key of at most 64 bytes.
    con.execute(
        """
        CREATE OR REPLACE TEMP MACRO __suppressed(v) AS coalesce(
            sha256(getvariable('__suppression_outer')
                   || unhex(sha256(getvariable('__suppression_inner') || encode(v))))
            IN (SELECT key_hash FROM suppression_list),
            false)
        """
    )
    return "(" + " OR ".join(f"__suppressed({key})" for key in keys) + ")"


def email_keys_sql(email: str) -> list[str]:
    """Keys of a normalised email expression: the address and its domain."""
    return [email, f"'domain:' || nullif(split_part({email}, '@', 2), '')"]


def linkedin_key_sql(url: str) -> str:
    return f"'social:' || {slug_sql(url)}"


def clean_contact_keys_sql(alias: str) -> list[str]:
    """Keys of a ``clean_contacts`` row: identity, email and its domain, the company's domain,
    phone, LinkedIn."""
    return [
        f"{alias}.identity",
        *email_keys_sql(f"{alias}.email"),
        f"'domain:' || {alias}.company_domain",
        f"'phone:' || {alias}.phone",
        linkedin_key_sql(f"{alias}.linkedin_url"),
    ]


def crm_record_keys_sql(alias: str) -> list[str]:
    """Keys of a ``crm_contacts`` row: its email and domain, phones and LinkedIn profile."""
    return [
        *email_keys_sql(f"{alias}.email"),
        f"'phone:' || {alias}.phone",
        f"'phone:' || {alias}.mobile_phone",
        linkedin_key_sql(f"{alias}.linkedin_url"),
    ]


def landed_keys_sql() -> list[str]:
    """Keys of a row as it lands (values as given): the email trimmed and lower-cased, its
    domain, the phone in E.164 where its digits say so (a national number read as the US,
    as validation reads it), the LinkedIn profile, and name + company for a row with nothing
    else. Validation's library checks come later; what they normalise differently is caught
    by the gates on ``clean_contacts``."""
    # "Jane <jane@acme.com>" is her address too.
    address = "coalesce(nullif(regexp_extract(email, '<([^<>]+)>', 1), ''), email)"
    email = f"lower(trim({address}, chr(32) || chr(9) || chr(10) || chr(13) || chr(160)))"
    # An extension ("ext. 12", "extension 12", "x12", "#12", ";ext=12") is no part of the
    # number, nor a "(0)" trunk prefix after a country code.
    number = (
        "regexp_replace(regexp_replace(phone, "
        "'(?i)\\s*[,;]?\\s*(extension|ext\\.?|ext=|x|#)\\s*[0-9]+\\s*$', ''), "
        "'\\(0\\)', '')"
    )
    digits = f"regexp_replace({number}, '[^0-9]', '', 'g')"
    phone = f"""'phone:' || CASE
        WHEN starts_with(ltrim(phone), '+') THEN '+' || {digits}
        WHEN starts_with({digits}, '00') THEN '+' || {digits}[3:]
        WHEN length({digits}) = 10 THEN '+1' || {digits}
        WHEN length({digits}) = 11 AND starts_with({digits}, '1') THEN '+' || {digits}
    END"""
    name_key = f"""CASE WHEN email IS NULL AND phone IS NULL AND linkedin_url IS NULL
        THEN {name_identity_sql(landed_name_sql(), "company_name")} END"""
    return [*email_keys_sql(email), phone, linkedin_key_sql("linkedin_url"), name_key]
