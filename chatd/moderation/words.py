"""
The built-in banned-words moderator:

    --moderator banned-words:file=/etc/chatd/banned-words.txt[:mode=reject|mask]

The file has one word or phrase a line (blank lines and lines starting with
``#`` are skipped).  Matching is case-insensitive and on whole words, in the
body if it is a string and in every string of a JSON body, keys included
(clients show them too).  ``reject`` (the default) refuses the message; ``mask`` replaces
each match with as many asterisks.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from twisted.plugin import IPlugin
from zope.interface import implementer

from chatd.moderation import PASS, REJECT, IModeratorFactory, Rewrite, Submission, Verdict
from chatd.settings import read_entries

MODES = ("reject", "mask")


def read_words(path: str) -> list[str]:
    return read_entries(path, "the word list")


class BannedWords:
    def __init__(self, words: list[str], mode: str = "reject") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be reject or mask, not {mode!r}")
        if not words:
            raise ValueError("the word list is empty")
        self.mode = mode
        # Longest first, so that a phrase wins over a word inside it.
        alternatives = "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))
        # Whole words: no word character just before or after the match.
        self._pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)

    def __repr__(self) -> str:
        return f"<BannedWords mode={self.mode}>"

    def moderate(self, submission: Submission) -> Verdict:
        body = submission.body
        if not self._contains(body):
            return PASS
        if self.mode == "reject":
            return REJECT
        return Rewrite(self._masked(body))

    def _contains(self, value: Any) -> bool:
        if isinstance(value, str):
            return self._pattern.search(value) is not None
        if isinstance(value, dict):
            return any(self._contains(k) or self._contains(v) for k, v in value.items())
        if isinstance(value, list):
            return any(self._contains(v) for v in value)
        return False

    def _masked(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._pattern.sub(lambda m: "*" * len(m.group()), value)
        if isinstance(value, dict):
            # Two keys that mask alike are one key afterwards (the later's value).
            return {self._masked(k): self._masked(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._masked(v) for v in value]
        return value


@implementer(IPlugin, IModeratorFactory)
class BannedWordsFactory:
    name = "banned-words"

    def create(self, options: Mapping[str, str]) -> BannedWords:
        unknown = set(options) - {"file", "mode"}
        if unknown:
            raise ValueError(f"unknown option {sorted(unknown)[0]!r} (it takes file= and mode=)")
        if "file" not in options:
            raise ValueError("needs file=PATH, a list of words one a line")
        return BannedWords(read_words(options["file"]), options.get("mode", "reject"))
