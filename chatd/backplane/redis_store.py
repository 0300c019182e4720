"""
The rooms of a cluster in Redis, as the room rules read and change them.

:class:`RedisRooms` is the Redis store of the room state: it reads a room
as :mod:`chatd.rooms.rules` reads one (a :class:`~chatd.backplane.facts.Facts`,
assumed first, then read with the ``LOOK`` script), decides by those
rules, and has the scripts apply the decision only while its guards hold,
else reads and decides again.  One process's store is its
:class:`~chatd.core.ChatCore`, whose rooms answer the same rules from
memory; docs/development.md says how another store fits beside them.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional, TypeVar

from twisted.internet.defer import Deferred

from chatd import codec
from chatd.backplane import facts, lines, scripts
from chatd.errors import NotInRoom, Unavailable
from chatd.names import fold
from chatd.rooms import many, rules
from chatd.rooms.rules import RoomView
from chatd.rooms.state import Client, Room, member_entry, names_of
from chatd.rooms.store import DECISIONS as _DECISIONS
from chatd.rooms.store import Become, Change, Enter, Rename, decide

Reply = dict[str, Any]
T = TypeVar("T")


class RedisRooms:
    """Room decisions of one node, applied in Redis under guards."""

    def __init__(
        self,
        shards: Any,
        call: Callable[..., "Deferred[Any]"],
        check_reader: Callable[[Any, Client, Room], None],
    ) -> None:
        self.shards = shards
        self.node = shards.node
        self._call = call  # runs a script on a shard in step, else Unavailable
        # Raises if Redis refused a read of the reader's room (it is no
        # member there), after the node has put its view right.
        self._check_reader = check_reader

    def leaving(self, client: Client, keep: bool, shard: Any) -> str:
        """Which of the client's rooms on ``shard`` a join or create there
        leaves first: none (``keep``); its current one, if there, when it
        keeps others; all there ('*') when it is in one room, so that a
        membership Redis holds from a join whose answer was lost goes too."""
        if keep:
            return ""
        current = client.room
        if not client.others:
            return "*"
        return current.room_id if current is not None and self.shards.of(current.room_id) is shard else ""

    def create(
        self, shard: Any, client: Client, room: Room, stride: int, position: int, keep: bool = False,
    ) -> "Deferred[Any]":
        """Create ``room`` (its name, creator and privacy set) with its
        creator in it, owner, and invited if it is private."""
        room_id = room.room_id
        fields = room_fields(room)
        changes: list[list[Any]] = []
        if room.owner_user is None:
            changes.append(["sadd", room_id, f"owner:{room_id}", client.client_id])
        invited = rules.invited_at_creation(client, room.private)
        if invited:
            changes.append(["sadd", room_id, f"invited:{room_id}", *invited])
        return self._call(
            shard, scripts.CREATE, self.node, client.client_id, room_id, *facts.identity(client), stride, position,
            as_json(fields), as_json(room_sets(room_id, room.persistent)), as_json(changes),
            self.leaving(client, keep, shard))

    def revive(self, stored: Any) -> "Deferred[Any]":
        """Put a persistent room the store keeps (a
        :class:`~chatd.storage.durable.StoredRoom`) back into Redis, if
        Redis does not have it: as it was, with its roles and lists, and its
        message counter at the last stored id."""
        room_id = stored.room_id
        view = Room(room_id, stored.name, stored.created_at, stored.created_by, stored.seq)
        view.private, view.persistent, view.owner_user = stored.private, True, stored.owner or None
        changes = stored_lists(stored)
        # Its version goes on from the one its lists were stored at.
        fields = [*room_fields(view), "v", str(stored.lists_v)]
        return self._call(
            self.shards.of(room_id), scripts.REVIVE, room_id, str(stored.seq), str(stored.last_id),
            as_json(fields), as_json(room_sets(room_id, True)), as_json(changes))

    async def enter(self, client: Client, room_id: str, since: Optional[int], keep: bool = False) -> lines.Entered:
        """The join, decided by :func:`chatd.rooms.rules.join_refusal`."""
        entered: lines.Entered = await decide(
            self, room_id, client, lambda view: rules.join_refusal(view, client),
            lambda view: Enter(since, rules.name_holders(view, client), keep=keep), client.nick, client.user)
        return entered

    async def listed(
        self, shard: Any, after: int, limit: int, client: Optional[Client], everything: bool = False,
    ) -> list[lines.ListedRoom]:
        """A shard's first ``limit`` + 1 rooms after ``after`` that the client
        sees (:func:`chatd.rooms.rules.visible`)."""
        keys = names_of(client.client_id, client.user) if client is not None else []
        mine = client.room.room_id if client is not None and client.room is not None else None
        found: list[lines.ListedRoom] = []
        while True:
            rows = lines.ListedRoom.decode_all(await self._call(
                shard, scripts.LIST, after, limit + 1, "invited:", as_json(keys), _LIST_FIELDS))
            for row in rows:
                view = facts.Facts(row.room_id, row.fields[2] == "1", {
                    ("invited", key): flag for key, flag in zip(keys, row.flags, strict=True)})
                if rules.visible(view, client, everything or row.room_id == mine):
                    found.append(row)
                    if len(found) > limit:
                        return found
            if len(rows) <= limit:
                return found
            after = rows[-1].seq

    async def members(self, client: Client, room: Room, shard: Any) -> Reply:
        room_id = room.room_id
        for _ in range(_DECISIONS):
            answers = await self._call(
                shard, scripts.LOOK, room_id, client.client_id, as_json(lines.Members.reads(room_id)))
            self._check_reader(answers, client, room)
            found = lines.Members.decode(answers)
            if found.owner is None and found.members:
                await self.succeed(room_id, shard)  # its owner has gone: who owns it now, first
                continue
            view = members_view(room_id, found)
            reply: Reply = {"status": "success", "room_id": room_id, "members": [
                member_entry(client_id, nick, user, view.role(client_id)) for client_id, nick, user in found.members]}
            if found.persistent:
                reply["persistent"] = True
            return reply
        raise Unavailable()

    async def manage(
        self, client: Client, room: Room, shard: Any, command: codec.Manage,
    ) -> tuple[rules.Changes, Room, int]:
        """An owner's or a moderator's action, applied: what changed, the
        room as the rule read it, and the room's version that it read."""
        room_id = room.room_id
        for _ in range(_DECISIONS):
            answers = await self._call(
                shard, scripts.LOOK, room_id, client.client_id,
                as_json(lines.RoomState.reads(room_id, command.client_id)))
            self._check_reader(answers, client, room)
            state = lines.RoomState.decode(room_id, answers)
            if state.members.owner is None:
                await self.succeed(room_id, shard)
                continue
            view, actor = _room_view(state, client)
            changes = rules.manage(view, actor, command, state.target_user, state.target_room)
            guards = [["HGET", f"room:{room_id}", "v", state.version],
                      ["SISMEMBER", f"client-rooms:{client.client_id}", room_id, "1"]]
            applied = lines.text(await self._call(
                shard, scripts.CHANGE, self.node, client.client_id, as_json(guards),
                as_json(_manage_changes(view, client, command, changes))))
            if applied == "ok":
                return changes, view, int(state.version)
            if applied != "stale":
                raise Unavailable()
        raise Unavailable()  # the room kept changing under the decision

    async def check_nick(self, client: Client, room: Room, nick: str) -> None:
        """Why ``nick`` is not free in ``room`` for ``client`` (a ChatError), as read now."""
        view = await self.look(room.room_id, client, nick, client.user, True)
        refused = rules.nick_refusal(view, client, nick)
        if refused is not None:
            raise refused

    async def check_user(self, as_user: Client, room: Room) -> None:
        """Why ``room`` does not admit ``as_user``'s user (a ChatError), as read now."""
        view = await self.look(room.room_id, as_user, as_user.nick, as_user.user, False)
        refused = rules.auth_refusal(view, as_user.user or "")
        if refused is not None:
            raise refused

    async def rename(self, client: Client, room: Room, nick: str) -> None:
        """The nick taken in the client's room, as :func:`chatd.rooms.rules.nick_refusal` allows."""
        await decide(self, room.room_id, client, lambda view: rules.nick_refusal(view, client, nick),
                     lambda view: Rename(nick), nick, client.user, reader=True)

    async def become(self, as_user: Client, room: Room) -> None:
        """The client, in ``room``, becomes ``as_user.user`` as
        :func:`chatd.rooms.rules.auth_refusal` allows; whoever has its
        name as a nick there loses it (:func:`chatd.rooms.rules.name_holders`)."""
        user = as_user.user or ""
        await decide(self, room.room_id, as_user, lambda view: rules.auth_refusal(view, user),
                     lambda view: Become(user, rules.name_holders(view, as_user)), as_user.nick, user)

    # -- the Redis store of the rooms (chatd.rooms.store.RoomStore) -----------

    def assume(self, room_id: str) -> tuple[RoomView, bool]:
        """What most rooms are: public, nobody of the client's listed, its
        names unclaimed (guarded, as anything a rule reads)."""
        return facts.Facts(room_id), False

    async def look(
        self, room_id: str, client: Client, nick: Optional[str], user: Optional[str], reader: bool,
    ) -> RoomView:
        probes = as_json(facts.Facts.probes(room_id, client, nick, user))
        shard = self.shards.of(room_id)
        if not reader:
            answers = await self._call(shard, scripts.LOOK, "", "", probes)
        else:
            answers = await self._call(shard, scripts.LOOK, room_id, client.client_id, probes)
            room = next((r for r in many.rooms_of(client) if r.room_id == room_id), None)
            if room is None:
                raise NotInRoom("You must join a room first")
            self._check_reader(answers, client, room)
        return facts.Facts.read(room_id, client, nick, user, answers)

    async def apply(self, room_id: str, client: Client, view: RoomView, change: Change) -> Optional[Any]:
        assert isinstance(view, facts.Facts)
        shard, client_id = self.shards.of(room_id), client.client_id
        if isinstance(change, Enter):
            takes = _name_takes(view, change.takes, room_id)
            answer = await self._call(
                shard, scripts.ENTER, self.node, client_id, room_id,
                -1 if change.since is None else change.since, *facts.identity(client), as_json(view.guards),
                as_json(takes), _ROOM_FIELDS, as_json([["SMEMBERS", f"owner:{room_id}"]]),
                self.leaving(client, change.keep, shard))
            entered = lines.Entered.decode(answer)
            return None if entered.outcome == "stale" else entered
        if isinstance(change, Rename):
            nick = change.nick
            changes = [["claim", room_id, client_id, fold(nick)],
                       ["hset", f"client:{client_id}", "who", facts.who(nick, client.user)],
                       ["publish", room_id, facts.event_line("nick", client_id, nick, client.user)]]
        else:
            user = change.user
            changes = [["identity", client_id, facts.who(client.nick, user), fold(user), user],
                       *_name_takes(view, change.takes, room_id)]
        outcome = lines.text(await self._call(
            shard, scripts.CHANGE, self.node, client_id,
            as_json([*view.guards, ["SISMEMBER", f"client-rooms:{client_id}", room_id, "1"]]), as_json(changes)))
        if outcome == "stale":
            return None
        if outcome != "ok":
            raise Unavailable()
        return outcome

    async def succeed(self, room_id: str, shard: Any) -> None:
        """A room whose owner has gone gets the one :func:`chatd.rooms.rules.successor`
        picks; every node with members in it may try, and one wins."""
        for _ in range(_DECISIONS):
            found = lines.Members.decode(
                await self._call(shard, scripts.LOOK, "", "", as_json(lines.Members.reads(room_id))))
            if not found.members or found.owner is not None:
                return
            members: dict[str, Client] = {}
            for client_id, nick, user in found.members:
                member = members[client_id] = Client(client_id, NO_SINK)
                member.nick, member.user = nick, user
            heir = rules.successor(members, set(found.moderators))
            owner_key = f"owner:{room_id}"
            guards = [["SCARD", owner_key, str(len(found.owners))],
                      *(["SISMEMBER", owner_key, owner, "1"] for owner in sorted(found.owners)),
                      ["ZSCORE", f"members:{room_id}", heir.client_id, "*"]]
            changes = [["sadd", room_id, owner_key, heir.client_id], ["bump", room_id],
                       ["publish", room_id, facts.event_line("owner", heir.client_id, heir.nick, heir.user)]]
            outcome = lines.text(await self._call(
                shard, scripts.CHANGE, self.node, "", as_json(guards), as_json(changes)))
            if outcome != "stale":
                return


class NoSink:
    """A member of a room as Redis has it: nothing is delivered to it here."""

    def deliver(self, frame: Any) -> None:
        raise NotImplementedError

    def close(self, code: int, reason: str) -> None:
        raise NotImplementedError


NO_SINK = NoSink()


def members_view(room_id: str, found: lines.Members) -> Room:
    """A room's members and roles as read, as the rules read a room."""
    view = Room(room_id, "", "", "", 0)
    view.owner, view.moderators = found.owner or "", set(found.moderators) or None
    view.persistent, view.owner_user = found.persistent, found.owner_user
    view.moderator_users = set(found.moderator_users) or None
    for client_id, nick, user in found.members:
        member = Client(client_id, NO_SINK)
        member.nick, member.user = nick, user
        view.members[client_id] = member
    return view


def _room_view(state: lines.RoomState, client: Client) -> tuple[Room, Client]:
    """A room as Redis has it, as the rules read a room, and the acting
    client as a member of it."""
    view = members_view(state.room_id, state.members)
    view.name, view.private = state.name, state.private
    view.invited = set(state.invited) or None
    view.banned = set(state.banned) or None
    return view, view.members.get(client.client_id) or Client(client.client_id, NO_SINK)


def _manage_changes(view: Room, actor: Client, command: codec.Manage, changes: rules.Changes) -> list[list[Any]]:
    """The changes of a room action, as the CHANGE script applies them."""
    room_id = view.room_id
    out: list[list[Any]] = []
    for keys, kind, which in ((changes.unban, "srem", "banned"), (changes.ban, "sadd", "banned"),
                              (changes.invite, "sadd", "invited"), (changes.uninvite, "srem", "invited")):
        if keys:
            key = f"{which}:{room_id}"
            out.append(["sadd", room_id, key, *sorted(keys)] if kind == "sadd" else ["srem", key, *sorted(keys)])
    for subject, kind in ((changes.op, "op"), (changes.deop, "deop")):
        if subject is not None:
            member = view.members.get(subject)
            nick, user = (member.nick, member.user) if member is not None else (None, None)
            # In a persistent room a user is a moderator, not a connection.
            mods, key = (f"umods:{room_id}", user) if view.persistent and user else (f"mods:{room_id}", subject)
            out.append(["sadd", room_id, mods, key] if kind == "op" else ["srem", mods, key])
            out.append(["publish", room_id, facts.event_line(kind, subject, nick, user)])
    for member_id in changes.remove:
        out.append(["publish", room_id, f"k{member_id} {actor.client_id} {command.reason}"])
        out.append(["leave", member_id, room_id])
    out.append(["bump", room_id])
    return out


def _name_takes(view: facts.Facts, holders: list[str], room_id: str) -> list[list[Any]]:
    """The changes by which the members whose nick reads as a user's name
    lose it (:func:`chatd.rooms.rules.name_holders`)."""
    out: list[list[Any]] = []
    for holder in holders:
        _, user = view.holder_who(holder)
        out += [["claim", room_id, holder, ""], ["hset", f"client:{holder}", "who", facts.who(None, user)],
                ["publish", room_id, facts.event_line("nick", holder, None, user)]]
    return out


def room_sets(room_id: str, persistent: bool = False) -> list[str]:
    """A room's sets and their kinds, as the scripts keep them: its owner
    (one member, replaced when it leaves), its moderators (members), who is
    invited and who is banned (the room's); a persistent room's moderator
    users too (the room's)."""
    sets = [f"owner:{room_id}", "h", f"mods:{room_id}", "m", f"invited:{room_id}", "r", f"banned:{room_id}", "r"]
    if persistent:
        sets += [f"umods:{room_id}", "r"]
    return sets


def stored_lists(stored: Any) -> list[list[Any]]:
    """A stored persistent room's moderator users, invitations and bans,
    as changes that add them to its sets in Redis."""
    room_id = stored.room_id
    return [["sadd", room_id, f"{which}:{room_id}", *sorted(entries)]
            for which, entries in (("umods", stored.moderators), ("invited", stored.invited),
                                   ("banned", stored.banned)) if entries]


def room_fields(room: Room) -> list[str]:
    """A room's fields as Redis keeps them (CREATE, REVIVE, RESYNC)."""
    fields = ["name", room.name, "created_at", room.created_at, "created_by", room.created_by,
              "private", "1" if room.private else "0"]
    if room.persistent:
        fields += ["persistent", "1", "owner_user", room.owner_user or ""]
    return fields


def as_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


#: What a join answers of the room, and what the list shows of each.
_ROOM_FIELDS = as_json(["name", "created_at", "created_by", "seq", "private", "persistent", "owner_user"])
_LIST_FIELDS = as_json(["name", "created_at", "private", "persistent"])


#: The set of a room that holds each role.
_ROLE_SETS = {"owner": "owner", "moderator": "mods"}


def renamed(client_id: str, nick: Optional[str], user: Optional[str]) -> str:
    """A client's new nick (None: none) as every shard records it."""
    return as_json([["claim", "", client_id, fold(nick) if nick else ""],
                    ["hset", f"client:{client_id}", "who", facts.who(nick, user)]])


def identified(client_id: str, nick: Optional[str], user: str) -> str:
    """A client's user as every shard records it."""
    return as_json([["identity", client_id, facts.who(nick, user), fold(user), user]])


def resync_state(clients: list[tuple[Client, list[Room]]]) -> str:
    """What RESYNC takes: a node's clients, each with its rooms on the
    shard, and the rooms: what the node knows of who owns and
    moderates each; a private room's members are invited (other
    invitations and bans are lost with Redis's data)."""
    records: list[Any] = []
    rooms: dict[str, dict[str, Any]] = {}
    sets: list[list[str]] = []
    for client, its_rooms in clients:
        client_id = client.client_id
        records.append([client_id, [room.room_id for room in its_rooms], *facts.identity(client)])
        for room in its_rooms:
            _resync_room(client, room, rooms, sets)
    return as_json({"clients": records, "rooms": rooms, "sets": sets})


def _resync_room(client: Client, room: Room, rooms: dict[str, dict[str, Any]], sets: list[list[str]]) -> None:
    """What RESYNC keeps of one room of a node's client."""
    client_id, room_id = client.client_id, room.room_id
    rooms[room_id] = {
        "fields": room_fields(room), "seq": str(room.seq), "last_id": str(room.last_id),
        "sets": room_sets(room_id, room.persistent)}
    # The connection's own role (a persistent room's users' roles are the room's).
    role = "owner" if room.owner == client_id else "moderator" if client_id in (room.moderators or ()) else ""
    if role:
        sets.append([room_id, f"{_ROLE_SETS[role]}:{room_id}", client_id, client_id])
    if room.private:
        sets += ([room_id, f"invited:{room_id}", key, client_id] for key in names_of(client_id, client.user))
