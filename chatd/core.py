"""
Rooms and members: the chat's state machine, free of I/O.

Nothing here imports Twisted or Autobahn.  Time comes in as ``now`` (POSIX
seconds); connections are :class:`Sink` objects; a broadcast is encoded and
prepared once, then handed to every recipient's sink.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, Container, Optional, Protocol

from chatd import codec
from chatd.codec import Command, Create, Join, Leave, Message
from chatd.errors import NotInRoom, RoomNotFound, SinkGone


class Sink(Protocol):
    """
    One member's connection, as the core sees it.

    ``deliver`` must not call back into the core; it may raise
    :class:`~chatd.errors.SinkGone` (the connection is closing itself) or any
    other exception (a bug), and the core then removes the member.
    """

    def deliver(self, frame: Any) -> None:
        """Queue one prepared broadcast frame for sending; never block."""

    def close(self, code: int, reason: str) -> None:
        """Begin closing the connection with a WebSocket close code."""


def random_id() -> str:
    """8 characters from a random UUID, like the seed server's IDs."""
    return uuid.uuid4().hex[:8]


class Client:
    """One connected client."""

    __slots__ = ("client_id", "sink", "room")

    def __init__(self, client_id: str, sink: Sink) -> None:
        self.client_id = client_id
        self.sink = sink
        self.room: Optional[Room] = None

    def __repr__(self) -> str:
        return f"<Client {self.client_id}>"


class Room:
    """One room and its members, in the order they joined."""

    __slots__ = ("room_id", "name", "created_at", "created_by", "members")

    def __init__(self, room_id: str, name: str, created_at: str, created_by: str) -> None:
        self.room_id = room_id
        self.name = name
        self.created_at = created_at
        self.created_by = created_by
        self.members: dict[str, Client] = {}


class CoreEvents:
    """
    Told what happens in the core, for logs and metrics; every method does
    nothing here.  Implementations must not call back into the core.
    """

    def room_created(self, room: Room, client: Client) -> None:
        """``client`` created ``room``."""

    def room_deleted(self, room: Room) -> None:
        """``room`` lost its last member and is gone."""

    def message_sent(
        self, room: Room, sender: Client, body: Any, recipients: int, size: int
    ) -> None:
        """One broadcast of ``size`` encoded bytes reached ``recipients`` members."""


#: Called with (client, exception) when a sink's deliver fails unexpectedly.
SinkErrorHandler = Callable[[Client, BaseException], None]


def _ignore_sink_error(client: Client, failure: BaseException) -> None:
    pass


def _identity(payload: bytes) -> Any:
    return payload


class ChatCore:
    """
    All clients and rooms of one chat server.

    :param prepare: turns an encoded broadcast into the frame every sink's
        ``deliver`` receives; called once per broadcast, whatever the number
        of recipients (the WebSocket adapter frames it here).
    :param new_id: source of candidate IDs; collisions are checked.
    :param on_sink_error: told about sinks whose ``deliver`` raised
        something other than ``SinkGone``.
    :param events: told about rooms and broadcasts.
    """

    def __init__(
        self,
        prepare: Callable[[bytes], Any] = _identity,
        new_id: Callable[[], str] = random_id,
        on_sink_error: SinkErrorHandler = _ignore_sink_error,
        events: Optional[CoreEvents] = None,
    ) -> None:
        self._prepare = prepare
        self._new_id = new_id
        self._on_sink_error = on_sink_error
        self.events = events if events is not None else CoreEvents()
        self.clients: dict[str, Client] = {}
        self.rooms: dict[str, Room] = {}

    # -- ids ---------------------------------------------------------------

    def _unique_id(self, taken: Container[str]) -> str:
        for _ in range(100):
            candidate = self._new_id()
            if candidate not in taken:
                return candidate
        # 100 collisions in a row means the ID source is broken, not unlucky.
        raise RuntimeError("could not find a free ID after 100 tries")

    # -- connections -------------------------------------------------------

    def connect(self, sink: Sink) -> Client:
        """Register a new connection; the caller sends it ``codec.welcome``."""
        client = Client(self._unique_id(self.clients), sink)
        self.clients[client.client_id] = client
        return client

    def disconnect(self, client: Client) -> None:
        """Forget a client and leave its room. Safe to call more than once."""
        if self.clients.get(client.client_id) is not client:
            return
        self._leave_room(client)
        del self.clients[client.client_id]

    # -- commands ----------------------------------------------------------

    def handle(self, client: Client, command: Command, now: float) -> dict[str, Any]:
        """Carry out one command; return the reply for the client."""
        if isinstance(command, Message):
            return self.message(client, command.body, now)
        if isinstance(command, Join):
            return self.join(client, command.room_id)
        if isinstance(command, Create):
            return self.create(client, command.name, now)
        if isinstance(command, Leave):
            return self.leave(client)
        raise TypeError(f"unknown command {command!r}")

    def create(self, client: Client, name: str, now: float) -> dict[str, Any]:
        self._leave_room(client)
        room = Room(self._unique_id(self.rooms), name, codec.timestamp(now), client.client_id)
        self.rooms[room.room_id] = room
        self._enter_room(client, room)
        self.events.room_created(room, client)
        return {
            "status": "success",
            "room_id": room.room_id,
            "message": f"Room '{name}' created",
        }

    def join(self, client: Client, room_id: str) -> dict[str, Any]:
        room = self.rooms.get(room_id)
        if room is None:
            raise RoomNotFound(room_id)
        if client.room is not room:
            self._leave_room(client)
            self._enter_room(client, room)
        return {
            "status": "success",
            "message": f"Joined room '{room.name}'",
            "room_id": room.room_id,
        }

    def leave(self, client: Client) -> dict[str, Any]:
        if client.room is None:
            raise NotInRoom("Not in any room")
        self._leave_room(client)
        return {"status": "success", "message": "Left room"}

    def message(self, client: Client, body: Any, now: float) -> dict[str, Any]:
        room = client.room
        if room is None:
            raise NotInRoom("You must join a room first")
        payload = codec.encode(codec.broadcast(client.client_id, body, codec.timestamp(now)))
        recipients = self._fan_out(room, client, payload)
        self.events.message_sent(room, client, body, recipients, len(payload))
        return {"status": "success", "message": "Message sent"}

    # -- internals ---------------------------------------------------------

    def _enter_room(self, client: Client, room: Room) -> None:
        room.members[client.client_id] = client
        client.room = room

    def _leave_room(self, client: Client) -> None:
        room = client.room
        if room is None:
            return
        client.room = None
        room.members.pop(client.client_id, None)
        if not room.members:
            del self.rooms[room.room_id]
            self.events.room_deleted(room)

    def _fan_out(self, room: Room, sender: Client, payload: bytes) -> int:
        """
        Deliver one encoded broadcast to every member but the sender; return
        how many it reached.
        """
        if len(room.members) < 2:
            return 0
        frame = self._prepare(payload)
        failed: list[tuple[Client, BaseException]] = []
        for member in room.members.values():
            if member is sender:
                continue
            try:
                member.sink.deliver(frame)
            except Exception as e:
                failed.append((member, e))
        for member, error in failed:
            self.disconnect(member)
            if isinstance(error, SinkGone):
                continue
            self._on_sink_error(member, error)
            try:
                member.sink.close(1011, "Internal error")
            except Exception as close_error:
                self._on_sink_error(member, close_error)
        return len(room.members) - 1  # the failed ones are no longer members
