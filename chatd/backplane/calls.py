"""
How a cluster node runs its scripts on its Redis shards: on one shard in
step, on every shard a client's record lives on, or on all in the
background, each call first sending the messages the node's clients
published before it (so that Redis sees them in the order they were
sent), and Redis's errors turned into Unavailable for the client (and
logged where they are a bug).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import txredisapi
from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatd.backplane.shards import Shards
from chatd.errors import ChatError, Unavailable


class ShardCalls:
    """A node's script calls (see the module's docstring)."""

    _log = Logger()

    def __init__(self, shards: Shards, flush: Callable[[], None]) -> None:
        self.shards = shards
        self._flush = flush
        self._in_background: set[Deferred[Any]] = set()  # disconnects on their way to Redis

    def settled(self) -> "Deferred[Any]":
        """Fires once Redis has applied every background call made so far."""
        return DeferredList(list(self._in_background))

    def call(self, shard: Any, script: str, *args: Any) -> "Deferred[Any]":
        """Run a script on a shard in step with this node; Unavailable otherwise."""
        self._flush()
        return self.run(shard, script, *args).addErrback(self.as_chat_error)

    def run(self, shard: Any, script: str, *args: Any) -> "Deferred[Any]":
        if not shard.available:
            return fail(Unavailable())
        return shard.call(script, *args)

    def each(self, script: str, *args: Any) -> "Deferred[list[tuple[Any, Any]]]":
        """
        Run a script about a client on every shard connected now, in step or
        about to be (one that is not takes the change at its resync): a list
        of (shard, answer) from those that answered; Unavailable if none did
        or none is in step.
        """
        self._flush()
        shards = [shard for shard in self.shards.all if shard.connected]
        if not any(shard.available for shard in shards):
            return fail(Unavailable())
        calls = [shard.call(script, *args).addErrback(self.as_chat_error) for shard in shards]
        if len(shards) == 1:
            return calls[0].addCallback(lambda answer: [(shards[0], answer)])
        d = DeferredList(calls, consumeErrors=True)

        def answered(answers: list[tuple[bool, Any]]) -> list[tuple[Any, Any]]:
            results = [(shard, answer) for shard, (ok, answer) in zip(shards, answers, strict=True) if ok]
            if not results:
                raise Unavailable()
            return results

        return d.addCallback(answered)

    def on_each(
        self, script: str, *args: Any, but: Any = None, then: Optional[Callable[[Any], Any]] = None,
    ) -> None:
        """Run a script about a client on every connected shard (``but``
        one), in the background; ``then`` gets each answer."""
        self._flush()
        for shard in self.shards.all:
            if shard is not but and shard.connected:
                d = shard.call(script, *args)
                self.background(d.addCallback(then) if then else d, "updating a client on every shard")

    def background(self, d: "Deferred[Any]", what: str) -> None:
        d.addErrback(self.as_chat_error).addErrback(self._background_failure, what)
        self._in_background.add(d)
        d.addBoth(lambda _: self._in_background.discard(d))

    def as_chat_error(self, failure: Failure) -> Failure:
        if failure.check(ChatError):
            return failure
        if not failure.check(txredisapi.ConnectionError):
            # Redis answered an error: a bug here or there, not the client's.
            self._log.failure("Redis refused a command", failure)
        raise Unavailable()

    def _background_failure(self, failure: Failure, what: str) -> None:
        if not failure.check(Unavailable):
            self._log.failure("Redis failed during {what}", failure, what=what)
