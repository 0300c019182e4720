"""
Who is in which room on a cluster node, as it happens: the joins and
creates on their way (done once Redis has answered and the room's channel
has carried the join, in either order), the room channels this node is
subscribed to while it has members in them, and the frames a member
receives before the reply to its join, which wait for it.  The one place
that writes a client's ``room`` and ``sink`` and the local view's rooms in
a cluster.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from chatd.backplane.shards import Shards
from chatd.delivery.local import LocalRooms
from chatd.errors import Unavailable
from chatd.rooms import many
from chatd.rooms.state import Client, Room


class _Pending:
    """A join or create on its way: done once Redis has answered and the
    room's channel has carried the join (or create) event, in either order."""

    __slots__ = ("client", "room", "keep", "placed", "answered", "cancelled", "kicked")

    def __init__(self, client: Client, room: Room, keep: bool = False) -> None:
        self.client = client
        self.room = room
        self.keep = keep  # the client stays in the rooms it is in
        self.placed = False  # receiving the room's broadcasts here
        self.answered = False  # Redis has answered; client.room is the room
        self.cancelled = False  # the client went meanwhile
        # Put out of the room (a kick, a ban) after its join, before Redis's
        # answer to the join came: the join must not stand once it does.
        self.kicked = False


class _Holding:
    """
    Stands in for a client's sink between its placement in a room and the
    reply to its join: what arrives waits, so that the reply comes first.
    """

    __slots__ = ("sink", "frames")

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.frames: list[Any] = []

    def deliver(self, frame: Any) -> None:
        self.frames.append(frame)

    def close(self, code: int, reason: str) -> None:
        self.sink.close(code, reason)


class Membership:
    """A node's clients in their rooms (see the module's docstring)."""

    def __init__(
        self, local: LocalRooms, shards: Shards, clock: IReactorTime,
        disconnect: Callable[[Client, float], None],
    ) -> None:
        self.local = local
        self.shards = shards
        self.clock = clock
        self._disconnect = disconnect  # a client whose sink failed goes
        self.batches: Any = None  # the node's RoomBatches: a room forgotten holds nothing
        # Local clients tied to each room (in it, or on their way in); the
        # room's channel is subscribed while there are any.
        self._refs: dict[str, int] = {}
        # None once subscribed; the Deferreds waiting for it until then.
        self._subscriptions: dict[str, Optional[list[Deferred[None]]]] = {}
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._pending_of: dict[str, _Pending] = {}

    # -- what Redis and the channel said --------------------------------------

    def created(
        self, room: Room, name: str, created_at: str, by: str, private: bool, owner_user: Optional[str] = None,
    ) -> None:
        """The local view of a room this node's client is creating (a
        persistent one, with ``owner_user``: owned by a user, or by none)."""
        room.name, room.created_at, room.created_by = name, created_at, by
        room.owner, room.private = by, private
        if owner_user is not None:
            room.persistent = True
            room.owner_user = owner_user or None
            if owner_user:
                room.owner = ""

    def learned(self, room: Room, fields: list[str], last_id: int, owner: str) -> None:
        """What a join answered of the room: its name, creation, creation
        sequence, privacy and lasting, its latest id, its owner."""
        room.name, room.created_at, room.created_by, seq, private, persistent, owner_user = fields
        room.seq, room.private = int(seq or 0), private == "1"
        room.persistent, room.owner_user = persistent == "1", owner_user or None
        room.last_id = max(room.last_id, last_id)
        room.owner = owner

    def numbered(self, room: Room, seq: int) -> None:
        """Redis gave the room this node created its creation sequence."""
        room.seq = seq

    def next_id(self, room: Room) -> int:
        """The id of a message published here while Redis is away."""
        room.last_id += 1
        return room.last_id

    def saw(self, room: Room, message_id: int) -> None:
        """A message of the room came through its channel."""
        if message_id > room.last_id:
            room.last_id = message_id

    def event(self, room: Room, kind: str, subject: str) -> None:
        """A room event came through its channel: a join places its client
        here; the local view of who owns and moderates the room follows (for
        a resync)."""
        if kind in ("join", "create"):
            pending = self._pending.pop((room.room_id, subject), None)
            if pending is not None:
                self._place(pending)
        if kind == "owner":
            room.owner = subject
        elif kind == "op":
            room.moderators = (room.moderators or set()) | {subject}
        elif kind in ("deop", "leave") and room.moderators:
            room.moderators.discard(subject)

    def kicked(self, client: Client, room: Room) -> None:
        """``client`` was put out of ``room``.  The channel can carry the kick
        before the command connection carries the answer to the join it
        follows (two connections to Redis): that join is out of the room as
        soon as it is answered."""
        pending = self._pending_of.get(client.client_id)
        if pending is not None and pending.room is room and not pending.answered:
            pending.kicked = True
        self.out_of(client, room)

    def place_answered(self, shard: Any) -> None:
        """After a resync of ``shard``: answered joins whose event was lost
        with the channel are in their room now."""
        for pending in list(self._pending.values()):
            if pending.answered and self.shards.of(pending.room.room_id) is shard:
                self._pending.pop((pending.room.room_id, pending.client.client_id), None)
                self._place(pending)

    # -- what the node's clients do --------------------------------------------

    def left(self, client: Client, room: Room) -> None:
        """``client`` leaves ``room`` here (one of its rooms)."""
        many.drop(client, room)
        self.local.stop_receiving(client, room)
        self.unref(room)

    def gone(self, client: Client) -> None:
        """``client`` disconnected."""
        self.local.stop_receiving(client)
        self.cancel(client)
        rooms = many.rooms_of(client)
        client.room = client.others = None
        for room in rooms:
            self.unref(room)

    def replied(self, client: Client) -> None:
        """The adapter has sent ``client`` its reply: what waited follows it."""
        holding = client.sink
        if isinstance(holding, _Holding):
            client.sink = holding.sink
            for frame in holding.frames:
                try:
                    holding.sink.deliver(frame)
                except Exception:
                    self._disconnect(client, self.clock.seconds())
                    break

    def out_of(self, client: Client, room: Room) -> None:
        """``client`` is no longer in ``room`` (Redis says so)."""
        self.local.stop_receiving(client, room)
        if many.is_in(client, room):
            many.drop(client, room)
            self.unref(room)

    def subscribed(self, room_id: str) -> "Deferred[None]":
        """Take a reference on the room's channel; fires once it is subscribed."""
        self._refs[room_id] = self._refs.get(room_id, 0) + 1
        subscribing: Optional[Deferred[None]] = None
        if room_id in self._subscriptions:
            waiting = self._subscriptions[room_id]
            if waiting is None:
                return succeed(None)
        else:
            waiting = self._subscriptions[room_id] = []
            subscribing = self.shards.of(room_id).subscribe(room_id)
        d: Deferred[None] = Deferred()
        waiting.append(d)
        if subscribing is not None:
            # Only now: the subscription may have settled already (failed at
            # once with the connection down), and this waiter must hear it.
            subscribing.addCallbacks(
                self._subscription_done, self._subscription_failed,
                callbackArgs=(room_id, waiting), errbackArgs=(room_id, waiting))
        return d

    def _subscription_done(self, _: Any, room_id: str, waiting: list[Deferred[None]]) -> None:
        if self._subscriptions.get(room_id) is waiting:
            self._subscriptions[room_id] = None
        for d in waiting:
            d.callback(None)

    def _subscription_failed(self, failure: Failure, room_id: str, waiting: list[Deferred[None]]) -> None:
        if self._subscriptions.get(room_id) is waiting:
            del self._subscriptions[room_id]
        for d in waiting:
            d.errback(Unavailable())

    def unref(self, room: Room) -> None:
        """Drop a reference on the room; the last one unsubscribes here."""
        room_id = room.room_id
        count = self._refs.get(room_id, 0) - 1
        if count > 0:
            self._refs[room_id] = count
            return
        self._refs.pop(room_id, None)
        self._subscriptions.pop(room_id, None)
        # Always: a subscription that failed half-way (Redis lost meanwhile)
        # is still on the backplane's list to renew at reconnection.
        self.shards.of(room_id).unsubscribe(room_id)
        self.local.forget(room)
        if self.batches is not None:
            self.batches.release(room_id)

    def expect(self, client: Client, room: Room, keep: bool = False) -> _Pending:
        pending = _Pending(client, room, keep)
        self._pending[(room.room_id, client.client_id)] = pending
        self._pending_of[client.client_id] = pending
        return pending

    def _place(self, pending: _Pending) -> None:
        """The room's channel has carried the client's join: it receives from here on."""
        if pending.cancelled:
            return
        pending.placed = True
        client = pending.client
        old = client.room
        if old is not None and old is not pending.room and not pending.keep:
            self.local.stop_receiving(client, old)  # the seed's way: nothing more from the room it leaves
        self.local.receive_in(client, pending.room)
        if not pending.answered and not isinstance(client.sink, _Holding):
            client.sink = _Holding(client.sink)
        self._done_if_complete(pending)

    def answered(self, pending: _Pending, same: bool = False) -> bool:
        """Redis said yes: the client is in the room (``same``: it was
        already).  False if it went meanwhile."""
        client = pending.client
        if same:
            self._pending.pop((pending.room.room_id, client.client_id), None)
            pending.placed = True
            self.local.receive_in(client, pending.room)
            if many.is_in(client, pending.room):
                self.unref(pending.room)  # the client holds its reference on the room already
        if pending.cancelled:
            return False
        old = client.room
        if old is not None and old is not pending.room and not pending.keep:
            # The seed's way: out of the room it was in (only that one).
            self.local.stop_receiving(client, old)
            client.room = None  # left, not kept
            self.unref(old)
        many.make_current(client, pending.room)
        pending.answered = True
        if pending.kicked:
            self.out_of(client, pending.room)  # and out of it again (_kicked)
        self._done_if_complete(pending)
        return True

    def _done_if_complete(self, pending: _Pending) -> None:
        if pending.placed and pending.answered:
            if self._pending_of.get(pending.client.client_id) is pending:
                del self._pending_of[pending.client.client_id]

    def abandon(self, pending: _Pending) -> None:
        """A join or create that did not happen: its reference goes."""
        key = (pending.room.room_id, pending.client.client_id)
        if self._pending.get(key) is pending:
            del self._pending[key]
        if self._pending_of.get(pending.client.client_id) is pending:
            del self._pending_of[pending.client.client_id]
        if not pending.cancelled:
            pending.cancelled = True
            self.unref(pending.room)

    def cancel(self, client: Client) -> None:
        pending = self._pending_of.pop(client.client_id, None)
        if pending is not None and not pending.answered:
            self.abandon(pending)
        elif pending is not None:
            pending.cancelled = True
            self._pending.pop((pending.room.room_id, client.client_id), None)

    def failed(self, failure: Failure, pending: _Pending) -> Failure:
        self.abandon(pending)
        return failure
