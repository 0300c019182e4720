"""
A cluster node's local view of its members: for each room, which of this
node's clients receive what the room's channel carries here.

The room rules do not know who is connected where; this view does not
decide anything: it is told who entered and left (by the node, once Redis
has said so), and hands each batch the channel brings to the members here,
each message framed once.  Free of I/O: the frames go to the clients'
sinks through the core's delivery, which drops a sink that fails.
"""

from __future__ import annotations

from typing import Optional

from chatd.core import ChatCore
from chatd.rooms.state import Client, Room


class LocalRooms:
    """The rooms as this node's members are in them (the core's ``rooms``)."""

    def __init__(self, core: ChatCore) -> None:
        self.core = core
        self.rooms = core.rooms  # the same dict: the metrics count it

    def room(self, room_id: str) -> Room:
        """The local view of a room, made if there is none yet."""
        room = self.rooms.get(room_id)
        if room is None:
            room = self.rooms[room_id] = Room(room_id, "", "", "", 0)
        return room

    def forget(self, room: Room) -> None:
        """Drop the local view of a room (nobody here is in it)."""
        if self.rooms.get(room.room_id) is room:
            del self.rooms[room.room_id]

    def receive_in(self, client: Client, room: Room) -> None:
        """``client`` receives what ``room`` gets here (besides its other rooms')."""
        room.add_member(client)
        receiving = client.receiving = client.receiving or {}
        receiving[room.room_id] = room

    def stop_receiving(self, client: Client, room: Optional[Room] = None) -> None:
        """``client`` no longer receives what ``room`` gets here (None: any room's)."""
        receiving = client.receiving
        if not receiving:
            return
        for gone in ([receiving.get(room.room_id)] if room is not None else list(receiving.values())):
            if gone is not None and (room is None or gone is room):
                gone.remove_member(client.client_id)
                del receiving[gone.room_id]
        if not receiving:
            client.receiving = None

    def deliver(self, room: Room, payload: bytes, exclude_id: str, now: float) -> int:
        """One encoded broadcast to this node's members but ``exclude_id``."""
        return self.core.deliver_one(room, payload, exclude_id, now)

    def deliver_batch(self, room: Room, messages: list[tuple[str, bytes]], now: float) -> list[int]:
        """Several encoded broadcasts, ``(sender ID, payload)`` in order, to
        this node's members, each to all but its sender, in one delivery
        each (:meth:`chatd.core.ChatCore.deliver_batch`)."""
        return self.core.deliver_batch(room, messages, now)
