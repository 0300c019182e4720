"""
Rooms and members: the chat's state machine, free of I/O.

Nothing here imports Twisted or Autobahn.  Time comes in as ``now`` (POSIX
seconds); connections are :class:`Sink` objects; a broadcast or an event is
encoded and prepared once, then handed to every recipient's sink.
"""

from __future__ import annotations

from typing import Any, Callable, Container, Optional

from chatd import codec
from chatd.codec import (
    Block,
    Command,
    Create,
    Delete,
    Events,
    History,
    Join,
    Leave,
    ListRooms,
    Manage,
    Members,
    Message,
    Nick,
    Read,
    Rooms,
    Sync,
)
from chatd.errors import (
    ChatError,
    NotInRoom,
    RoomNotFound,
)
from chatd.rooms import rules
from chatd.delivery.direct import DirectMessages
from chatd.delivery.handout import HandOut
from chatd.rooms.events import CoreEvents
from chatd.rooms import many
from chatd.rooms.catchup import CatchUp
from chatd.rooms.lasting import Lasting, MaybeLater
from chatd.rooms.history import HistoryStore, MemoryHistory
from chatd.rooms.rules import RoomView
from chatd.rooms.store import Become, Change, Done, Enter, Rename, decide, settled
from chatd.rooms.metering import Metered
from chatd.rooms.rules import (
    done_reply,
    join_refusal,
    nick_taken,
    successor,
)
from chatd.rooms.state import (
    Client,
    Limits,
    Room,
    Sink,
    member_entry,
    random_id,
    tag,
)

_DEFAULT_LIMITS = Limits()

#: Called with (client, exception) when a sink's deliver fails unexpectedly.
SinkErrorHandler = Callable[[Client, BaseException], None]


def _ignore_sink_error(client: Client, failure: BaseException) -> None:
    pass


def _no_answer(result: Any, client: Client) -> None:
    pass


def _identity(payload: bytes) -> Any:
    return payload


class ChatCore(Metered, HandOut, Lasting, CatchUp, DirectMessages):
    """
    All clients and rooms of one chat server.

    :param prepare: turns an encoded broadcast into the frame every sink's
        ``deliver`` receives; called once per broadcast, whatever the number
        of recipients (the WebSocket adapter frames it here).
    :param join: makes one deliverable of several prepared frames, so that a
        batch of broadcasts (from Redis in a cluster; gathered between
        ``gather`` and ``release`` here) reaches each member in one
        delivery; None: one delivery per broadcast.
    :param new_id: source of candidate IDs; collisions are checked.
    :param on_sink_error: told about sinks whose ``deliver`` raised
        something other than ``SinkGone``.
    :param events: told about rooms and broadcasts.
    :param limits: rate limits and history size.
    :param history: where recent messages are kept (default: in memory).
    :param durable: the store that keeps lasting rooms
        (:class:`chatd.storage.durable.Durable`; None: none last).
    :param persistent_rooms: who may create lasting rooms: "users" or "anyone".
    """

    def __init__(
        self,
        prepare: Callable[[bytes], Any] = _identity,
        new_id: Callable[[], str] = random_id,
        join: Optional[Callable[[list[Any]], Any]] = None,
        on_sink_error: SinkErrorHandler = _ignore_sink_error,
        events: Optional[CoreEvents] = None,
        limits: Limits = _DEFAULT_LIMITS,
        history: Optional[HistoryStore] = None,
        durable: Optional[Any] = None,
        persistent_rooms: str = "users",
    ) -> None:
        self._prepare = prepare
        self._join = join
        self._new_id = new_id
        self._on_sink_error = on_sink_error
        self.events = events if events is not None else CoreEvents()
        self.limits = limits
        self.history: HistoryStore = (
            history if history is not None
            else MemoryHistory(limits.history_size, limits.history_bytes, limits.history_memory)
        )
        self.clients: dict[str, Client] = {}
        # Each authenticated user's connections here, by client ID.
        self.users: dict[str, dict[str, Client]] = {}
        self.rooms: dict[str, Room] = {}
        self._room_seq = 0
        self.durable = durable
        self.persistent_rooms = persistent_rooms
        self.memberships: dict[str, dict[str, int]] = {}  # lasting rooms: by user, by room, the last read
        # Between gather() and end_gathering(): broadcasts waiting to be fanned
        # out, by room: (room, [(sender, payload, message)]).
        self._gathered: Optional[dict[str, tuple[Room, list[tuple[Client, bytes, dict[str, Any]]]]]] = None

    # -- ids ---------------------------------------------------------------

    def _unique_id(self, taken: Container[str]) -> str:
        for _ in range(100):
            candidate = self._new_id()
            if candidate not in taken:
                return candidate
        # 100 collisions in a row means the ID source is broken, not unlucky.
        raise RuntimeError("could not find a free ID after 100 tries")

    # -- connections -------------------------------------------------------

    def new_client_id(self) -> str:
        """An ID no client here has (a cluster also checks it cluster-wide)."""
        return self._unique_id(self.clients)

    def new_room_id(self) -> str:
        """An ID no room here has (a cluster also checks it cluster-wide)."""
        return self._unique_id(self.rooms)

    def connect(self, sink: Sink, client_id: Optional[str] = None) -> Client:
        """Register a new connection; the caller sends it ``codec.welcome``."""
        client = Client(client_id if client_id is not None else self.new_client_id(), sink)
        self.clients[client.client_id] = client
        return client

    def disconnect(self, client: Client, now: float = 0.0) -> None:
        """Forget a client and leave its room. Safe to call more than once."""
        if self.clients.get(client.client_id) is not client:
            return
        while client.room is not None:  # each of its rooms
            self._leave_room(client, now)
        del self.clients[client.client_id]
        self._unindex(client)

    def forget_client(self, client: Client) -> None:
        """Drop a client without the room rules (a cluster node's disconnect)."""
        if self.clients.get(client.client_id) is client:
            del self.clients[client.client_id]
        self._unindex(client)

    # -- commands ----------------------------------------------------------

    def handle(self, client: Client, command: Command, now: float) -> MaybeLater:
        """Carry out one command; return the reply for the client (a
        Deferred of it when it waits for the durable store)."""
        durable = self.durable
        if durable is None:
            return self._handle(client, command, now)
        asked = durable.asked
        return self.kept(self._handle(client, command, now), asked)

    def _handle(self, client: Client, command: Command, now: float) -> MaybeLater:
        if isinstance(command, Message):
            # A lasting room's is kept first: handle() waits for the store.
            return self.message(client, command.body, now, command.scope) or codec.MESSAGE_SENT
        if isinstance(command, Join):
            return self.join(client, command.room_id, now, command.since, command.keep)
        if isinstance(command, Create):
            return self.create(client, command.name, now, command.private, command.persistent, command.keep)
        if isinstance(command, Leave):
            return self.leave(client, now, command.scope)
        if isinstance(command, ListRooms):
            return self.list_rooms(command.limit, command.after, client)
        if isinstance(command, Manage):
            return self.manage(client, command, now)
        if isinstance(command, Members):
            return self.members(client, command.scope)
        if isinstance(command, Nick):
            return self.set_nick(client, command.nick, now)
        if isinstance(command, History):
            return self.recent(client, command.limit, command.before, command.scope)
        if isinstance(command, Events):
            return self.set_events(client, command.on)
        if isinstance(command, Block):
            return self.block(client, command)
        if isinstance(command, Rooms):
            return self.rooms_of(client)
        if isinstance(command, Read):
            return self.read(client, command.room_id, command.message_id, now)
        if isinstance(command, Delete):
            return self.delete(client, command.room_id, now)
        if isinstance(command, Sync):
            return self.sync(client, command.since, now)
        raise TypeError(f"unknown command {command!r}")

    def create(
        self, client: Client, name: str, now: float, private: bool = False, persistent: bool = False,
        keep: bool = False,
    ) -> dict[str, Any]:
        if persistent:
            self.check_lasting_create(client)
        if keep:
            many.check_keep(client, self.limits.rooms_per_connection)
        self.check_create_rate(client, now)
        self._step_out(client, keep, now)
        # The list's cursor: when the room was created, in tenths of a
        # millisecond (rising by one at least), as in a cluster.  A count
        # would tell a client paging past private rooms how many there are.
        self._room_seq = max(self._room_seq + 1, int(now * 10_000))
        room = Room(self._unique_id(self.rooms), name, codec.timestamp(now), client.client_id, self._room_seq)
        room.private = private
        room.invited = set(rules.invited_at_creation(client, private)) or None
        self.rooms[room.room_id] = room
        if persistent:
            self.made_lasting(room, client)
        self._enter_room(client, room)
        self.joined_lasting(client, room)
        self.events.room_created(room, client)
        return codec.created(room.room_id, name, private, persistent)

    def join(
        self, client: Client, room_id: str, now: float = 0.0, since: Optional[int] = None, keep: bool = False,
    ) -> MaybeLater:
        room = self.rooms.get(room_id)
        if room is not None and many.is_in(client, room):
            if client.room is not room:  # one it kept: current again
                self._step_out(client, keep, now)
                many.make_current(client, room)
            return self._joined(room, since)
        if keep:
            many.check_keep(client, self.limits.rooms_per_connection)
        reply: MaybeLater = settled(decide(
            self, room_id, client, lambda view: join_refusal(view, client),
            lambda view: Enter(since, rules.name_holders(view, client), now, keep)))
        return reply

    def _step_out(self, client: Client, keep: bool, now: float) -> None:
        """Before entering another room: the seed's way, out of the current
        one; with ``keep``, in it still (and the client's broadcasts name
        their rooms from now on)."""
        if keep:
            tag(client)
            many.keep_current(client)
        else:
            self._leave_room(client, now)

    def _joined(self, room: Room, since: Optional[int]) -> MaybeLater:
        reply = codec.joined(room.room_id, room.name)
        if since is not None and room.persistent and since < room.last_id:
            later = self.recover_kept(room, since, reply)  # older than memory keeps
            if later is not None:
                return later
        if since is not None:
            # Everything after ``since`` is in history (kept when it was
            # published), and everything after this reply reaches the client
            # live: each message exactly once.
            # (From another life of the room, ``since`` is above every id:
            # then all that is kept.)
            after = since if since <= room.last_id else None
            kept = self.history.recent(room, max(1, self.limits.history_size), None, after)
            reply["recovered"], reply["messages"] = codec.recovery(kept, room.last_id, since)
        return reply

    def leave(self, client: Client, now: float = 0.0, scope: Optional[str] = None) -> dict[str, Any]:
        if client.room is None:
            raise NotInRoom("Not in any room")
        room = many.target(client, scope)
        self.left_lasting(client, room)
        self._leave_room(client, now, room)
        return {"status": "success", "message": "Left room"}

    def message(self, client: Client, body: Any, now: float, scope: Optional[str] = None) -> Optional[dict[str, Any]]:
        """Rate-limit, then publish: the sender's reply."""
        self.check_message_rate(client, now)
        return self.publish(client, body, now, room=many.target(client, scope))

    def publish(
        self, client: Client, body: Any, now: float, answer: Optional[Callable[[Any, Client], None]] = None,
        room: Optional[Room] = None,
    ) -> Optional[dict[str, Any]]:
        """Broadcast a message to the sender's room (no rate limit here): the
        sender's reply; or None, for a lasting room, whose message is
        delivered and answered (through ``answer``: the reply, or a
        ChatError) once the store has it.  ``room``: one the client is in
        (None: its current one)."""
        room = room if room is not None else client.room
        if room is None:
            raise NotInRoom("You must join a room first")
        if room.persistent:
            self.publish_kept(client, room, body, now, answer or _no_answer)
            return None
        room.last_id += 1
        message = codec.broadcast(
            client.client_id, body, codec.timestamp(now), room.last_id, client.nick, client.user
        )
        payload = codec.encode(message)
        self.history.append(room, room.last_id, payload)
        self._broadcast(room, client, payload, message, now)
        return codec.MESSAGE_SENT

    def _broadcast(self, room: Room, client: Client, payload: bytes, message: dict[str, Any], now: float) -> None:
        """Fan a broadcast out now, or with the others gathered."""
        gathered = self._gathered
        if gathered is not None and len(room.members) > 1:
            waiting = gathered.get(room.room_id)
            if waiting is None:
                waiting = gathered[room.room_id] = (room, [])
            waiting[1].append((client, payload, message))
        else:
            recipients = self._fan_out(room, client, payload, now)
            self.events.message_sent(room, client, message, recipients, len(payload))

    def gather(self) -> None:
        """
        Until ``end_gathering``, each room's broadcasts wait, to reach each member
        in one delivery (with ``join``; without it, this does nothing).  For
        several messages from one read: whoever calls it must ``fan_out_gathered``
        before anything else that delivers (a join, a leave), so that every
        member sees what happened in order (:class:`chatd.chat.LocalChat`
        does).
        """
        if self._join is not None:
            self._gathered = {}

    @property
    def gathering(self) -> bool:
        return self._gathered is not None

    def fan_out_gathered(self, now: float) -> int:
        """Fan out what is gathered (and go on gathering); how many messages."""
        gathered = self._gathered
        if not gathered:
            return 0
        self._gathered = {}
        fanned_out = 0
        events = self.events
        error: Optional[Exception] = None
        for room, waiting in gathered.values():
            counts = self.deliver_batch(
                room, [(sender.client_id, payload) for sender, payload, _ in waiting], now
            )
            fanned_out += len(waiting)
            for (sender, payload, message), recipients in zip(waiting, counts, strict=True):
                try:
                    events.message_sent(room, sender, message, recipients, len(payload))
                except Exception as e:  # every message is counted and logged all the same
                    error = error or e
        if error is not None:
            raise error
        return fanned_out

    def end_gathering(self, now: float) -> int:
        """Fan out what is gathered, and stop gathering; how many messages."""
        try:
            return self.fan_out_gathered(now)
        finally:
            self._gathered = None

    def list_rooms(
        self, limit: int = codec.DEFAULT_PAGE, after: Optional[str] = None, client: Optional[Client] = None,
        everything: bool = False,
    ) -> dict[str, Any]:
        """Rooms in creation order, a page at a time; "next" pages on.  A
        private room only for its members and whoever is invited (and for
        the server API: ``everything``)."""
        start = int(after) if after else 0
        page: list[dict[str, Any]] = []
        more = False
        for room in self.rooms.values():  # insertion order is creation order
            if room.seq <= start:
                continue
            if not rules.visible(room, client, everything or (client is not None and many.is_in(client, room))):
                continue
            if len(page) == limit:
                more = True
                break
            page.append(codec.room_entry(
                room.room_id, room.name, len(room.members), room.created_at, room.private, room.persistent))
        reply: dict[str, Any] = {"status": "success", "rooms": page}
        if more:
            reply["next"] = str(self.rooms[page[-1]["room_id"]].seq)
        return reply

    def members(self, client: Client, scope: Optional[str] = None) -> dict[str, Any]:
        room = many.target(client, scope)
        reply: dict[str, Any] = {
            "status": "success",
            "room_id": room.room_id,
            "members": [member_entry(m.client_id, m.nick, m.user, room.role(m.client_id))
                        for m in room.members.values()],
        }
        if room.persistent:
            reply["persistent"] = True
        return reply

    def manage(self, client: Client, command: Manage, now: float) -> dict[str, Any]:
        """An owner's or a moderator's action in the client's room, decided by
        :func:`chatd.rooms.rules.manage` and applied here (a cluster node
        decides by the same rule, and applies in Redis)."""
        room = many.target(client, command.scope)
        reply = self._manage(client, room, command, now)
        self.events.room_action(room, client, command)
        return reply

    def _manage(self, client: Client, room: Room, command: Manage, now: float) -> dict[str, Any]:
        target = self.clients.get(command.client_id) if command.client_id is not None else None
        target_room = None  # the room the client named is in, as the rules ask: this one, if it is
        if target is not None and many.is_in(target, room):
            target_room = room.room_id
        elif target is not None and target.room is not None:
            target_room = target.room.room_id
        changes = rules.manage(room, client, command, target.user if target is not None else None, target_room)
        if changes.unban and room.banned:
            room.banned.difference_update(changes.unban)
        if changes.ban:
            room.banned = (room.banned or set()) | changes.ban
        if changes.invite:
            room.invited = (room.invited or set()) | changes.invite
        if changes.uninvite and room.invited:
            room.invited.difference_update(changes.uninvite)
        self.kept_lists(room, "banned", changes.ban, changes.unban)
        self.kept_lists(room, "invited", changes.invite, changes.uninvite)
        for subject, kind in ((changes.op, "op"), (changes.deop, "deop")):
            if subject is not None:
                member = room.members[subject]
                if not self.kept_role(room, member, kind == "op"):
                    moderators = room.moderators = room.moderators or set()
                    (moderators.add if kind == "op" else moderators.discard)(subject)
                self.announce(room, kind, subject, member.nick, now, user=member.user, everyone=True)
        for member_id in changes.remove:
            self.left_lasting(room.members[member_id], room)
            self._remove(room.members[member_id], room, client.client_id, command.reason, now)
        self.banned_lasting(room, changes.ban)
        if changes.tell_invited is not None:
            self._tell_invited(room, client, changes.tell_invited, now)
        return done_reply(command)

    def _tell_invited(self, room: Room, by: Client, to: str, now: float) -> None:
        """The connections an invitation names (a client, or a user's), if
        they asked for events and do not block the inviter, hear of it."""
        told = [
            r for r in self.recipients(to, by) or ()
            if rules.hears_invitation(r, room.room_id, by.client_id, by.user)
        ]
        if told:
            notice = codec.invited(room.room_id, room.name, by.client_id, by.nick, codec.timestamp(now), by.user)
            self._deliver(told, codec.encode(notice), now)

    def _remove(self, member: Client, room: Room, by: str, reason: str, now: float) -> None:
        """Take ``member`` out of ``room``: it is told why, the others see it leave."""
        self._leave_room(member, now, room)
        self._deliver([member], codec.encode(codec.kick(room.room_id, by, reason)), now)

    def set_nick(self, client: Client, nick: str, now: float) -> dict[str, Any]:
        rooms = self._in_every_room(client, lambda view: rules.nick_refusal(view, client, nick),
                                    lambda view: Rename(nick, now))
        if not rooms:
            client.nick = nick
        return {"status": "success", "message": f"Nick set to '{nick}'", "nick": nick}

    def recent(self, client: Client, limit: int, before: Optional[int], scope: Optional[str] = None) -> MaybeLater:
        room = many.target(client, scope)
        kept = self.history.recent(room, limit, before)
        found = self.older(room, kept, limit, before) if room.persistent else kept
        if isinstance(found, list):
            return {"status": "success", "room_id": room.room_id, "messages": found}
        return found.addCallback(lambda messages: {
            "status": "success", "room_id": room.room_id, "messages": messages})

    def replied(self, client: Client) -> None:
        """The adapter has sent a reply that came later (a cluster's); nothing here."""

    def set_events(self, client: Client, on: bool) -> dict[str, Any]:
        client.events = on
        return {"status": "success", "message": "Events on" if on else "Events off"}

    # -- internals ---------------------------------------------------------

    def _lose_nicks(self, room: Room, holders: list[str], now: float) -> None:
        """
        A user is in ``room``: those whose nick reads as that user's name
        (:func:`chatd.rooms.rules.name_holders`) lose it (an authenticated
        name wins over a nick), and everyone who asked for events, each of
        them too, sees the nick go.
        """
        for holder in holders:
            member = room.members[holder]
            member.nick = None
            self.announce(room, "nick", member.client_id, None, now, user=member.user, everyone=True)

    def set_user(self, client: Client, user: str) -> None:
        """``client`` is ``user`` (for direct messages by user name)."""
        self._unindex(client)
        client.user = user
        self.users.setdefault(user, {})[client.client_id] = client

    def _unindex(self, client: Client) -> None:
        user = client.user
        connections = self.users.get(user) if user is not None else None
        if user is not None and connections is not None and connections.get(client.client_id) is client:
            del connections[client.client_id]
            if not connections:
                del self.users[user]

    def authenticated(self, client: Client, user: str, name: Optional[str], now: float) -> None:
        """
        ``client`` is ``user``; without a nick, it takes ``name`` (or the
        user name) as its nick, unless another member of its room has it.
        The room it is in already admits it as a join by that user would:
        a ban of the user refuses the authentication (BannedAs).
        """
        as_user = Client(client.client_id, client.sink)
        as_user.nick, as_user.user = client.nick, user
        rooms = self._in_every_room(client, lambda view: rules.auth_refusal(view, user),
                                    lambda view: Become(user, rules.name_holders(view, as_user), now))
        if not rooms:
            self.set_user(client, user)
        if client.nick is not None:
            return
        nick = codec.default_nick(user, name)
        if nick is None or any(nick_taken(room, nick, client) for room in rooms):
            return
        client.nick = nick
        for room in rooms:
            self.announce(room, "nick", client.client_id, nick, now, client, user)

    def _in_every_room(
        self, client: Client, refusal: Callable[[RoomView], Optional[ChatError]], change: Callable[[RoomView], Change],
    ) -> list[Room]:
        """A change of the client itself (its nick, its user), made in every
        room it is in, or in none: the rule is asked of each first.  The
        rooms it was made in."""
        rooms = many.rooms_of(client)
        for room in rooms:
            error = refusal(room)
            if error is not None:
                raise error
        for room in rooms:
            settled(decide(self, room.room_id, client, refusal, change))
        return rooms

    def _enter_room(self, client: Client, room: Room) -> None:
        """``client`` is in ``room``, its current room (out of any other
        first, the seed's way, or keeping them: ``_step_out``)."""
        if room.persistent and room.owner_user is None and room.owner not in room.members:
            room.owner = client.client_id  # an ownerless lasting room: its first member's, as a new room
        room.add_member(client)
        many.make_current(client, room)

    def _leave_room(self, client: Client, now: float, room: Optional[Room] = None) -> None:
        """``client`` out of ``room`` (None: its current one); the room goes
        with its last member, unless it lasts."""
        room = room if room is not None else client.room
        if room is None:
            return
        many.drop(client, room)
        room.remove_member(client.client_id)
        if not room.members and room.persistent:
            room.moderators = None
            return  # it lasts
        if not room.members:
            del self.rooms[room.room_id]
            self.history.drop(room)
            self.events.room_deleted(room)
            return
        self.announce(room, "leave", client.client_id, client.nick, now, client, client.user)
        if not room.members:
            return  # a member it told was lost meanwhile, the last one: the room went with it
        if room.moderators:
            room.moderators.discard(client.client_id)
        if room.owner == client.client_id and room.owner_user is None:
            heir = successor(room.members, room.moderators)
            room.owner = heir.client_id
            self.announce(room, "owner", heir.client_id, heir.nick, now, user=heir.user, everyone=True)

    # -- the memory store of the rooms (chatd.rooms.store.RoomStore) ----------

    def assume(self, room_id: str) -> tuple[RoomView, bool]:
        room = self.rooms.get(room_id)
        return (room if room is not None else Room(room_id, "", "", "", 0)), True

    def look(
        self, room_id: str, client: Client, nick: Optional[str], user: Optional[str], reader: bool,
    ) -> Done:
        return Done(self.assume(room_id)[0])

    def apply(self, room_id: str, client: Client, view: RoomView, change: Change) -> Done:
        """Apply a decision at once: nothing else runs meanwhile."""
        room = self.rooms.get(room_id)
        if room is None:
            raise RoomNotFound(room_id)
        if isinstance(change, Enter):
            now = change.now
            self._step_out(client, change.keep, now)
            self._enter_room(client, room)
            self.announce(room, "join", client.client_id, client.nick, now, client, client.user)
            self._lose_nicks(room, change.takes, now)
            self.joined_lasting(client, room)
            return Done(self._joined(room, change.since))
        if isinstance(change, Rename):
            client.nick = change.nick
            self.announce(room, "nick", client.client_id, client.nick, change.now, client, client.user)
        else:
            self.set_user(client, change.user)
            self._lose_nicks(room, change.takes, change.now)
            self.joined_lasting(client, room)
        return Done(True)

    def announce(
        self, room: Room, kind: str, subject_id: str, nick: Optional[str], now: float,
        subject: Optional[Client] = None, user: Optional[str] = None, everyone: bool = False,
    ) -> None:
        """A room event to the members who opted in: but its subject, unless
        ``everyone`` (a change of role, which its subject sees too)."""
        watchers = [
            m for m in room.members.values()
            if m.events and (everyone or (m is not subject and m.client_id != subject_id))
        ]
        if watchers:
            event = codec.event(kind, room.room_id, subject_id, nick, codec.timestamp(now), user)
            self._deliver(watchers, codec.encode(event), now)
