"""Display casing for values the provider answers in lower case ("senior product manager",
"san francisco", "tech company"), before they reach CRM fields.

Only a value with no capital letter at all is recased: one that has any ("iPhone Team",
"deVries") was cased by someone on purpose and is kept as it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

Style = Literal["title", "name", "place", "words"]

# Job-title words that are written in capitals.
_ACRONYMS = frozenset(
    {
        "ai", "avp", "b2b", "b2c", "bdr", "ceo", "cfo", "chro", "cio", "ciso", "cmo", "coo",
        "cpo", "cro", "cso", "cto", "cx", "evp", "gm", "hr", "it", "ml", "pr", "qa", "r&d",
        "sdr", "seo", "svp", "ui", "ux", "vp",
    }
)  # fmt: skip
# Lower case inside a title or a place unless they come first.
_SMALL_WORDS = frozenset(
    {"a", "an", "and", "at", "by", "de", "del", "do", "da", "for", "in", "of", "on", "or",
     "the", "to", "upon", "y"}
)  # fmt: skip
# Name particles, lower case wherever they stand ("van der Berg", "da Silva").
_PARTICLES = frozenset(
    {"al", "bin", "da", "das", "de", "del", "della", "der", "di", "dos", "du", "la", "le", "ten",
     "ter", "van", "von"}
)  # fmt: skip

_WORD = re.compile(r"[^\s\-/]+|[\s\-/]+")


def display_case(value: str | None, style: Style) -> str | None:
    """``value`` cased for display in the given style, if it is all lower case."""
    if not value or value != value.lower() or not any(c.isalpha() for c in value):
        return value
    parts = _WORD.findall(value)
    words = [i for i, part in enumerate(parts) if not _is_separator(part)]
    case = _STYLES[style]
    for position, index in enumerate(words):
        parts[index] = case(parts[index], position == 0, position == len(words) - 1)
    return "".join(parts)


def _is_separator(part: str) -> bool:
    return not part.strip(" \t-/")


def _capitalised(word: str) -> str:
    """First letter up, the rest as they are; also after an apostrophe ("O'Brien")."""
    return "'".join(piece[:1].upper() + piece[1:] for piece in word.split("'"))


def _title_word(word: str, first: bool, last: bool) -> str:
    if word in _ACRONYMS:
        return word.upper()
    if word in _SMALL_WORDS and not first and not last:
        return word
    return _capitalised(word)


def _name_word(word: str, first: bool, last: bool) -> str:
    if word in _PARTICLES and not last:
        return word
    if word.startswith("mc") and len(word) > 2:
        return "Mc" + _capitalised(word[2:])
    return _capitalised(word)


def _place_word(word: str, first: bool, last: bool) -> str:
    if word in _SMALL_WORDS and not first and not last:
        return word
    # A lone two-letter place is a code: "ca", "us".
    if first and last and len(word) == 2:
        return word.upper()
    return _capitalised(word)


def _words(word: str, first: bool, last: bool) -> str:
    if word in _SMALL_WORDS and not first and not last:
        return word
    return _capitalised(word)


_STYLES: dict[Style, Callable[[str, bool, bool], str]] = {
    "title": _title_word,
    "name": _name_word,
    "place": _place_word,
    "words": _words,
}
