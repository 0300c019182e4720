"""
A cluster node's chat messages on their way through Redis, and their frames
on their way back: the one home of when they leave.

- **gather**: the messages a node's clients send to one room in one reactor
  iteration wait for its end;
- **send**: then each room's go in one ``PUBLISH`` script call (or a few,
  for a very long batch); while a room's batch is with Redis, its next
  messages wait for the answer (group commit), and any other command of
  the node sends them all first (``send_all``), so that they reach Redis
  in the order the clients sent them;
- **hold**: the members' frames of a batch that arrives on the room's
  channel while another batch of the room is with Redis wait for the room's
  next batch, so that the members get both in one write;
- **release**: the held frames go, at the end of this reactor iteration.

docs/scaling.md, "Batches", gives the figures behind each.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatd import codec
from chatd.backplane import scripts
from chatd.backplane.shards import Shards
from chatd.chat import Answer
from chatd.core import ChatCore
from chatd.delivery.local import LocalRooms
from chatd.delivery.outbox import Flusher
from chatd.errors import Unavailable
from chatd.rooms.state import Client, Room

#: Messages to one room sent to Redis in one script call, at most.
MAX_BATCH = 100
#: The longest a room's frames wait for its next batch (Redis slow to
#: answer), in seconds; a batch's landing ends the wait sooner.
HOLD_LIMIT = 0.05


class _Outgoing:
    """A chat message in the outbox: what its id and reply need later."""

    __slots__ = ("client", "room", "body", "ts", "head", "tail", "answer")

    def __init__(
        self, client: Client, room: Room, body: Any, ts: str, head: bytes, tail: bytes, answer: Answer,
    ) -> None:
        self.client = client
        self.room = room
        self.body = body
        self.ts = ts
        self.head = head  # the encoded message before its id, and after
        self.tail = tail
        # Called with the sender's reply (or a Failure) and the client: no
        # Deferred per message, at hundreds of thousands a second.
        self.answer = answer


class _Hold:
    """A room's members' frames waiting for the room's next batch."""

    __slots__ = ("landed",)

    def __init__(self) -> None:
        self.landed = False  # one of the node's batches has landed since


class RoomBatches:
    """Gathers, sends, holds and releases one node's room batches."""

    _log = Logger()

    def __init__(
        self,
        core: ChatCore,
        local: LocalRooms,
        shards: Shards,
        clock: IReactorTime,
        run: Callable[..., "Deferred[Any]"],
        as_chat_error: Callable[[Failure], Failure],
        flusher: Optional[Flusher] = None,
    ) -> None:
        self.core = core
        self.local = local  # who receives a room's batch here
        self.shards = shards
        self.clock = clock
        self._run = run  # a script call on a shard in step
        self._as_chat_error = as_chat_error
        # What sends the members' frames; with it, a batch from the channel
        # may wait for the room's next one (deliver).
        self._flusher = flusher
        # Chat messages on their way to Redis, by room: those of this
        # reactor iteration, and those held while the room's previous batch
        # is still with Redis (see send).
        self._outbox: dict[str, list[_Outgoing]] = {}
        self._in_flight: dict[str, int] = {}  # PUBLISH calls awaiting Redis, by room
        self._send_due = False
        # Rooms whose members' frames wait for the room's next batch.
        self._holds: dict[str, _Hold] = {}
        #: The store of persistent rooms (None: none): a persistent room's
        #: message is acknowledged once it has it.
        self.durable: Optional[Any] = None

    def gather(self, client: Client, room: Room, body: Any, ts: str, answer: Answer) -> None:
        """A chat message, with the room's others of this reactor iteration:
        one script call and one PUBLISH for all of them (send), and their
        replies settled in one pass."""
        head, tail = codec.broadcast_parts(client.client_id, body, ts, client.nick, client.user)
        room_id = room.room_id
        batch = self._outbox.get(room_id)
        if batch is None:
            batch = self._outbox[room_id] = []
        batch.append(_Outgoing(client, room, body, ts, head, tail, answer))
        if not self._send_due and room_id not in self._in_flight:
            self._send_due = True
            self.clock.callLater(0, self.send)

    def send_all(self) -> None:
        """Everything gathered goes now, held messages too."""
        if self._outbox:
            self.send(everything=True)

    def send(self, everything: bool = False) -> None:
        """
        Send each room's gathered messages in one script call (or a few, for
        a very long batch), in the order they were published.

        A room whose previous batch is still with Redis keeps its messages
        until that batch's answer (group commit): under load a room's
        messages then go in batches as large as one round trip gathers,
        which each member receives in one write, instead of in a batch per
        reactor iteration; a quiet room's message goes at the end of the
        iteration as before.  ``everything``: held ones too (another command
        is about to follow them).
        """
        self._send_due = False
        outbox, self._outbox = self._outbox, {}
        for room_id, messages in outbox.items():
            if everything or room_id not in self._in_flight:
                self._send_room(room_id, messages)
            else:
                self._outbox[room_id] = messages

    def _send_room(self, room_id: str, messages: list[_Outgoing]) -> None:
        limits = self.core.limits
        shard = self.shards.of(room_id)
        for start in range(0, len(messages), MAX_BATCH):
            batch = messages[start : start + MAX_BATCH]
            args: list[Any] = [self.shards.node, room_id, limits.history_size, limits.history_bytes]
            for message in batch:
                args += (message.client.client_id, message.head, message.tail)
            self._in_flight[room_id] = self._in_flight.get(room_id, 0) + 1
            d = self._run(shard, scripts.PUBLISH, *args)
            d.addCallback(self._published, batch)
            d.addErrback(self._as_chat_error)
            d.addErrback(self._not_published, batch)
            d.addBoth(self._landed, room_id)

    def _landed(self, _: Any, room_id: str) -> None:
        """Redis has answered one of the room's batches: what it held goes now."""
        count = self._in_flight[room_id] - 1
        if count:
            self._in_flight[room_id] = count
            return
        del self._in_flight[room_id]
        held = self._outbox.pop(room_id, None)
        if held:
            self._send_room(room_id, held)
        hold = self._holds.get(room_id)
        if hold is not None:
            if held and not hold.landed:
                hold.landed = True  # the frames wait for the batch just sent, once
            else:
                self._end_hold(room_id)  # nothing more of this node's is coming

    def _published(self, ids: list[Any], batch: list[_Outgoing]) -> None:
        if len(ids) != len(batch):
            raise RuntimeError(f"PUBLISH gave {len(ids)} ids for {len(batch)} messages")
        events, durable = self.core.events, self.durable
        kept: list[_Outgoing] = []
        for message, message_id in zip(batch, ids, strict=True):
            message_id = int(message_id)
            try:
                if message_id < 0:
                    raise Unavailable()  # Redis has lost the membership: a resync is due
                client = message.client
                sent = codec.broadcast(
                    client.client_id, message.body, message.ts, message_id, client.nick, client.user)
                size = len(message.head) + len(str(message_id)) + len(message.tail)
                events.message_sent(message.room, client, sent, 0, size)
                if durable is not None and message.room.persistent:
                    durable.append(message.room.room_id, message.room.name, sent)  # or StoreUnavailable
                    kept.append(message)
                    continue
            except Exception:
                self._answer(message, Failure())  # this message's sender hears of it; the rest go on
            else:
                self._answer(message, codec.MESSAGE_SENT)
        if kept and durable is not None:
            # Acknowledged once the store has them (delivered already, as Redis published them).
            durable.synced().addBoth(self._answer_all, kept)

    def _answer_all(self, result: Any, messages: list[_Outgoing]) -> None:
        reply = codec.MESSAGE_SENT if not isinstance(result, Failure) else result
        for message in messages:
            self._answer(message, reply)

    def _not_published(self, failure: Failure, batch: list[_Outgoing]) -> None:
        for message in batch:
            self._answer(message, failure)

    def _answer(self, message: _Outgoing, result: Any) -> None:
        try:
            message.answer(result, message.client)
        except Exception:
            self._log.failure("Answering a message failed")

    def deliver(self, room: Room, messages: list[tuple[str, bytes]], now: float) -> list[int]:
        """
        A batch from the channel to the room's members here.  While another
        batch of the room is with Redis, their frames wait for it (at most
        until that batch lands, or HOLD_LIMIT): the members then get both in
        one write.  Under load a node's batches alternate (one with Redis
        while the next gathers), and without the wait each member would get
        half as many frames per write, at twice the system calls per
        delivery.  A quiet room's lone message never waits.
        """
        room_id, deliver, flusher = room.room_id, self.local.deliver_batch, self._flusher
        if room_id in self._holds:
            counts = deliver(room, messages, now)
            self._end_hold(room_id)  # this is the batch the frames waited for
            return counts
        if flusher is None or room_id not in self._in_flight:
            return deliver(room, messages, now)  # nothing more of the room's on its way
        counts = flusher.hold(room_id, deliver, room, messages, now)
        if flusher.holding(room_id):
            hold = self._holds[room_id] = _Hold()
            self.clock.callLater(HOLD_LIMIT, self._hold_expired, room_id, hold)
        return counts

    def _end_hold(self, room_id: str) -> None:
        """The room's waiting frames leave at the end of this iteration."""
        del self._holds[room_id]
        if self._flusher is not None:
            self._flusher.release(room_id)

    def _hold_expired(self, room_id: str, hold: _Hold) -> None:
        if self._holds.get(room_id) is hold:
            self._end_hold(room_id)

    def release(self, room_id: str) -> None:
        """The room's held frames, if any, wait no more."""
        if room_id in self._holds:
            self._end_hold(room_id)

    def release_all(self) -> None:
        """Nothing waits for a batch from Redis (it is gone)."""
        for room_id in list(self._holds):
            self._end_hold(room_id)
