"""
The chat a conversation talks to: one interface, two implementations.

:class:`LocalChat` is one process's chat, over a :class:`~chatd.core.ChatCore`;
:class:`chatd.backplane.cluster.ClusterChat` is a cluster node's, with the
rooms in Redis.  Both answer every call the same way: a chat message through
the ``answer`` callable it is given (the hot path: no Deferred per message),
every other command with a Deferred, which has fired already where the
answer is known at once.  A refusal is a :class:`~twisted.python.failure.Failure`
of a :class:`~chatd.errors.ChatError`.  The conversation never asks which
chat it has.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from chatd.codec import Command
from chatd.core import ChatCore
from chatd.rooms.history import MemoryHistory
from chatd.rooms.state import Client, Room, Sink
from chatd.errors import ChatError

Reply = dict[str, Any]
#: Told the reply to a chat message (or a Failure), and whose it is.
Answer = Callable[[Any, Client], None]
T = TypeVar("T")


class Chat(Protocol):
    """What one client's conversation needs from the chat."""

    def connect(self, sink: Sink) -> "Client | Deferred[Client]":
        """Register a new connection: its client, or a Deferred of it when
        the ID must be checked elsewhere first (it is the first thing every
        connection does, so a local chat answers without a Deferred)."""
        ...

    def disconnect(self, client: Client, now: float) -> None:
        """The connection is gone: leave its room. Safe to call more than once."""
        ...

    def check_message_rate(self, client: Client, now: float, in_room: bool = True) -> None:
        """Take a message token, or raise :class:`~chatd.errors.RateLimited`
        (before a moderator sees the message); ``in_room``: for the client's
        room (a direct message needs none)."""
        ...

    def check_command_rate(self, client: Client, now: float) -> None:
        """Take a token for any other command, or raise RateLimited."""
        ...

    def charge_reply(self, client: Client, size: int, now: float) -> None:
        """A reply of ``size`` bytes went out: a large one costs more tokens."""
        ...

    def publish(self, client: Client, body: Any, now: float, answer: Answer, room: Optional[Room] = None) -> None:
        """
        Broadcast ``body`` to ``room`` (one the client is in; None: its
        current room), and call ``answer`` once
        with the sender's reply (or a Failure), during this call or later.
        A client's messages are published, and answered, in the order of
        these calls, so the next may be sent before this one is answered;
        no call answers an earlier one.
        """
        ...

    def handle(self, client: Client, command: Command, now: float) -> "Deferred[Reply]":
        """Carry out any other command; its reply."""
        ...

    def direct(self, client: Client, to: str, body: Any, now: float) -> "Deferred[Reply]":
        """A direct message to a client ID or a user's every connection."""
        ...

    def replied(self, client: Client) -> None:
        """A reply that came later has been sent: what waited behind it follows."""
        ...

    def authenticate(self, client: Client, user: str, name: Optional[str], now: float) -> "Deferred[None]":
        """``client`` has proved it is ``user`` (``name``: its display name);
        fires once every member can see it."""
        ...

    def reading(self, function: Callable[..., T], *args: Any) -> T:
        """
        Run ``function`` over several messages of one read: each room's
        broadcasts of them reach each member in one delivery.
        """
        ...

    def counts(self) -> dict[str, float]:
        """Clients, rooms and members here, for the metrics."""
        ...

    def list_all(self, limit: int, after: Optional[str]) -> "Deferred[Reply]":
        """Every room, private ones too, a page at a time (the server API's)."""
        ...


class LocalChat:
    """
    One process's chat: every answer is known at once.

    :param observe_fanout: told how long each fan-out took, in the units of
        ``timer``.
    :param on_fanout_error: told about an unexpected error fanning out the
        broadcasts of a read (their replies are sent already).
    """

    def __init__(
        self,
        core: ChatCore,
        timer: Callable[[], float],
        observe_fanout: Callable[[float], None],
        clock: IReactorTime,
        on_fanout_error: Callable[[], None],
    ) -> None:
        self.core = core
        # The calls that need nothing more than the core's, without a call between.
        self.disconnect = core.disconnect
        self.check_message_rate = core.check_message_rate
        self.check_command_rate = core.check_command_rate
        self.charge_reply = core.charge_reply
        self._timer = timer
        self._observe = observe_fanout
        self._clock = clock
        self._on_fanout_error = on_fanout_error

    def connect(self, sink: Sink) -> Client:
        return self.core.connect(sink)

    def list_all(self, limit: int, after: Optional[str]) -> "Deferred[Reply]":
        return succeed(self.core.list_rooms(limit, after, None, everything=True))

    def publish(self, client: Client, body: Any, now: float, answer: Answer, room: Optional[Room] = None) -> None:
        core = self.core
        started = self._timer()
        try:
            room = room if room is not None else client.room
            # Only a lasting room's message is answered later (a ChatError
            # then, not a Failure): no closure per message for the others.
            later = _with_failures(answer) if room is not None and room.persistent else None
            reply = core.publish(client, body, now, later, room)
        except ChatError:
            answer(Failure(), client)
            return
        if reply is None:
            return  # a lasting room's: answered once the store has it
        # A read's messages are fanned out together, and timed so (reading).
        if not core.gathering:
            self._observe(self._timer() - started)
        answer(reply, client)

    def handle(self, client: Client, command: Command, now: float) -> "Deferred[Reply]":
        if self.core.gathering:
            # What this read broadcast so far goes first, so that every
            # member sees what happened in order.
            self._fan_out(self.core.fan_out_gathered)
        try:
            reply = self.core.handle(client, command, now)
        except ChatError as e:
            return fail(e)
        return reply if isinstance(reply, Deferred) else succeed(reply)

    def replied(self, client: Client) -> None:
        pass

    def direct(self, client: Client, to: str, body: Any, now: float) -> "Deferred[Reply]":
        try:
            return succeed(self.core.direct(client, to, body, now))
        except ChatError as e:
            return fail(e)

    def authenticate(self, client: Client, user: str, name: Optional[str], now: float) -> "Deferred[None]":
        try:
            self.core.authenticated(client, user, name, now)
        except ChatError as e:
            return fail(e)
        return succeed(None)

    def reading(self, function: Callable[..., T], *args: Any) -> T:
        core = self.core
        core.gather()
        try:
            return function(*args)
        finally:
            if core.gathering:
                self._fan_out(core.end_gathering)

    def _fan_out(self, fan_out: Callable[[float], int]) -> None:
        started = self._timer()
        try:
            fanned_out = fan_out(self._clock.seconds())
        except Exception:
            self._on_fanout_error()
            return
        if fanned_out:
            self._observe(self._timer() - started)

    def counts(self) -> dict[str, float]:
        counts = counts_of(self.core)
        history = self.core.history
        if isinstance(history, MemoryHistory):
            counts["history_bytes"] = history.total
        return counts


def counts_of(core: ChatCore) -> dict[str, float]:
    """The gauges of a core's clients and rooms (a cluster node's: its own)."""
    rooms = core.rooms
    return {
        "clients": len(core.clients),
        "rooms": len(rooms),
        "members": sum(len(room.members) for room in rooms.values()),
    }


def _with_failures(answer: Answer) -> Answer:
    """``answer``, told a refusal as the Failure the conversation expects."""
    return lambda result, client: answer(Failure(result) if isinstance(result, Exception) else result, client)
