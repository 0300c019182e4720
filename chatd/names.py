"""
Names as people read them: nicks checked, and nicks and user names
compared by what they look like rather than by their code points.

A nick is enforced with the IETF's nickname profile (RFC 8266, through
``precis_i18n``): compatibility forms are normalised (``ｆｕｌｌ`` is
``full``), runs of spaces are one space, and invisible or filler characters
(joiners, variation selectors, the Hangul filler) are refused.  Two names
are the same name when their :func:`fold` is: case aside, and each
character taken as the one it is confusable with by Unicode's security
mechanisms (UTS #39's skeleton, from the confusables data that
``confusable_homoglyphs`` ships), so ``аlice`` with a Cyrillic ``а`` is
``alice``.  Case is folded first, so that ``ALICE`` is ``alice`` too (and
``AIice`` with a capital ``I`` is not: UTS #39 compares case as it is).
"""

from __future__ import annotations

import json
import unicodedata
from functools import lru_cache
from importlib import resources
from typing import Optional

import precis_i18n

_NICKNAME = precis_i18n.get_profile("NicknameCasePreserved")


class BadName(ValueError):
    """A nick RFC 8266 refuses; the message names the character."""


def enforce_nick(text: str) -> str:
    """
    ``text`` as a nick, normalised (RFC 8266's NicknameCasePreserved);
    BadName for an invisible, filler or otherwise disallowed character.
    """
    try:
        result: str = _NICKNAME.enforce(text)
    except UnicodeEncodeError as e:
        char = e.object[e.start] if e.start < len(e.object) else ""
        raise BadName(
            f"Nick must not contain U+{ord(char):04X} (invisible, filler or not allowed in names)"
            if char else "Nick must contain letters, digits or symbols") from None
    return result


def fold(name: str) -> str:
    """The form two names are compared in: equal when they read alike."""
    return _fold(name)


@lru_cache(maxsize=65536)
def _fold(name: str) -> str:
    visible = "".join(c for c in unicodedata.normalize("NFKC", name) if not _ignorable(c))
    return _skeleton(visible.casefold())


def looks_like(name: str, alphabet: str, length: int) -> bool:
    """Whether ``name`` reads as ``length`` characters of ``alphabet`` (a
    client ID's hex digits, say), whatever characters it is written in."""
    return len(name) == length and all(fold(c) in _folded(alphabet) for c in name)


@lru_cache(maxsize=16)
def _folded(alphabet: str) -> frozenset[str]:
    return frozenset(fold(c) for c in alphabet)


def _skeleton(text: str) -> str:
    prototypes = _prototypes()
    return unicodedata.normalize(
        "NFD", "".join(prototypes.get(c, c) for c in unicodedata.normalize("NFD", text)))


def _ignorable(char: str) -> bool:
    """Format characters and fillers that show nothing (default-ignorable)."""
    return unicodedata.category(char) == "Cf" or char in _FILLERS or "\ufe00" <= char <= "\ufe0f"


# Default-ignorable code points that are not format characters: the
# combining grapheme joiner, Hangul fillers, Mongolian variation selectors.
_FILLERS = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u3164\uffa0")


@lru_cache(maxsize=1)
def _prototypes() -> dict[str, str]:
    """
    Each confusable character's prototype.  In the data, a character that
    has a prototype lists it alone, and the prototype lists it back;
    a prototype lists every character confusable with it.
    """
    data = json.loads(resources.files("confusable_homoglyphs").joinpath("confusables.json").read_text("utf-8"))
    found: dict[str, str] = {}
    for char, homoglyphs in data.items():
        if len(homoglyphs) != 1:
            continue
        prototype: Optional[str] = homoglyphs[0].get("c")
        if prototype and prototype != char and any(h.get("c") == char for h in data.get(prototype, ())):
            found[char] = prototype
    return found
