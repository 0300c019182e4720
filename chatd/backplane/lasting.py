"""
Rooms that last on a cluster: PostgreSQL keeps what a persistent room is,
Redis its live state.

A persistent room lives in Redis as any room does (its members, its
channel, its recent history, its message counter), with two fields more
(``persistent``, ``owner_user``) and a set of moderator users; it stays in
Redis when its last member leaves.  Every change the rules decide on it is
applied in Redis as for any room, then written to the store, and answered
once the store has it.  A join that finds no room in Redis (after
``FLUSHALL``, or a Redis that lost its data) looks in the store and puts
the room back (``REVIVE``) with its roles, lists and last id, so that ids
go on above every stored one.  Memberships and read markers are the
store's alone: read and written there, and a ``read`` reaches the user's
other connections, on any node, as a direct notice.  docs/scaling.md says
what this costs.

The rules are :mod:`chatd.rooms.rules`', as on one process; the limits and
errors are :mod:`chatd.rooms.lasting`'s.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.logger import Logger

from chatd import codec
from chatd.backplane import lines, scripts
from chatd.backplane.redis_store import RedisRooms, as_json, stored_lists
from chatd.errors import ChatError, Unavailable
from chatd.rooms import many, rules
from chatd.rooms.lasting import MAX_MEMBERSHIPS, check_create, check_delete, check_read, stored_room
from chatd.rooms.state import Client, Room

Reply = dict[str, Any]

#: A row naming a room that another node may be deleting meanwhile is
#: written only while the room is kept: a row of a deleted room would fail
#: the whole group commit it is in.
_IF_KEPT = " WHERE EXISTS (SELECT 1 FROM rooms WHERE room_id = ?) ON CONFLICT DO NOTHING"


class ClusterLasting:
    """A cluster node's persistent rooms, in the store and in Redis."""

    _log = Logger()

    def __init__(
        self, durable: Optional[Any], rooms: RedisRooms, calls: Any, shards: Any, core: Any,
        persistent_rooms: str = "users",
    ) -> None:
        self.durable = durable  # a chatd.storage.durable.Durable on PostgreSQL, or None: nothing lasts
        self.rooms = rooms
        self.calls = calls
        self.shards = shards
        self.core = core
        self.persistent_rooms = persistent_rooms

    def _write(self, statement: str, *parameters: Any) -> None:
        assert self.durable is not None
        self.durable.write(statement, *parameters)

    async def kept(self) -> None:
        """Once everything asked of the store so far is committed."""
        if self.durable is not None:
            await self.durable.synced()

    # -- create, join, leave -------------------------------------------------------

    async def check_create(self, client: Client) -> None:
        """Why ``client`` may not create a persistent room, as a ChatError."""
        owned = 0
        if self.durable is not None and client.user is not None:
            ((count,),) = await self.durable.query("SELECT COUNT(*) FROM rooms WHERE owner = ?", client.user)
            owned = int(count)
        check_create(self.durable is not None, client, self.persistent_rooms, owned)

    async def created(self, room: Room, client: Client) -> None:
        """A persistent room just created in Redis: kept, with its creator's
        invitation and membership."""
        self._write(
            "INSERT INTO rooms (room_id, name, created_at, created_by, seq, private, owner, last_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT DO NOTHING",
            room.room_id, room.name, room.created_at, room.created_by, room.seq, 1 if room.private else 0,
            client.user or "")
        for entry in rules.invited_at_creation(client, room.private):
            self._write("INSERT INTO room_lists (room_id, list, entry) SELECT ?, 'invited', ?" + _IF_KEPT,
                        room.room_id, entry, room.room_id)
        await self.joined(client, room)

    async def joined(self, client: Client, room: Room) -> None:
        """A signed-in client is in a persistent room: its user is a member
        (up to MAX_MEMBERSHIPS rooms)."""
        user = client.user
        if self.durable is None or user is None or not room.persistent:
            return
        ((count, member),) = await self.durable.query(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN room_id = ? THEN 1 ELSE 0 END), 0)"
            " FROM memberships WHERE user_name = ?", room.room_id, user)
        if int(member) or int(count) >= MAX_MEMBERSHIPS:
            return
        self._write("INSERT INTO memberships (room_id, user_name, last_read) SELECT ?, ?, 0" + _IF_KEPT,
                    room.room_id, user, room.room_id)

    async def left(self, client: Client, room: Room, look: bool = True) -> None:
        """``client`` left a persistent room (and Redis has it out): its user
        is no longer a member, unless another of its connections, on any
        node, is in it (``look`` False: Redis is away, this node's view)."""
        user = client.user
        if self.durable is None or user is None or not room.persistent:
            return
        room_id = room.room_id
        users: Optional[list[Optional[str]]] = None
        if look:
            try:
                found = lines.Members.decode(await self.calls.call(
                    self.shards.of(room_id), scripts.LOOK, "", "", as_json(lines.Members.reads(room_id))))
                users = [u for client_id, _, u in found.members if client_id != client.client_id]
            except Unavailable:
                pass  # Redis went away meanwhile: this node's view
        if users is None:
            users = [m.user for m in room.members.values() if m is not client]
        if user not in users:
            self._forget(user, room_id)

    def _forget(self, user: str, room_id: str) -> None:
        self._write("DELETE FROM memberships WHERE room_id = ? AND user_name = ?", room_id, user)

    def managed(self, view: Room, changes: rules.Changes, version: int) -> bool:
        """An owner's or a moderator's action applied in Redis to ``view``
        (the room as the rule read it, at ``version``): its lasting part
        written.  Whether anything was.

        Redis orders the decisions on a room (each is applied only at the
        version it read, and moves the version on), but two nodes' writes
        may commit in the other order.  So each writes the room's whole
        roles and lists as they are after it, over an older version only
        (``rooms.lists_v``): the newest decision's state stands, whatever
        order the commits land in."""
        if self.durable is None or not view.persistent:
            return False
        room_id = view.room_id
        if changes.ban or changes.unban or changes.invite or changes.uninvite or changes.op or changes.deop:
            self._write_lists(view, changes, version + 1)
        # Memberships: a removal is the same whenever it lands.
        removed_ids = set(changes.remove)
        gone = {view.members[m].user for m in removed_ids if m in view.members} - {None}
        staying = {m.user for client_id, m in view.members.items() if client_id not in removed_ids}
        users = {user for user in gone if user not in staying}
        users |= {key[2:] for key in changes.ban if key.startswith("u:")}
        for user in sorted(u for u in users if u is not None):
            self._forget(user, room_id)
        return True

    def _write_lists(self, view: Room, changes: rules.Changes, written: int) -> None:
        """The room's roles and lists as they are after ``changes``, written
        at version ``written`` over an older one only."""
        room_id = view.room_id
        banned = (set(view.banned or ()) - changes.unban) | changes.ban
        invited = (set(view.invited or ()) | changes.invite) - changes.uninvite
        moderators = set(view.moderator_users or ())
        for subject, op in ((changes.op, True), (changes.deop, False)):
            member = view.members.get(subject) if subject is not None else None
            if member is not None and member.user is not None:
                (moderators.add if op else moderators.discard)(member.user)
        at = " EXISTS (SELECT 1 FROM rooms WHERE room_id = ? AND lists_v = ?)"  # this write's version stands
        self._write("UPDATE rooms SET lists_v = ? WHERE room_id = ? AND lists_v < ?", written, room_id, written)
        self._write("DELETE FROM room_lists WHERE room_id = ? AND" + at, room_id, room_id, written)
        self._write("DELETE FROM room_moderators WHERE room_id = ? AND" + at, room_id, room_id, written)
        for which, entries in (("banned", banned), ("invited", invited)):
            for entry in sorted(entries):
                self._write("INSERT INTO room_lists (room_id, list, entry) SELECT ?, ?, ? WHERE" + at
                            + " ON CONFLICT DO NOTHING", room_id, which, entry, room_id, written)
        for user in sorted(moderators):
            self._write("INSERT INTO room_moderators (room_id, user_name) SELECT ?, ? WHERE" + at
                        + " ON CONFLICT DO NOTHING", room_id, user, room_id, written)

    async def revive(self, room_id: str) -> bool:
        """A room Redis does not have: put back from the store if it keeps
        it; whether it does."""
        if self.durable is None:
            return False
        stored = await self.durable.rooms("room_id = ?", room_id)
        if not stored:
            return False
        await self.rooms.revive(stored[0])
        # A delete on another node takes the room out of the store first,
        # then out of Redis: one that went meanwhile goes again here.
        if not await self.durable.query("SELECT 1 FROM rooms WHERE room_id = ?", room_id):
            await self._drop(room_id)
            return False
        return True

    async def _drop(self, room_id: str) -> None:
        """The room out of Redis: its members here and elsewhere are told (``x``)."""
        await self.calls.call(self.shards.of(room_id), scripts.CHANGE, self.shards.node, "", "[]",
                              as_json([["publish", room_id, "x"], ["drop", room_id]]))

    async def restore(self, shard: Any, room_ids: list[str]) -> None:
        """After Redis lost its data and a resync put these rooms back from
        what the node knew: their roles and lists, from the store."""
        if self.durable is None or not room_ids:
            return
        marks = ", ".join("?" for _ in room_ids)
        for stored in await self.durable.rooms(f"room_id IN ({marks})", *room_ids):
            # Its lists, and a version above the one they were stored at
            # (the resync made the room anew, at version 0).
            key = f"room:{stored.room_id}"
            for _ in range(3):
                (read,) = await self.calls.call(shard, scripts.LOOK, "", "", as_json([["HGET", key, "v"]]))
                seen = lines.text(read)
                changes = [*stored_lists(stored), ["hset", key, "v", str(max(int(seen or 0), stored.lists_v))]]
                outcome = await self.calls.call(shard, scripts.CHANGE, self.shards.node, "",
                                                as_json([["HGET", key, "seq", "*"], ["HGET", key, "v", seen]]),
                                                as_json(changes))
                if lines.text(outcome) != "stale":
                    break
        self._log.info("Restored the roles and lists of {rooms} persistent rooms from the store",
                       rooms=len(room_ids), event="store_restored")

    # -- reading the store -------------------------------------------------------------

    def older(self, room: Room, found: list[Reply], limit: int, before: Optional[int]) -> Any:
        """A persistent room's history page: what Redis keeps, and before it
        what the store does (a list, or a Deferred of one)."""
        durable = self.durable
        oldest = found[0]["id"] if found else (before if before is not None else room.last_id + 1)
        if durable is None or not room.persistent or len(found) >= limit or oldest <= 1:
            return found
        return durable.history(room.room_id, limit - len(found), oldest).addCallback(lambda more: more + found)

    async def recovered(self, room: Room, since: int, missed: list[Reply], reply: Reply) -> Reply:
        """A join ``since`` a message older than Redis keeps: the reply with
        what the store has after it."""
        last_id = room.last_id
        if (self.durable is not None and room.persistent and since < last_id
                and not (missed and missed[0]["id"] == since + 1)):
            found = await self.durable.history(room.room_id, max(1, self.core.limits.history_size), None, since)
            missed = [m for m in found if m["id"] <= last_id]
        reply["recovered"], reply["messages"] = codec.recovery(missed, last_id, since)
        return reply

    async def listed(
        self, client: Optional[Client], after: int, limit: int, everything: bool = False,
    ) -> list[tuple[int, Reply]]:
        """The first ``limit`` + 1 persistent rooms the store keeps after the
        cursor that ``client`` sees: (seq, its entry in a list, as empty)."""
        out: list[tuple[int, Reply]] = []
        if self.durable is None:
            return out
        while True:
            rows = await self.durable.rooms("seq > ?", after, limit=limit + 1)
            for stored in rows:
                if rules.visible(stored_room(stored), client, everything):
                    out.append((stored.seq, codec.room_entry(
                        stored.room_id, stored.name, 0, stored.created_at, stored.private, True)))
                    if len(out) > limit:
                        return out
            if len(rows) <= limit:
                return out
            after = rows[-1].seq

    async def rooms_of(self, client: Client) -> Reply:
        """The ``rooms`` action: the user's persistent rooms, and the connection's rooms."""
        user = client.user
        stored_rooms: list[Any] = []
        markers: dict[str, int] = {}
        if self.durable is not None and user is not None:
            stored_rooms = await self.durable.rooms(
                "room_id IN (SELECT room_id FROM memberships WHERE user_name = ?)", user)
            markers = {room_id: int(last_read) for room_id, last_read in await self.durable.query(
                "SELECT room_id, last_read FROM memberships WHERE user_name = ?", user)}
        entries: list[Reply] = []
        mine = many.rooms_of(client)
        for room in mine:
            entries.append({
                "room_id": room.room_id, "name": room.name, "private": room.private,
                "persistent": room.persistent, "role": await self._role_in(client, room),
                "last_id": room.last_id, "last_read": markers.get(room.room_id, room.last_id),
                "unread": 0})
        for stored in stored_rooms:
            if any(stored.room_id == room.room_id for room in mine):
                continue
            entries.append({
                "room_id": stored.room_id, "name": stored.name, "private": stored.private, "persistent": True,
                "role": stored_room(stored).user_role(user or ""), "last_id": stored.last_id,
                "last_read": markers.get(stored.room_id, 0), "unread": 0})
        counted = {e["room_id"]: e["last_read"] for e in entries if e["persistent"] and e["last_read"] < e["last_id"]}
        if self.durable is not None and user is not None and counted:
            unread = await self.durable.unread(user, counted)
            for entry in entries:
                entry["unread"] = unread.get(entry["room_id"], 0)
        return {"status": "success", "rooms": entries}

    async def _role_in(self, client: Client, room: Room) -> str:
        """The client's role in its room, as Redis has it (its owner picked
        first if one is due: an ownerless room's first member holds it);
        this node's view while Redis is away."""
        shard = self.shards.of(room.room_id)
        if shard.available:
            try:
                listed = await self.rooms.members(client, room, shard)
            except ChatError:
                pass
            else:
                for member in listed["members"]:
                    if member["client_id"] == client.client_id:
                        return str(member["role"])
        return room.role(client.client_id)

    async def _stored(self, client: Client, room_id: str) -> tuple[Optional[Room], bool, Optional[int]]:
        """The room as the store keeps it (else the client's room, if it is
        that one; None: neither), whether the client is in it, and the
        user's read marker there (None: no member)."""
        current = next((room for room in many.rooms_of(client) if room.room_id == room_id), None)
        stored = await self.durable.rooms("room_id = ?", room_id) if self.durable is not None else []
        marker = None
        if self.durable is not None and client.user is not None and stored:
            rows = await self.durable.query(
                "SELECT last_read FROM memberships WHERE room_id = ? AND user_name = ?", room_id, client.user)
            marker = int(rows[0][0]) if rows else None
        if not stored:
            return current, current is not None, None
        room = stored_room(stored[0])
        if current is not None:
            room.last_id = max(room.last_id, current.last_id)  # what Redis numbered, not yet stored
        return room, current is not None, marker

    async def read(self, client: Client, room_id: str, message_id: int) -> Reply:
        """The ``read`` action: move the user's marker in a persistent room forward."""
        room, in_it, marker = await self._stored(client, room_id)
        check_read(client, room_id, room, in_it, marker is not None, message_id, room.last_id if room else 0)
        user = client.user
        assert user is not None and marker is not None
        if message_id > marker:
            marker = message_id
            self._write("UPDATE memberships SET last_read = ? WHERE room_id = ? AND user_name = ? AND last_read < ?",
                        marker, room_id, user, marker)
            await self.kept()
            # The user's other connections, on any node, hear of it.
            shard = self.shards.serving(user)
            if shard is not None:
                notice = codec.encode(codec.read_up_to(room_id, marker))
                self.calls.background(self.calls.run(shard, scripts.DIRECT, client.client_id, user, notice),
                                      "telling a user's connections of a read marker")
        return {"status": "success", "message": f"Read up to {marker}"}

    async def delete(self, client: Client, room_id: str) -> Reply:
        """The ``delete`` action: a persistent room's owner removes it; every
        member, on every node, hears of it and is out."""
        room, in_it, marker = await self._stored(client, room_id)
        check_delete(client, room_id, room, in_it, marker is not None)
        assert room is not None and self.durable is not None
        if not self.shards.of(room_id).available:
            raise Unavailable()
        # Out of the store first, then out of Redis: a node putting it back
        # into Redis meanwhile (revive) finds it gone from the store after.
        self.durable.delete_room(room_id)
        await self.kept()
        await self._drop(room_id)
        self.core.events.room_deleted(room)
        return {"status": "success", "message": f"Deleted room '{room.name}'"}
