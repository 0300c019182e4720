"""
``sync``: one round trip that puts a (re)connected client back where it was.

The client names the rooms it was in and the last message it saw in each
(``since``); the connection enters those it may still join and the user's
lasting rooms, keeping every one (as ``join`` with ``keep``), and the reply
says, room by room, where the client stands: its role, the last message,
the user's read marker, how many are unread, and what it missed.  Free of
I/O: the lasting rooms' missed messages and unread counts come from the
store, through the core's Deferreds.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from chatd.errors import ChatError
from chatd.rooms import many
from chatd.rooms.lasting import MaybeLater, Reply
from chatd.rooms.rules import join_refusal, name_holders
from chatd.rooms.state import Client, Room, tag
from chatd.rooms.store import Enter, decide, settled


def wanted(since: dict[str, int], markers: dict[str, int], mine: list[str]) -> list[str]:
    """The rooms a sync is about, in the order of its reply: those named,
    then the user's lasting ones, then the others the connection is in."""
    order = list(since) + [room_id for room_id in markers if room_id not in since]
    return order + [room_id for room_id in mine if room_id not in since and room_id not in markers]


def unmarked(last_id: int, asked: Optional[int]) -> tuple[int, int]:
    """``last_read`` and ``unread`` in a room with no read marker kept (a
    guest's, one that does not last): read up to where the client says it
    saw (all of it, if it says nothing)."""
    last_read = last_id if asked is None else min(asked, last_id)
    return last_read, last_id - last_read


class CatchUp:
    """The ``sync`` action of a chat core."""

    rooms: dict[str, Room]
    memberships: dict[str, dict[str, int]]
    limits: Any
    durable: Any
    _joined: Callable[[Room, Optional[int]], MaybeLater]
    charge_commands: Callable[[Client, int, float], None]

    def sync(self, client: Client, since: dict[str, int], now: float) -> MaybeLater:
        markers = dict(self.memberships.get(client.user, {})) if client.user is not None else {}
        tag(client)  # its broadcasts name their rooms from now on
        current = client.room
        before = set(map(id, many.rooms_of(client)))
        entered: list[Room] = []
        skipped: list[Reply] = []
        for room_id in wanted(since, markers, [room.room_id for room in many.rooms_of(client)]):
            room = self.rooms.get(room_id)
            try:
                entered.append(self._enter(client, room_id, room, now))
            except ChatError as refused:
                skipped.append({"room_id": room_id, "message": str(refused)})
        # The current room stays current; a client in none has the first it named.
        if current is not None:
            many.make_current(client, current)
        elif entered:
            many.make_current(client, entered[0])
        # Each room entered costs what a join does (the sync itself paid for one).
        self.charge_commands(client, sum(1 for room in entered if id(room) not in before) - 1, now)
        entries = [(room, self._joined(room, since.get(room.room_id))) for room in entered]
        return self._synced(client, entries, markers, since, skipped)

    def _enter(self, client: Client, room_id: str, room: Optional[Room], now: float) -> Room:
        """``room`` entered (kept if the client is in it already), or the
        reason it is not, as a ChatError."""
        if room is not None and many.is_in(client, room):
            return room
        limit = self.limits.rooms_per_connection
        if many.count(client) >= limit:
            raise ChatError(many.too_many(limit))
        settled(decide(
            self, room_id, client, lambda view: join_refusal(view, client),  # type: ignore[arg-type]
            lambda view: Enter(None, name_holders(view, client), now, True)))
        return self.rooms[room_id]

    def _synced(
        self, client: Client, entries: list[tuple[Room, MaybeLater]], markers: dict[str, int],
        since: dict[str, int], skipped: list[Reply],
    ) -> MaybeLater:
        """The reply, once every room's missed messages and the lasting
        rooms' unread counts are known."""
        counted = {room.room_id: markers[room.room_id] for room, _ in entries
                   if room.room_id in markers and markers[room.room_id] < room.last_id}
        unread: MaybeLater = {}
        if counted and self.durable is not None and client.user is not None:
            unread = self.durable.unread(client.user, counted)
        waits = [reply for _, reply in entries] + [unread]
        return _when_all(waits, lambda done: _sync_reply(client, entries, done[:-1], done[-1], markers, since,
                                                         skipped))


def _when_all(values: list[Any], then: Callable[[list[Any]], Reply]) -> MaybeLater:
    """``then`` of ``values`` once every one that is a Deferred has fired, in
    turn (the first failure is the answer's); at once if none is."""
    results = list(values)
    later = [i for i, value in enumerate(results) if hasattr(value, "addCallback")]

    def step(k: int) -> MaybeLater:
        if k == len(later):
            return then(results)
        i = later[k]

        def got(value: Any) -> MaybeLater:
            results[i] = value
            return step(k + 1)

        chained: MaybeLater = results[i].addCallback(got)
        return chained

    return step(0)


def _sync_reply(
    client: Client, entries: list[tuple[Room, MaybeLater]], joined: list[Any], unread: Any,
    markers: dict[str, int], since: dict[str, int], skipped: list[Reply],
) -> Reply:
    rooms = []
    for (room, _), reply in zip(entries, joined, strict=True):
        room_id = room.room_id
        asked = since.get(room_id)
        if room_id in markers:
            last_read = min(markers[room_id], room.last_id)
            count = unread.get(room_id, 0) if last_read < room.last_id else 0
        else:
            last_read, count = unmarked(room.last_id, asked)
        entry: Reply = {
            "room_id": room_id, "name": room.name, "private": room.private, "persistent": room.persistent,
            "role": room.role(client.client_id), "last_id": room.last_id, "last_read": last_read,
            "unread": count, "current": room is client.room}
        if asked is not None:
            entry["recovered"], entry["messages"] = reply["recovered"], reply["messages"]
        rooms.append(entry)
    answer: Reply = {"status": "success", "rooms": rooms}
    if skipped:
        answer["skipped"] = skipped
    return answer
