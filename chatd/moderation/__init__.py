"""
Moderation: moderators see each chat message before it is broadcast and may
pass it, rewrite its body, or reject it.

A moderator is any object with ``moderate(submission)`` returning a verdict
or a Deferred of one.  Moderators are made by factories found as Twisted
plugins (``IModeratorFactory``, the same plugin system as the twistd plugin)
or named by dotted path, and configured with ``--moderator
NAME[:key=value...]``.  The :class:`Moderation` pipeline runs them in turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Protocol, Union

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.plugin import getPlugins
from twisted.python.failure import Failure
from twisted.python.reflect import namedAny
from zope.interface import Attribute, Interface

from chatd.settings import parse_moderator


@dataclass(frozen=True)
class Submission:
    """A message on its way to a room, or directly to someone (``to``)."""

    client_id: str
    nick: Optional[str]
    room_id: str  # "" for a direct message
    body: Any
    #: The recipient a direct message was addressed to (None: the room).
    to: Optional[str] = None


@dataclass(frozen=True)
class Pass:
    """Broadcast the message as it is."""


@dataclass(frozen=True)
class Rewrite:
    """Broadcast ``body`` instead."""

    body: Any


@dataclass(frozen=True)
class Reject:
    """Do not broadcast; the sender gets "Message rejected by moderation"."""


Verdict = Union[Pass, Rewrite, Reject]
PASS = Pass()
REJECT = Reject()


class Moderator(Protocol):
    def moderate(self, submission: Submission) -> "Union[Verdict, Deferred[Verdict]]": ...


class IModeratorFactory(Interface):
    """A Twisted plugin that makes moderators (see twisted/plugins/chatd_moderators.py)."""

    name = Attribute("The name --moderator uses, e.g. 'banned-words'.")

    def create(options: Mapping[str, str]) -> Moderator:
        """
        A moderator configured by ``options`` (from NAME:key=value:...);
        raise ValueError with a clear message for bad options.
        """


class ModeratorError(ValueError):
    """A --moderator that cannot be made; the message says why."""


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``NAME:key=value:key=value`` into the name and the options."""
    try:
        return parse_moderator(spec)
    except ValueError as e:
        raise ModeratorError(str(e)) from None


def factories() -> dict[str, Any]:
    """Every moderator factory installed as a Twisted plugin, by name."""
    import twisted.plugins

    return {f.name: f for f in getPlugins(IModeratorFactory, twisted.plugins)}


def build(spec: str) -> Moderator:
    """Make the moderator ``spec`` names: a plugin name, or a dotted path."""
    name, options = parse_spec(spec)
    installed = factories()
    factory = installed.get(name)
    if factory is None and "." in name:
        try:
            factory = namedAny(name)
        except Exception as e:
            raise ModeratorError(f"{name!r} cannot be imported: {e}") from None
    if factory is None:
        known = ", ".join(sorted(installed)) or "none"
        raise ModeratorError(f"no moderator named {name!r} (installed: {known})")
    create = getattr(factory, "create", factory)
    try:
        moderator = create(options)
    except ValueError as e:
        raise ModeratorError(f"{name}: {e}") from None
    if not callable(getattr(moderator, "moderate", None)):
        raise ModeratorError(f"{name}: made {moderator!r}, which has no moderate() method")
    return moderator


class Moderation:
    """
    Runs moderators in turn: a rewrite feeds the next one, a reject stops.

    :param on_failure: ``"pass"`` or ``"reject"``: what a moderator that
        raises, fails its Deferred or takes longer than ``timeout`` seconds
        amounts to.  The failure is logged either way.
    """

    _log = Logger()

    def __init__(
        self,
        moderators: list[Moderator],
        clock: IReactorTime,
        on_failure: str = "reject",
        timeout: float = 5.0,
        counted: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        self.moderators = moderators
        self.clock = clock
        self.on_failure = on_failure
        self.timeout = timeout
        self._counted = counted

    def __bool__(self) -> bool:
        return bool(self.moderators)

    def review(self, submission: Submission) -> "Deferred[Verdict]":
        """The final verdict on ``submission``; never fails."""
        return self._from(0, submission, False)

    def _from(self, index: int, submission: Submission, rewritten: bool) -> "Deferred[Verdict]":
        # Synchronous moderators finish here without waiting for the reactor.
        while index < len(self.moderators):
            moderator = self.moderators[index]
            d = maybeDeferred(moderator.moderate, submission)
            if not d.called:
                d.addTimeout(self.timeout, self.clock)
            d.addCallback(self._checked, moderator)
            d.addErrback(self._failed, moderator, submission)
            if not d.called:
                return d.addCallback(self._then, index, submission, rewritten)
            final, submission, rewritten = self._apply(d.result, submission, rewritten)
            if final is not None:
                return succeed(final)
            index += 1
        self._counted("rewritten" if rewritten else "passed")
        return succeed(Rewrite(submission.body) if rewritten else PASS)

    def _then(self, verdict: Verdict, index: int, submission: Submission, rewritten: bool) -> "Deferred[Verdict]":
        final, submission, rewritten = self._apply(verdict, submission, rewritten)
        if final is not None:
            return succeed(final)
        return self._from(index + 1, submission, rewritten)

    def _apply(
        self, verdict: Verdict, submission: Submission, rewritten: bool
    ) -> tuple[Optional[Verdict], Submission, bool]:
        """One moderator's verdict: final (a reject), or what the next one sees."""
        if isinstance(verdict, Reject):
            self._counted("rejected")
            return verdict, submission, rewritten
        if isinstance(verdict, Rewrite):
            return None, Submission(submission.client_id, submission.nick, submission.room_id, verdict.body), True
        return None, submission, rewritten

    @staticmethod
    def _checked(verdict: Any, moderator: Moderator) -> Verdict:
        if not isinstance(verdict, (Pass, Rewrite, Reject)):
            raise TypeError(f"{moderator!r} returned {verdict!r}, not Pass, Rewrite or Reject")
        return verdict

    def _failed(self, failure: Failure, moderator: Moderator, submission: Submission) -> Verdict:
        self._log.failure(
            "Moderator {moderator!r} failed on a message from {client_id}; policy: {policy}",
            failure, moderator=moderator, client_id=submission.client_id, policy=self.on_failure,
        )
        self._counted("failed")
        return PASS if self.on_failure == "pass" else REJECT
