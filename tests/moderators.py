"""
Moderators for the tests, named by dotted path (``--moderator
tests.moderators.delaying``) in the real daemon.
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from chatd.moderation import Rewrite, Submission


class Delaying:
    """Holds bodies starting with "slow" for a while; upper-cases every body."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def moderate(self, submission: Submission) -> Any:
        verdict = Rewrite(str(submission.body).upper())
        if str(submission.body).startswith("slow"):
            return deferLater(reactor, self.seconds, lambda: verdict)
        return verdict


def delaying(options: Mapping[str, str]) -> Delaying:
    return Delaying(float(options.get("seconds", "0.3")))


class Never:
    def moderate(self, submission: Submission) -> "Deferred[Any]":
        return Deferred()  # never answers: the timeout decides


def never(options: Mapping[str, str]) -> Never:
    return Never()
