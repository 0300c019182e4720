"""
The rooms one connection is in: its *current* room (``Client.room``, the
seed's one room, which every action without a ``"room_id"`` is for) and,
for a client that asked to keep rooms (``"keep": true``), the others it is
in (``Client.others``, in the order entered).  Pure bookkeeping of the
client's side; a room's own side (its members) is ``Room.add_member`` and
``remove_member``, done by whoever enters and leaves.
"""

from __future__ import annotations

from typing import Optional

from chatd.errors import ChatError, NotInRoom
from chatd.rooms.state import Client, Room


def rooms_of(client: Client) -> list[Room]:
    """Every room the client is in, the current one first."""
    rooms = [client.room] if client.room is not None else []
    if client.others:
        rooms += client.others.values()
    return rooms


def count(client: Client) -> int:
    return (client.room is not None) + (len(client.others) if client.others else 0)


def is_in(client: Client, room: Room) -> bool:
    """Whether the client is in ``room`` (current or kept)."""
    return client.room is room or (client.others is not None and client.others.get(room.room_id) is room)


def target(client: Client, room_id: Optional[str]) -> Room:
    """The room an action is for: the one named (``"room_id"``), which the
    client must be in, or the current one."""
    room = client.room
    if room_id is None:
        if room is None:
            raise NotInRoom("You must join a room first")
        return room
    if room is not None and room.room_id == room_id:
        return room
    kept = client.others.get(room_id) if client.others else None
    if kept is None:
        # The same words for a private room the client cannot see: nothing leaks.
        raise NotInRoom(f"You are not in room {room_id}")
    return kept


def too_many(limit: int) -> str:
    return f"You are in too many rooms (limit {limit})"


def check_keep(client: Client, limit: int) -> None:
    """Whether the client may enter one more room, keeping its others."""
    if count(client) >= limit:
        raise ChatError(too_many(limit))


def keep_current(client: Client) -> None:
    """The current room becomes one of the kept ones (another is entered)."""
    room = client.room
    if room is not None:
        others = client.others = client.others or {}
        others[room.room_id] = room
        client.room = None


def make_current(client: Client, room: Room) -> None:
    """``room``, entered or kept already, becomes the current one; the
    current one, if another, is kept."""
    current, others = client.room, client.others
    if others is not None:
        others.pop(room.room_id, None)
    if current is not None and current is not room:
        others = client.others = others if others is not None else {}
        others[current.room_id] = current
    if others is not None and not others:
        client.others = None
    client.room = room


def drop(client: Client, room: Room) -> None:
    """The client is no longer in ``room``: if it was the current one, the
    most recently entered of the others becomes current (none if none)."""
    others = client.others
    if client.room is room:
        client.room = None
        if others:
            client.room = others.pop(next(reversed(others)))
    elif others is not None:
        others.pop(room.room_id, None)
    if others is not None and not others:
        client.others = None
