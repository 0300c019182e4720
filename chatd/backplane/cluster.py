"""
A chatd node of a cluster: the WebSocket adapter's chat, with the rooms in
Redis and this node's clients here.

The node's :class:`~chatd.core.ChatCore` holds its own clients and a local
view of the rooms they are in.  The node decides every room action by the
rules of :mod:`chatd.rooms.rules` on the room as it reads it in Redis, and
the backplane's scripts apply a decision only while what the rule read
still holds (else the node decides again).  Every broadcast and room event reaches the nodes on the
room's channel, in one order for all of them, and each node frames it once
for its own members.  docs/scaling.md explains the design.

It implements :class:`chatd.chat.Chat`: every answer is a Deferred, which
has fired already where no Redis round trip was needed; the conversation
keeps each client's commands in order meanwhile.  While Redis cannot be reached, members of a
room on this node keep chatting with each other (the messages are not kept
in the room's history), leaving works, and everything else answers
"Service temporarily unavailable".
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Optional, TypeVar, Union

from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatd import codec
from chatd.backplane import facts, lines, redis_store, scripts
from chatd.backplane.shards import Shards
from chatd.chat import Answer, counts_of
from chatd.codec import Command
from chatd.core import ChatCore
from chatd.backplane.batches import RoomBatches
from chatd.backplane.calls import ShardCalls
from chatd.backplane.lasting import ClusterLasting
from chatd.backplane.listener import ChannelListener
from chatd.backplane.membership import Membership
from chatd.delivery.local import LocalRooms
from chatd.delivery.outbox import Flusher
from chatd.errors import ChatError, NoRecipient, NotInRoom, RoomNotFound, Unavailable
from chatd.rooms import many, rules
from chatd.rooms.catchup import unmarked, wanted
from chatd.rooms.rules import done_reply
from chatd.rooms.state import Client, Room, tag

Reply = dict[str, Any]
T = TypeVar("T")


#: Candidate IDs tried before giving up (each is 32 random bits).
_TRIES = 5
#: Candidate room IDs tried for one on a shard in step (with half the
#: shards away, all of them miss one time in 2 ** 20).
_ROOM_TRIES = 20
class ClusterChat:
    """The chat of a cluster node (a :class:`chatd.chat.Chat`)."""

    _log = Logger()

    def __init__(
        self,
        core: ChatCore,
        shards: Shards,
        clock: IReactorTime,
        refuse: Callable[[Client], None],
        wait: float = 5.0,
        flusher: Optional[Flusher] = None,
        durable: Optional[Any] = None,
        persistent_rooms: str = "users",
    ) -> None:
        self.core = core
        self.wait = wait
        self.shards = shards
        self.clock = clock
        self._refuse = refuse  # closes a client the cluster cannot keep
        # Scripts run on the shards; every one first sends the messages
        # published before it (a message and then a disconnect, say).
        self.calls = ShardCalls(shards, lambda: self.batches.send_all())
        # The rooms in Redis, decided by the room rules.
        self.rooms = redis_store.RedisRooms(shards, self.calls.call, self._check_reader)
        # Who is in which room here, the joins on their way, the channels.
        self.membership = Membership(LocalRooms(core), shards, clock, self.disconnect)
        # Chat messages on their way through Redis, and their frames back.
        self.batches = RoomBatches(
            core, self.membership.local, shards, clock, self.calls.run, self.calls.as_chat_error, flusher)
        self.membership.batches = self.batches
        # What the rooms' channels and the node's direct channel bring.
        self.listener = ChannelListener(core, self.membership, self.batches, self.calls, shards, self.rooms, clock)
        # Persistent rooms: kept in the store (PostgreSQL), live in Redis.
        self.lasting = ClusterLasting(durable, self.rooms, self.calls, shards, core, persistent_rooms)
        self.batches.durable = durable

    # -- what the metrics read ---------------------------------------------------

    def counts(self) -> dict[str, float]:
        """This node's own clients, and its view of their rooms."""
        return counts_of(self.core)

    # -- connections ---------------------------------------------------------

    def connect(self, sink: Any) -> "Deferred[Client]":
        """
        Register a new connection under a cluster-wide unique ID.  While Redis
        is away (a node starting, a short outage) the connection waits for it,
        at most ``wait`` seconds, before it is refused.
        """
        if self.shards.partly_available:
            return self._register(sink, _TRIES)
        d = self.shards.when_partly_available()
        d.addTimeout(self.wait, self.clock)

        def gave_up(failure: Failure) -> None:
            failure.trap(CancelledError)
            raise Unavailable()

        return d.addCallbacks(lambda _: self._register(sink, _TRIES), gave_up)

    def _register(self, sink: Any, tries: int) -> "Deferred[Client]":
        candidate = self.core.new_client_id()
        d = self.calls.each(scripts.REGISTER, self.shards.node, candidate, facts.who(None, None))

        def registered(results: list[tuple[Any, Any]]) -> Union[Client, Deferred[Client]]:
            if all(result for _, result in results):
                return self.core.connect(sink, candidate)
            # Taken on some shard: the others let it go again.
            for shard, result in results:
                if result:
                    self.calls.background(shard.call(scripts.UNREGISTER, self.shards.node, candidate), "a registration")
            if tries > 1:
                return self._register(sink, tries - 1)
            raise RuntimeError("no free client ID after several tries")

        return d.addCallback(registered)

    def disconnect(self, client: Client, now: float = 0.0) -> None:
        if self.core.clients.get(client.client_id) is not client:
            return
        self.core.forget_client(client)
        self.membership.gone(client)
        # A shard not connected now takes the client out at its resync.
        self.calls.on_each(scripts.UNREGISTER, self.shards.node, client.client_id, then=self._left)

    def settled(self) -> "Deferred[Any]":
        """Fires once Redis has applied every disconnect made so far."""
        return self.calls.settled()

    # -- commands ------------------------------------------------------------

    def handle(self, client: Client, command: Command, now: float) -> "Deferred[Reply]":
        try:
            return self._handle(client, command, now)
        except ChatError as e:
            return fail(e)

    def _handle(self, client: Client, command: Command, now: float) -> "Deferred[Reply]":
        if isinstance(command, codec.Sync):
            return Deferred.fromCoroutine(self.sync(client, command.since, now))
        if isinstance(command, codec.Join):
            return self.join(client, command.room_id, now, command.since, keep=command.keep)
        if isinstance(command, codec.Create):
            return self.create(client, command.name, now, command.private, command.persistent, command.keep)
        if isinstance(command, codec.Leave):
            return self.leave(client, now, command.scope)
        if isinstance(command, codec.ListRooms):
            return self.list_rooms(command.limit, command.after, client)
        if isinstance(command, codec.Manage):
            return self.manage(client, command)
        if isinstance(command, codec.Members):
            return self.members(client, command.scope)
        if isinstance(command, codec.Nick):
            return self.set_nick(client, command.nick, now)
        if isinstance(command, codec.History):
            return self.recent(client, command.limit, command.before, command.scope)
        if isinstance(command, codec.Events):
            return succeed(self.core.set_events(client, command.on))
        if isinstance(command, codec.Rooms):
            return Deferred.fromCoroutine(self.lasting.rooms_of(client))
        if isinstance(command, codec.Read):
            return Deferred.fromCoroutine(self.lasting.read(client, command.room_id, command.message_id))
        if isinstance(command, codec.Delete):
            return Deferred.fromCoroutine(self.lasting.delete(client, command.room_id))
        if isinstance(command, codec.Block):
            try:
                return succeed(self.core.block(client, command))  # the connection's own
            except ChatError as e:
                return fail(e)
        # A chat message goes through check_message_rate and publish.
        raise TypeError(f"not a command for handle: {command!r}")

    def check_message_rate(self, client: Client, now: float, in_room: bool = True) -> None:
        self.core.check_message_rate(client, now, in_room)

    def check_command_rate(self, client: Client, now: float) -> None:
        self.core.check_command_rate(client, now)

    def charge_reply(self, client: Client, size: int, now: float) -> None:
        self.core.charge_reply(client, size, now)

    def direct(self, client: Client, to: str, body: Any, now: float) -> "Deferred[Reply]":
        """To a client or a user's connections on any node, through Redis."""
        message = codec.direct(client.client_id, body, codec.timestamp(now), to, client.nick, client.user)
        payload = codec.encode(message)

        def done(count: Any) -> Reply:
            if int(count) < 0:
                raise NoRecipient(to)
            self.core.events.direct_sent(client, message, 0, len(payload))
            return codec.MESSAGE_SENT

        # Every shard knows every client: the first one in step will do.
        shard = self.shards.serving(to)
        if shard is None:
            return fail(Unavailable())
        return self.calls.call(shard, scripts.DIRECT, client.client_id, to, payload).addCallback(done)

    def create(
        self, client: Client, name: str, now: float, private: bool = False, persistent: bool = False,
        keep: bool = False,
    ) -> "Deferred[Reply]":
        if not self.shards.partly_available:
            raise Unavailable()
        if keep:
            many.check_keep(client, self.core.limits.rooms_per_connection)
            tag(client)
        if not persistent:
            self.core.check_create_rate(client, now)
            return self._create(client, name, codec.timestamp(now), private, None, _TRIES, keep)

        def allowed(_: None) -> "Deferred[Reply]":
            self.core.check_create_rate(client, now)
            return self._create(client, name, codec.timestamp(now), private, client.user or "", _TRIES, keep)

        return Deferred.fromCoroutine(self.lasting.check_create(client)).addCallback(allowed)

    def _create(
        self, client: Client, name: str, created_at: str, private: bool, owner_user: Optional[str], tries: int,
        keep: bool = False,
    ) -> "Deferred[Reply]":
        """``owner_user``: a persistent room's owner ("": none), None for a seed room."""
        room = self.membership.local.room(self._new_room_id())
        self.membership.created(room, name, created_at, client.client_id, private, owner_user)
        room_id = room.room_id
        shard, old = self.shards.of(room_id), None if keep else client.room
        alone = not client.others

        def run(_: None) -> "Deferred[Any]":
            return self.rooms.create(shard, client, room, len(self.shards), self.shards.position(shard), keep)

        def done(reply: list[Any]) -> Union[Reply, Deferred[Reply]]:
            created = lines.Created.decode(reply)
            outcome = created.outcome
            if outcome == "taken":
                self.membership.abandon(pending)
                if tries > 1:
                    return self._create(client, name, created_at, private, owner_user, tries - 1, keep)
                raise RuntimeError("no free room ID after several tries")
            if outcome != "ok":
                self.membership.abandon(pending)
                raise Unavailable()
            self.membership.numbered(room, created.seq)
            self._old_room(created.left)
            self._leave_elsewhere(client, old, shard, alone)
            if self.membership.answered(pending):
                self.core.events.room_created(room, client)
            answer = codec.created(room_id, name, private, room.persistent)
            if not room.persistent:
                return answer
            return Deferred.fromCoroutine(self._kept(answer, self.lasting.created(room, client)))

        pending = self.membership.expect(client, room, keep)
        return self.membership.subscribed(room_id).addCallback(run).addCallbacks(
            done, self.membership.failed, errbackArgs=(pending,))

    def join(
        self, client: Client, room_id: str, now: float = 0.0, since: Optional[int] = None, revived: bool = False,
        keep: bool = False,
    ) -> "Deferred[Reply]":
        current = client.room
        if current is not None and current.room_id == room_id and since is None:
            return succeed(codec.joined(room_id, current.name))
        shard = self.shards.of(room_id)
        if not shard.available:
            raise Unavailable()
        in_it = client.others is not None and room_id in client.others or (
            current is not None and current.room_id == room_id)
        if keep:
            if not in_it:
                many.check_keep(client, self.core.limits.rooms_per_connection)
            tag(client)
        room = self.membership.local.room(room_id)
        old, alone = None if keep else current, not client.others

        def run(_: None) -> "Deferred[lines.Entered]":
            return Deferred.fromCoroutine(self.rooms.enter(client, room_id, since, keep))

        def done(entered: lines.Entered) -> Union[Reply, Deferred[Reply]]:
            outcome = entered.outcome
            if outcome not in ("ok", "same"):
                self.membership.abandon(pending)
                if outcome == "nf" and not revived:
                    # Perhaps a persistent room Redis has lost: from the store.
                    return Deferred.fromCoroutine(self.lasting.revive(room_id)).addCallback(
                        lambda found: self.join(client, room_id, now, since, True, keep) if found else fail(
                            RoomNotFound(room_id)))
                if outcome == "nf":
                    raise RoomNotFound(room_id)
                raise Unavailable()
            owners = [lines.text(x) for x in entered.reads[0]]
            self.membership.learned(room, entered.fields, entered.last_id, owners[0] if owners else "")
            self._old_room(entered.left)
            self._leave_elsewhere(client, old, shard, alone)
            self.membership.answered(pending, same=outcome == "same")
            reply = codec.joined(room_id, room.name)
            if not room.persistent:
                if since is not None:
                    reply["recovered"], reply["messages"] = codec.recovery(entered.missed, room.last_id, since)
                return reply
            return Deferred.fromCoroutine(self._joined_lasting(client, room, since, entered.missed, reply))

        pending = self.membership.expect(client, room, keep)
        return self.membership.subscribed(room_id).addCallback(run).addCallbacks(
            done, self.membership.failed, errbackArgs=(pending,))

    async def sync(self, client: Client, since: dict[str, int], now: float) -> Reply:
        """``sync`` (:mod:`chatd.rooms.catchup` has it for one process): the
        rooms named, then the user's lasting ones, then the others the
        connection is in, each joined keeping the rest, one after another."""
        markers: dict[str, int] = {}
        durable = self.lasting.durable
        if durable is not None and client.user is not None:
            markers = {room_id: int(last_read) for room_id, last_read in await durable.query(
                "SELECT room_id, last_read FROM memberships WHERE user_name = ?", client.user)}
        mine = [room.room_id for room in many.rooms_of(client)]
        tag(client)
        current = client.room
        limit = self.core.limits.rooms_per_connection
        entered: list[str] = []
        replies: dict[str, Reply] = {}
        skipped: list[Reply] = []
        for room_id in wanted(since, markers, mine):
            in_it = any(room.room_id == room_id for room in many.rooms_of(client))
            try:
                if not in_it and many.count(client) >= limit:
                    raise ChatError(many.too_many(limit))
                replies[room_id] = await self.join(client, room_id, now, since.get(room_id), keep=True)
            except ChatError as refused:
                skipped.append({"room_id": room_id, "message": str(refused)})
                continue
            entered.append(room_id)
        rooms = {room.room_id: room for room in many.rooms_of(client)}
        first = current if current is not None and current.room_id in rooms else (
            rooms.get(entered[0]) if entered else None)
        if first is not None:
            many.make_current(client, first)
        self.core.charge_commands(client, sum(1 for r in entered if r not in mine) - 1, now)
        listed = {entry["room_id"]: entry for entry in (await self.lasting.rooms_of(client))["rooms"]}
        out: list[Reply] = []
        for room_id in entered:
            entry, room, asked = dict(listed[room_id]), rooms[room_id], since.get(room_id)
            if room_id not in markers:
                entry["last_read"], entry["unread"] = unmarked(room.last_id, asked)
            entry["current"] = room is client.room
            if asked is not None:
                reply = replies[room_id]
                entry["recovered"], entry["messages"] = reply.get("recovered", True), reply.get("messages", [])
            out.append(entry)
        answer: Reply = {"status": "success", "rooms": out}
        if skipped:
            answer["skipped"] = skipped
        return answer

    def leave(self, client: Client, now: float = 0.0, scope: Optional[str] = None) -> "Deferred[Reply]":
        if client.room is None:
            raise NotInRoom("Not in any room")
        room = many.target(client, scope)
        # Out of every room there when it is in one (Redis may hold it in
        # another after a join whose answer was lost), else out of this one.
        which = "*" if not client.others else room.room_id
        self.membership.left(client, room)
        reply = {"status": "success", "message": "Left room"}
        shard = self.shards.of(room.room_id)
        if not shard.available:
            # The resync after Redis is back catches up.
            return Deferred.fromCoroutine(self._kept(reply, self.lasting.left(client, room, look=False)))
        d = self.calls.call(shard, scripts.LEAVE, self.shards.node, client.client_id, which)

        def done(result: list[Any]) -> Deferred[Reply]:
            self._left(result)
            return Deferred.fromCoroutine(self._kept(reply, self.lasting.left(client, room)))

        def failed(failure: Failure) -> Deferred[Reply]:
            failure.trap(Unavailable)  # left here; the resync catches up
            return Deferred.fromCoroutine(self._kept(reply, self.lasting.left(client, room, look=False)))

        return d.addCallbacks(done, failed)

    def publish(self, client: Client, body: Any, now: float, answer: Answer, room: Optional[Room] = None) -> None:
        """Broadcast through the room's channel (or, without Redis, here
        only); ``answer`` gets the sender's reply once Redis has numbered it.
        ``room``: the one the client named (else its current one)."""
        room = room if room is not None else client.room
        if room is None:
            answer(Failure(NotInRoom("You must join a room first")), client)
            return
        ts = codec.timestamp(now)
        if not self.shards.of(room.room_id).available:
            answer(self._publish_here(client, room, body, ts, now), client)
            return
        self.batches.gather(client, room, body, ts, answer)

    def submit(self, client: Client, body: Any, now: float) -> "Deferred[Reply]":
        """:meth:`publish`, the reply as a Deferred."""
        d: Deferred[Reply] = Deferred()
        self.publish(client, body, now, lambda result, _: d.callback(result))
        return d

    def _publish_here(self, client: Client, room: Room, body: Any, ts: str, now: float) -> Reply:
        # Ids go on from the highest this node has seen; the resync raises
        # the room's counter past them, so no id is given out twice to
        # anyone who saw these.
        message_id = self.membership.next_id(room)
        message = codec.broadcast(client.client_id, body, ts, message_id, client.nick, client.user)
        payload = codec.encode(message)
        recipients = self.membership.local.deliver(room, payload, client.client_id, now)
        self.core.events.message_sent(room, client, message, recipients, len(payload))
        return codec.MESSAGE_SENT

    def list_all(self, limit: int, after: Optional[str]) -> "Deferred[Reply]":
        """Every room, private ones too (the server API's list)."""
        return self.list_rooms(limit, after, None, everything=True)

    def list_rooms(
        self, limit: int = codec.DEFAULT_PAGE, after: Optional[str] = None, client: Optional[Client] = None,
        everything: bool = False,
    ) -> "Deferred[Reply]":
        # Each shard's first rooms after the cursor that the client may see,
        # merged in creation order (a shard that is away leaves its rooms out).
        shards = [shard for shard in self.shards.all if shard.available]
        if not shards:
            return fail(Unavailable())
        start = int(after) if after else 0
        d = DeferredList([Deferred.fromCoroutine(self.rooms.listed(shard, start, limit, client, everything))
                          for shard in shards], consumeErrors=True)

        def done(answers: list[tuple[bool, Any]]) -> Union[Reply, Deferred[Reply]]:
            if not any(ok for ok, _ in answers):
                raise Unavailable()
            live = {room.room_id: (room.seq, codec.room_entry(
                room.room_id, room.fields[0], room.members, room.fields[1], room.fields[2] == "1",
                room.fields[3] == "1")) for ok, rooms in answers if ok for room in rooms}
            if self.lasting.durable is None:
                return listed(live, [])
            # Persistent rooms that Redis does not have now are listed too.
            return Deferred.fromCoroutine(self.lasting.listed(client, start, limit, everything)).addCallback(
                lambda stored: listed(live, stored))

        def listed(live: dict[str, tuple[int, Reply]], stored: list[tuple[int, Reply]]) -> Reply:
            found = list(live.values()) + [(seq, entry) for seq, entry in stored if entry["room_id"] not in live]
            found.sort(key=lambda row: row[0])
            reply: Reply = {"status": "success", "rooms": [entry for _, entry in found[:limit]]}
            if len(found) > limit:
                reply["next"] = str(found[limit - 1][0])
            return reply

        return d.addCallback(done)

    def members(self, client: Client, scope: Optional[str] = None) -> "Deferred[Reply]":
        room, shard = self._room_of(client, scope)
        return Deferred.fromCoroutine(self.rooms.members(client, room, shard))

    def manage(self, client: Client, command: codec.Manage) -> "Deferred[Reply]":
        """An owner's or a moderator's action: decided by the room rules
        (:func:`chatd.rooms.rules.manage`) on the room as Redis has it, and
        applied there only if the room is still so; else decided again."""
        room, shard = self._room_of(client, command.scope)

        def applied(decided: tuple[rules.Changes, Room, int]) -> Union[Reply, Deferred[Reply]]:
            changes, view, version = decided
            self.core.events.room_action(room, client, command)
            if changes.tell_invited is not None:
                self._tell_invited(room, client, changes.tell_invited)
            if self.lasting.managed(view, changes, version):
                return Deferred.fromCoroutine(self._kept(done_reply(command)))
            return done_reply(command)

        return Deferred.fromCoroutine(self.rooms.manage(client, room, shard, command)).addCallback(applied)

    def set_nick(self, client: Client, nick: str, now: float) -> "Deferred[Reply]":
        reply = {"status": "success", "message": f"Nick set to '{nick}'", "nick": nick}
        everywhere = redis_store.renamed(client.client_id, nick, client.user)
        rooms = many.rooms_of(client)
        if not rooms:
            # Nobody to clash with: recorded on every shard in the background
            # (one away records it at its resync).
            client.nick = nick
            self.calls.on_each(scripts.CHANGE, self.shards.node, client.client_id, "[]", everywhere)
            return succeed(reply)
        # Each room's shard says whether it is free there; the others follow.
        if any(not self.shards.of(room.room_id).available for room in rooms):
            raise Unavailable()

        async def renamed() -> Reply:
            if len(rooms) > 1:  # free in every room before it is taken in any
                for room in rooms:
                    await self.rooms.check_nick(client, room, nick)
            for room in rooms:
                await self.rooms.rename(client, room, nick)
            client.nick = nick
            # Every shard has the client's record: each takes the nick (again, where a room took it).
            self.calls.on_each(scripts.CHANGE, self.shards.node, client.client_id, "[]", everywhere)
            return reply

        return Deferred.fromCoroutine(renamed())

    def recent(
        self, client: Client, limit: int, before: Optional[int], scope: Optional[str] = None,
    ) -> "Deferred[Reply]":
        room, shard = self._room_of(client, scope)
        d = self.calls.call(shard, scripts.HISTORY, room.room_id, limit, before or 0, client.client_id)

        def done(payloads: Any) -> Any:
            self._check_reader(payloads, client, room)
            messages = [json.loads(p) for p in payloads]
            return self.lasting.older(room, messages, limit, before)

        return d.addCallback(done).addCallback(
            lambda messages: {"status": "success", "room_id": room.room_id, "messages": messages})

    def authenticate(self, client: Client, user: str, name: Optional[str], now: float) -> "Deferred[None]":
        """Record the user in Redis (its name is reserved in the client's
        room from then on); then, without a nick, take the default one."""
        as_user = Client(client.client_id, redis_store.NO_SINK)
        as_user.nick, as_user.user = client.nick, user
        everywhere = redis_store.identified(client.client_id, client.nick, user)
        rooms = many.rooms_of(client)
        if not rooms:
            d = self.calls.each(scripts.CHANGE, self.shards.node, client.client_id, "[]", everywhere)
        else:
            # Each room's shard decides whether the room admits the user (a
            # ban: refused if any room does), and records it; the others follow.
            async def admitted() -> list[tuple[Any, Any]]:
                if len(rooms) > 1:
                    for room in rooms:
                        await self.rooms.check_user(as_user, room)
                for room in rooms:
                    await self.rooms.become(as_user, room)
                self.calls.on_each(scripts.CHANGE, self.shards.node, client.client_id, "[]", everywhere)
                return [(None, "ok")]

            d = Deferred.fromCoroutine(admitted())

        def recorded(results: list[tuple[Any, Any]]) -> Any:
            if not any(lines.text(outcome) == "ok" for _, outcome in results):
                raise Unavailable()
            self.core.set_user(client, user)
            lasting = [room for room in rooms if room.persistent]
            if lasting:
                # Signed in inside persistent rooms: a member of each, kept first.
                async def joined() -> None:
                    for room in lasting:
                        await self._kept(None, self.lasting.joined(client, room))

                return Deferred.fromCoroutine(joined()).addCallback(lambda _: nicked())
            return nicked()

        def nicked() -> Any:
            if client.nick is not None:
                return None
            nick = codec.default_nick(user, name)
            if nick is None:
                return None
            # The default nick is a wish: taken in the room, there is none.
            return self.set_nick(client, nick, now).addErrback(lambda f: f.trap(ChatError))

        return d.addCallback(recorded).addCallback(lambda _: None)

    def reading(self, function: Callable[..., T], *args: Any) -> T:
        # A read's messages to one room already reach Redis in one call,
        # and come back as one batch (RoomBatches).
        return function(*args)

    def replied(self, client: Client) -> None:
        """The adapter has sent ``client`` its reply: what waited follows it."""
        self.membership.replied(client)

    # -- the backplane's listener ----------------------------------------------

    def channel_message(self, room_id: str, data: bytes) -> None:
        self.listener.channel_message(room_id, data)

    def direct_message(self, data: bytes) -> None:
        self.listener.direct_message(data)

    def _check_reader(self, answer: Any, client: Client, room: Room) -> None:
        """A read of ``room`` that Redis refused (the client is not a member
        there, whatever this node thought): NotInRoom, or Unavailable."""
        refusal = lines.Read.of(answer).refusal
        if refusal is None:
            return
        if refusal == "notin":
            self.membership.out_of(client, room)
            raise NotInRoom("You must join a room first")
        raise Unavailable()

    def _tell_invited(self, room: Room, by: Client, to: str) -> None:
        """The invitee's connections, wherever they are, hear of it (in the
        background: the invitation stands whether or not they do)."""
        shard = self.shards.serving(to)
        if shard is None:
            return
        notice = codec.invited(
            room.room_id, room.name, by.client_id, by.nick, codec.timestamp(self.clock.seconds()), by.user)
        d = self.calls.run(shard, scripts.DIRECT, by.client_id, to, codec.encode(notice), "n")
        self.calls.background(d, "telling an invitee")

    def backplane_up(self, shard: Any) -> "Deferred[None]":
        """Make a shard agree with this node (after a restart, a partition, or
        at start): every client, and the rooms that live on it."""
        state = redis_store.resync_state([
            (client, [room for room in many.rooms_of(client) if self.shards.of(room.room_id) is shard])
            for client in self.core.clients.values()])  # a room elsewhere: none, as far as this shard knows
        d = shard.resync(state)

        def done(refused: list[Any]) -> None:
            self.membership.place_answered(shard)  # joins whose event was lost with the channel
            lasting = sorted({room.room_id for client in self.core.clients.values() for room in many.rooms_of(client)
                              if room.persistent and self.shards.of(room.room_id) is shard})
            if lasting:
                # Roles and lists Redis may have lost with its data, from the store.
                self.calls.background(Deferred.fromCoroutine(self.lasting.restore(shard, lasting)),
                                      "restoring persistent rooms' lists")
            for client_id in refused:
                client = self.core.clients.get(lines.text(client_id))
                if client is not None:
                    self._log.warn(
                        "Client ID {client_id} is held by another node: closing it",
                        client_id=client.client_id)
                    self._refuse(client)

        return d.addCallback(done)

    def backplane_down(self) -> None:
        # Commands answer Unavailable; local rooms go on here, and no frames
        # wait for a batch from Redis.
        self.batches.release_all()

    # -- internals --------------------------------------------------------------

    async def _kept(self, reply: T, step: Optional[Awaitable[Any]] = None) -> T:
        """``reply``, once ``step`` (if any) is done and the store has what
        was asked of it."""
        if step is not None:
            await step
        await self.lasting.kept()
        return reply

    async def _joined_lasting(
        self, client: Client, room: Room, since: Optional[int], missed: list[Any], reply: Reply,
    ) -> Reply:
        """A join of a persistent room: the user a member of it, kept; what
        it missed, from the store where Redis no longer has it."""
        await self._kept(None, self.lasting.joined(client, room))
        if since is not None:
            await self.lasting.recovered(room, since, missed, reply)
        return reply

    def _leave_elsewhere(self, client: Client, old: Optional[Room], shard: Any, alone: bool) -> None:
        """The client went from ``old`` into a room on ``shard``: the old
        room's shard, if another, takes it out there (out of every room
        there, if ``old`` was the one room the client was in)."""
        if old is None:
            return
        elsewhere = self.shards.of(old.room_id)
        if elsewhere is not shard and elsewhere.connected:
            which = "*" if alone else old.room_id
            d = elsewhere.call(scripts.LEAVE, self.shards.node, client.client_id, which).addCallback(self._left)
            self.calls.background(d, "leaving a room on another shard")

    def _new_room_id(self) -> str:
        """A free room ID on a shard in step (one that is away takes no new rooms)."""
        for _ in range(_ROOM_TRIES):
            room_id = self.core.new_room_id()
            if self.shards.of(room_id).available:
                return room_id
        raise Unavailable()

    def _room_of(self, client: Client, scope: Optional[str] = None) -> tuple[Room, Any]:
        """The room the client named (else its current one), and its shard (in step)."""
        room = many.target(client, scope)
        shard = self.shards.of(room.room_id)
        if not shard.available:
            raise Unavailable()
        return room, shard

    def _old_room(self, left: lines.Left) -> None:
        """A room the client left on its way: counted if it went."""
        if left.room_id and left.deleted:
            self.core.events.room_deleted(Room(left.room_id, "", "", "", 0))

    def _left(self, reply: list[Any]) -> None:
        self._old_room(lines.Left.decode(reply))
