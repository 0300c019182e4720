"""
Rooms that last: kept by the durable store (:mod:`chatd.storage`), they
outlive their last member and restarts, with their owner and moderators
(users, not connections), privacy, invitations, bans, history and message
ids, and every signed-in member's membership and read marker.

A mixin of :class:`chatd.core.ChatCore`: the live room is the same
:class:`~chatd.rooms.state.Room`, decided on by the same rules; what this
adds is writing each change through to the store, and answering only
once it is kept.  A message to a lasting room is numbered at once, written
with the next group commit, and delivered and acknowledged once committed:
an acknowledged message survives a SIGKILL, and no id another member saw
is ever handed out again.

Free of I/O, as the core is: the store's answers are Deferreds this
module only chains to, and the store is given (``durable``) by
:func:`chatd.compose.compose`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from chatd import codec
from chatd.errors import ChatError, NotAllowed, NotAuthenticated, RoomNotFound
from chatd.rooms import many, rules
from chatd.rooms.history import HistoryStore
from chatd.rooms.state import Client, Limits, Room

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from chatd.storage.durable import Durable, Snapshot, StoredRoom

Reply = dict[str, Any]
MaybeLater = Union[Reply, "Deferred[Reply]"]

#: The most lasting rooms one user may be a member of, and may own.
MAX_MEMBERSHIPS = 1000
MAX_OWNED = 100

NO_STORE = "This server keeps no rooms: persistent rooms need a store (--store sqlite:PATH or postgresql://...)"
SIGN_IN_TO_CREATE = "Sign in to create a persistent room"
SIGN_IN_TO_READ = "Sign in to keep read markers"


# -- the rules of lasting rooms, for one process and a cluster node alike --------


def check_create(has_store: bool, client: Client, persistent_rooms: str, owned: int) -> None:
    """Why ``client`` (who owns ``owned`` lasting rooms) may not create one,
    as a ChatError; ``persistent_rooms``: "users" or "anyone"."""
    if not has_store:
        raise ChatError(NO_STORE)
    if client.user is None and persistent_rooms != "anyone":
        raise NotAuthenticated(SIGN_IN_TO_CREATE)
    if client.user is not None and owned >= MAX_OWNED:
        raise ChatError(f"You own {MAX_OWNED} persistent rooms already; delete some first")


def check_read(
    client: Client, room_id: str, room: Optional[Room], in_it: bool, member: bool, message_id: int, last_id: int,
) -> None:
    """Why ``client`` may not move its marker in ``room`` (the lasting room
    of that ID, or the client's own room; None: neither) to ``message_id``;
    ``member``: its user is a lasting member, ``last_id``: the room's."""
    if client.user is None:
        raise NotAuthenticated(SIGN_IN_TO_READ)
    if room is None or not (member or in_it):
        if room is not None and not room.private:
            raise ChatError(f"You are not a member of room {room_id}")
        raise RoomNotFound(room_id)  # a private room reads as none: nothing leaks
    if not room.persistent:
        raise ChatError(f"Room '{room.name}' is not persistent: it keeps no read markers")
    if message_id > last_id:
        raise ChatError(f"Message {message_id} is past the room's last message ({last_id})")
    if not member:
        raise ChatError(f"You are not a member of room {room_id}")


def check_delete(client: Client, room_id: str, room: Optional[Room], in_it: bool, member: bool) -> None:
    """Why ``client`` may not delete ``room`` (as for :func:`check_read`)."""
    if room is None or not (member or rules.visible(room, client, in_it)):
        raise RoomNotFound(room_id)
    if not room.persistent:
        raise ChatError(f"Room '{room.name}' is not persistent: it ends with its last member")
    if client.user is None or client.user != room.owner_user:
        raise NotAllowed("Only the room's owner may delete it")


def stored_room(stored: StoredRoom) -> Room:
    """A lasting room as the store keeps it, as a live room (empty)."""
    room = Room(stored.room_id, stored.name, stored.created_at, stored.created_by, stored.seq)
    room.persistent, room.private = True, stored.private
    room.owner, room.owner_user = "", stored.owner or None
    room.moderator_users = set(stored.moderators) or None
    room.invited = set(stored.invited) or None
    room.banned = set(stored.banned) or None
    room.last_id = room.assigned = stored.last_id
    return room


class Lasting:
    """The lasting rooms of a chat, and its users' memberships in them."""

    rooms: dict[str, Room]
    users: dict[str, dict[str, Client]]
    _room_seq: int
    history: HistoryStore
    limits: Limits
    events: Any
    _unique_id: Callable[..., str]
    _deliver: Callable[..., int]
    _fan_out: Callable[..., int]
    _enter_room: Callable[[Client, Room], None]
    _leave_room: Callable[[Client, float], None]

    durable: Optional[Durable] = None
    # The messages of the transaction being gathered: its generation, and
    # (sender, room, message, time, answer) for each.
    _kept_batch: "Optional[tuple[int, list[tuple[Client, Room, Reply, float, Any]]]]" = None
    gather: Callable[[], None]
    end_gathering: Callable[[float], int]
    _broadcast: Callable[..., None]
    #: Who may create a lasting room: "users" (signed in) or "anyone".
    persistent_rooms = "users"

    @property
    def gathering(self) -> bool:
        raise NotImplementedError  # the core's

    def load(self, snapshot: Snapshot) -> None:
        """The lasting rooms and memberships the store kept (at start-up)."""
        self.memberships: dict[str, dict[str, int]] = {}
        for stored in snapshot.rooms:
            self.rooms[stored.room_id] = stored_room(stored)
            self._room_seq = max(self._room_seq, stored.seq)
        for user, markers in snapshot.memberships.items():
            for room_id, last_read in markers.items():
                self._remember(user, room_id, last_read)

    def declare(
        self, declared: "tuple[tuple[str, bool, Optional[str]], ...]", stored: "Snapshot", now: float,
        live: bool = True,
    ) -> int:
        """The rooms the operator declares that the store does not keep yet:
        made now (by name: a declared room is made once, and kept as its
        owner leaves it since); how many.  ``live`` False: only in the store
        (a cluster node's rooms live in Redis, which takes them from the
        store on their first join; several nodes starting at once make
        each once)."""
        known = {room.declared for room in stored.rooms}
        made = 0
        for name, private, owner in declared:
            if name in known:
                continue
            known.add(name)
            self._room_seq = max(self._room_seq + 1, int(now * 10_000))
            room = Room(self._unique_id(self.rooms), name, codec.timestamp(now), "", self._room_seq)
            room.persistent, room.private, room.owner, room.owner_user = True, private, "", owner
            if live:
                self.rooms[room.room_id] = room
            self._write(
                "INSERT INTO rooms (room_id, name, created_at, created_by, seq, private, owner, last_id, declared)"
                " VALUES (?, ?, ?, '', ?, ?, ?, 0, ?) ON CONFLICT DO NOTHING",
                room.room_id, name, room.created_at, room.seq, 1 if private else 0, owner or "", name)
            if private and owner is not None:
                room.invited = {f"u:{owner}"}  # as a private room's creator is
                self._write("INSERT INTO room_lists (room_id, list, entry) SELECT room_id, 'invited', ? FROM rooms"
                            " WHERE declared = ? ON CONFLICT DO NOTHING", f"u:{owner}", name)
            made += 1
        return made

    # -- answering once kept -----------------------------------------------------

    def kept(self, reply: MaybeLater, asked_before: int) -> MaybeLater:
        """``reply``, once what was asked of the store since ``asked_before``
        (its :attr:`~Durable.asked` then) is committed."""
        durable = self.durable
        if durable is None or durable.asked == asked_before:
            return reply
        return durable.synced().addCallback(lambda _: reply)  # a Deferred reply is chained

    def _write(self, statement: str, *parameters: Any) -> None:
        if self.durable is not None:
            self.durable.write(statement, *parameters)

    # -- create and delete -----------------------------------------------------------

    def check_lasting_create(self, client: Client) -> None:
        """Why ``client`` may not create a lasting room, as a ChatError."""
        owned = sum(1 for room in self.rooms.values() if room.owner_user == client.user) if client.user else 0
        check_create(self.durable is not None, client, self.persistent_rooms, owned)

    def made_lasting(self, room: Room, client: Client) -> None:
        """``room``, just created by ``client``, lasts: keep it."""
        room.persistent = True
        room.owner_user = client.user
        if client.user is not None:
            room.owner = ""
        self._write(
            "INSERT INTO rooms (room_id, name, created_at, created_by, seq, private, owner, last_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
            room.room_id, room.name, room.created_at, room.created_by, room.seq, 1 if room.private else 0,
            client.user or "")
        for entry in room.invited or ():
            self._write("INSERT INTO room_lists (room_id, list, entry) VALUES (?, 'invited', ?)",
                        room.room_id, entry)

    def delete(self, client: Client, room_id: str, now: float) -> Reply:
        """The ``delete`` action: a lasting room's owner removes it; every
        member hears of it and is out."""
        room = self.rooms.get(room_id)
        member = client.user is not None and room_id in self.memberships.get(client.user, {})
        check_delete(client, room_id, room, room is not None and many.is_in(client, room), member)
        assert room is not None
        notice = codec.encode(codec.deleted(room_id))
        members = list(room.members.values())
        for m in members:
            many.drop(m, room)
        room.members.clear()
        if members:
            self._deliver(members, notice, now)
        del self.rooms[room_id]
        self.history.drop(room)
        for user in [user for user, markers in self.memberships.items() if room_id in markers]:
            self._forget(user, room_id, write=False)  # a delete is rare: a scan will do
        if self.durable is not None:
            self.durable.delete_room(room_id)
        self.events.room_deleted(room)
        return {"status": "success", "message": f"Deleted room '{room.name}'"}

    # -- memberships --------------------------------------------------------------------

    def _remember(self, user: str, room_id: str, last_read: int) -> None:
        self.memberships.setdefault(user, {})[room_id] = last_read

    def _forget(self, user: str, room_id: str, write: bool = True) -> None:
        """``user`` is no longer a member of the lasting room (if it was)."""
        markers = self.memberships.get(user)
        if markers is None or room_id not in markers:
            return
        del markers[room_id]
        if not markers:
            del self.memberships[user]
        if write:
            self._write("DELETE FROM memberships WHERE room_id = ? AND user_name = ?", room_id, user)

    def joined_lasting(self, client: Client, room: Room) -> None:
        """A signed-in client is in a lasting room: its user is a member."""
        user = client.user
        if user is None or not room.persistent or room.room_id in self.memberships.get(user, {}):
            return
        if len(self.memberships.get(user, {})) >= MAX_MEMBERSHIPS:
            return  # in the room, as any guest is, but not a lasting member
        self._remember(user, room.room_id, 0)
        self._write("INSERT INTO memberships (room_id, user_name, last_read) VALUES (?, ?, 0)"
                    " ON CONFLICT DO NOTHING", room.room_id, user)

    def left_lasting(self, client: Client, room: Room) -> None:
        """``client`` left ``room`` for good (a leave, a kick, a ban): its
        user is no longer a member, unless another of its connections is in."""
        user = client.user
        if user is None or not room.persistent:
            return
        if not any(m.user == user for m in room.members.values() if m is not client):
            self._forget(user, room.room_id)

    def banned_lasting(self, room: Room, keys: frozenset[str]) -> None:
        """Users banned from a lasting room are no longer its members, whether
        or not they are connected."""
        if not room.persistent:
            return
        for key in keys:
            if key.startswith("u:"):
                self._forget(key[2:], room.room_id)

    def rooms_of(self, client: Client) -> MaybeLater:
        """The ``rooms`` action: the user's lasting rooms, and the rooms the
        connection is in (its current one first)."""
        markers = dict(self.memberships.get(client.user, {})) if client.user is not None else {}
        entries: list[Reply] = []
        listed = set()
        for room_id in [room.room_id for room in many.rooms_of(client)] + list(markers):
            room = self.rooms.get(room_id)
            if room is None or room_id in listed:
                continue
            listed.add(room_id)
            role = room.role(client.client_id) if many.is_in(client, room) else room.user_role(client.user or "")
            last_read = markers.get(room_id, room.last_id)
            entries.append({
                "room_id": room_id, "name": room.name, "private": room.private, "persistent": room.persistent,
                "role": role, "last_id": room.last_id, "last_read": last_read, "unread": 0})
        counted = {e["room_id"]: e["last_read"] for e in entries if e["persistent"] and e["last_read"] < e["last_id"]}
        if self.durable is None or client.user is None or not counted:
            return {"status": "success", "rooms": entries}

        def with_counts(unread: dict[str, int]) -> Reply:
            for entry in entries:
                entry["unread"] = unread.get(entry["room_id"], 0)
            return {"status": "success", "rooms": entries}

        return self.durable.unread(client.user, counted).addCallback(with_counts)

    def read(self, client: Client, room_id: str, message_id: int, now: float) -> Reply:
        """The ``read`` action: move the user's marker in a lasting room forward."""
        room = self.rooms.get(room_id)
        markers = self.memberships.get(client.user or "", {})
        check_read(client, room_id, room, room is not None and many.is_in(client, room), room_id in markers,
                   message_id, room.last_id if room is not None else 0)
        user = client.user
        assert user is not None
        marker = markers[room_id]
        if message_id > marker:
            marker = markers[room_id] = message_id
            self._write("UPDATE memberships SET last_read = ? WHERE room_id = ? AND user_name = ? AND last_read < ?",
                        marker, room_id, user, marker)
            others = [c for c in self.users.get(user, {}).values() if c is not client]
            if others:
                self._deliver(others, codec.encode(codec.read_up_to(room_id, marker)), now)
        return {"status": "success", "message": f"Read up to {marker}"}

    # -- roles and lists ----------------------------------------------------------------

    def kept_lists(self, room: Room, which: str, added: frozenset[str], removed: frozenset[str]) -> None:
        """A lasting room's invitations or bans changed: keep them."""
        if not room.persistent:
            return
        for entry in removed:
            self._write("DELETE FROM room_lists WHERE room_id = ? AND list = ? AND entry = ?",
                        room.room_id, which, entry)
        for entry in added:
            self._write("INSERT INTO room_lists (room_id, list, entry) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                        room.room_id, which, entry)

    def kept_role(self, room: Room, member: Client, moderator: bool) -> bool:
        """Op or deop ``member`` in a lasting room, as its user (a guest's
        role is its connection's); whether it was kept so."""
        if not room.persistent or member.user is None:
            return False
        users = room.moderator_users = room.moderator_users or set()
        if moderator:
            users.add(member.user)
            self._write("INSERT INTO room_moderators (room_id, user_name) VALUES (?, ?) ON CONFLICT DO NOTHING",
                        room.room_id, member.user)
        else:
            users.discard(member.user)
            self._write("DELETE FROM room_moderators WHERE room_id = ? AND user_name = ?",
                        room.room_id, member.user)
        return True

    # -- messages ---------------------------------------------------------------------------

    def publish_kept(
        self, client: Client, room: Room, body: Any, now: float, answer: Callable[[Any, Client], None],
    ) -> None:
        """A message to a lasting room: numbered now, written with the next
        group commit, then delivered (the group's messages to each room
        together, one delivery per member) and acknowledged through
        ``answer``; a StoreUnavailable error instead if it could not be kept."""
        durable = self.durable
        assert durable is not None
        message_id = room.assigned + 1
        message = codec.broadcast(client.client_id, body, codec.timestamp(now), message_id, client.nick, client.user)
        durable.append(room.room_id, room.name, message)  # raises StoreUnavailable when too much waits
        room.assigned = message_id
        batch = self._kept_batch
        if batch is None or batch[0] != durable.generation:
            # The first of a transaction: told once it commits, for all of them.
            batch = self._kept_batch = (durable.generation, [])
            durable.synced().addCallbacks(self._kept_committed, self._kept_failed,
                                          callbackArgs=(batch[1],), errbackArgs=(batch[1],))
        batch[1].append((client, room, message, now, answer))

    def _kept_committed(self, _: None, stored: "list[tuple[Client, Room, Reply, float, Any]]") -> None:
        started = not self.gathering
        if started:
            self.gather()
        try:
            for client, room, message, now, _answer in stored:
                if self.rooms.get(room.room_id) is not room:
                    continue  # deleted meanwhile: kept, and answered, but not for anyone to see
                message_id = message["id"]
                room.last_id = max(room.last_id, message_id)
                payload = codec.encode(message)
                self.history.append(room, message_id, payload)
                self._broadcast(room, client, payload, message, now)
        finally:
            if started:
                self.end_gathering(stored[-1][3])
        for client, _room, _message, _now, answer in stored:
            answer(codec.MESSAGE_SENT, client)

    def _kept_failed(self, failure: Any, stored: "list[tuple[Client, Room, Reply, float, Any]]") -> None:
        for client, _room, _message, _now, answer in stored:
            answer(failure.value, client)

    def older(
        self, room: Room, kept: list[Reply], limit: int, before: Optional[int],
    ) -> "Union[list[Reply], Deferred[list[Reply]]]":
        """A lasting room's history page: what memory keeps (``kept``), and
        before it what the store does."""
        durable = self.durable
        oldest = kept[0]["id"] if kept else (before if before is not None else room.last_id + 1)
        if durable is None or len(kept) >= limit or oldest <= 1:
            return kept
        return durable.history(room.room_id, limit - len(kept), oldest).addCallback(lambda found: found + kept)

    def recover_kept(self, room: Room, since: int, reply: Reply) -> "Optional[Deferred[Reply]]":
        """A join ``since`` a message older than memory keeps: the reply with
        what the store has after it (None: memory has all of it)."""
        last_id, limit = room.last_id, max(1, self.limits.history_size)
        kept = self.history.recent(room, limit, None, since)
        if (kept and kept[0]["id"] == since + 1) or self.durable is None:
            return None

        def recovered(found: list[Reply]) -> Reply:
            # As it was when asked: what comes later is delivered live.
            found = [m for m in found if m["id"] <= last_id]
            reply["recovered"], reply["messages"] = codec.recovery(found, last_id, since)
            return reply

        return self.durable.history(room.room_id, limit, None, since).addCallback(recovered)
