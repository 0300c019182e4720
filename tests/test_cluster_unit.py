"""ClusterChat's bookkeeping with a fake backplane: no Redis, no sockets."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from chatd.backplane import scripts
from chatd.backplane.batches import HOLD_LIMIT
from chatd.backplane.cluster import ClusterChat
from chatd.backplane.shards import Shards
from chatd.delivery.local import LocalRooms
from chatd.core import ChatCore, CoreEvents
from chatd.errors import Unavailable
from chatd.delivery.frames import text_frame
from chatd.delivery.outbox import Flusher, Outbox
from tests.fakes import FakeSink, server_frames


class LosingBackplane:
    """Redis is lost while the node subscribes."""

    node = "node-1"
    available = connected = True

    def __init__(self) -> None:
        self.unsubscribed: list[str] = []

    def subscribe(self, room_id: str) -> "Deferred[None]":
        return fail(Unavailable())

    def unsubscribe(self, room_id: str) -> None:
        self.unsubscribed.append(room_id)

    def call(self, script: str, *args: Any) -> "Deferred[Any]":
        raise AssertionError("no script runs without the subscription")


def test_a_subscription_lost_half_way_is_dropped_and_the_room_forgotten() -> None:
    core, backplane = ChatCore(), LosingBackplane()
    chat = ClusterChat(core, Shards([backplane]), Clock(), refuse=lambda client: None)  # type: ignore[arg-type]
    client = core.connect(FakeSink())
    failures: list[Any] = []
    chat.join(client, "ab12cd34").addErrback(failures.append)  # type: ignore[union-attr]
    assert failures and failures[0].check(Unavailable)
    # Not left on the backplane's list to renew after a reconnection.
    assert backplane.unsubscribed == ["ab12cd34"]
    assert core.rooms == {} and client.room is None


class RecordingBackplane:
    """Records every script call; Redis answers when the test says."""

    node = "node-1"
    available = connected = True

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], Deferred[Any]]] = []

    def call(self, script: str, *args: Any) -> "Deferred[Any]":
        d: Deferred[Any] = Deferred()
        self.calls.append((script, args, d))
        return d

    def unsubscribe(self, room_id: str) -> None:
        pass


def in_room(core: ChatCore, room_id: str) -> Any:
    client = core.connect(FakeSink())
    place(core, client, room_id)
    return client


def place(core: ChatCore, client: Any, room_id: str) -> None:
    """As a node has a client once its join is done."""
    local = LocalRooms(core)
    room = local.room(room_id)
    client.room = room
    local.receive_in(client, room)


def test_a_rooms_messages_of_one_iteration_go_to_redis_in_one_call_in_order() -> None:
    core, backplane, clock = ChatCore(), RecordingBackplane(), Clock()
    chat = ClusterChat(core, Shards([backplane]), clock, refuse=lambda client: None)  # type: ignore[arg-type]
    a, b, c = in_room(core, "room-one"), in_room(core, "room-one"), in_room(core, "room-two")
    replies: list[Any] = []
    for client, body in ((a, "1"), (b, "2"), (c, "3"), (a, "4")):
        chat.submit(client, body, 0.0).addBoth(replies.append)
    assert backplane.calls == []  # gathered until the end of the iteration
    clock.advance(0)
    [(script_one, one, reply_one), (script_two, two, reply_two)] = backplane.calls
    assert script_one == script_two == scripts.PUBLISH
    assert one[:2] == ("node-1", "room-one") and two[:2] == ("node-1", "room-two")
    assert [one[i] for i in range(4, len(one), 3)] == [a.client_id, b.client_id, a.client_id]
    assert [json.loads(one[i + 1] + b"0" + one[i + 2])["body"] for i in range(4, len(one), 3)] == ["1", "2", "4"]
    # Each message gets its own answer: an id, or -1 (not in the room in
    # Redis any more) as "unavailable".
    reply_one.callback([7, -1, 8])
    reply_two.callback([1])
    assert [r if isinstance(r, dict) else r.value.message for r in replies] == [
        {"status": "success", "message": "Message sent"},
        "Service temporarily unavailable",
        {"status": "success", "message": "Message sent"},
        {"status": "success", "message": "Message sent"},
    ]


def test_a_message_whose_bookkeeping_fails_fails_alone() -> None:
    class BrokenLog(CoreEvents):
        def message_sent(self, room: Any, sender: Any, message: Any, recipients: int, size: int) -> None:
            if message["body"] == "poison":
                raise OSError("disk full")

    core, backplane, clock = ChatCore(events=BrokenLog()), RecordingBackplane(), Clock()
    chat = ClusterChat(core, Shards([backplane]), clock, refuse=lambda client: None)  # type: ignore[arg-type]
    a = in_room(core, "room-one")
    replies: list[Any] = []
    for body in ("1", "poison", "3"):
        chat.submit(a, body, 0.0).addBoth(replies.append)
    clock.advance(0)
    [(_, _, answer)] = backplane.calls
    answer.callback([1, 2, 3])
    assert replies[0] == replies[2] == {"status": "success", "message": "Message sent"}
    assert replies[1].check(OSError)  # the adapter answers it as an internal error


def test_a_command_after_a_message_reaches_redis_after_it() -> None:
    core, backplane, clock = ChatCore(), RecordingBackplane(), Clock()
    chat = ClusterChat(core, Shards([backplane]), clock, refuse=lambda client: None)  # type: ignore[arg-type]
    a = in_room(core, "room-one")
    chat.submit(a, "last words", 0.0)
    chat.disconnect(a, 0.0)  # in the same iteration
    assert [call[0] for call in backplane.calls] == [scripts.PUBLISH, scripts.UNREGISTER]
    clock.advance(0)
    assert len(backplane.calls) == 2


class CountedDeliveries(CoreEvents):
    def __init__(self) -> None:
        self.counted: list[tuple[int, int]] = []

    def delivered(self, copies: int, size: int) -> None:
        self.counted.append((copies, size))


def test_a_batch_from_the_channel_reaches_the_local_members_in_order() -> None:
    events = CountedDeliveries()
    core, clock = ChatCore(events=events), Clock()
    chat = ClusterChat(core, Shards([RecordingBackplane()]), clock, refuse=lambda client: None)  # type: ignore[arg-type]
    here, there = in_room(core, "room-one"), in_room(core, "room-one")
    chat.channel_message("room-one", b"M5 aaaa1111 {\"n\": 5}\n6 aaaa1111 {\"n\": 6}\n7 bbbb2222 {\"n\": 7}")
    assert here.sink.received == there.sink.received == [{"n": 5}, {"n": 6}, {"n": 7}]
    assert core.rooms["room-one"].last_id == 7
    # Counted once for the batch: three messages to two members, 8 bytes each.
    assert events.counted == [(6, 48)]


def pubsub(channel: bytes, message: bytes) -> bytes:
    """A pub/sub message as Redis sends it (RESP)."""
    return b"*3\r\n$7\r\nmessage\r\n" + b"".join(
        b"$%d\r\n%s\r\n" % (len(part), part) for part in (channel, message)
    )


def test_the_subscriber_tells_a_message_alone_in_its_read(fast_path_on: object) -> None:
    from types import SimpleNamespace

    from chatd.backplane.redis import _Subscriber

    got: list[tuple[bytes, bool]] = []
    subscriber = _Subscriber(None, convertNumbers=False)  # as the backplane makes it
    subscriber.factory = SimpleNamespace(  # type: ignore[attr-defined]
        backplane=SimpleNamespace(_message=lambda channel, message, alone: got.append((message, alone))))
    one, two = pubsub(b"chatd:r:x", b"M1 a {}"), pubsub(b"chatd:r:x", b"M2 a {}")
    subscriber.dataReceived(one)
    subscriber.dataReceived(one + two)
    subscriber.dataReceived(two[:10])
    subscriber.dataReceived(two[10:])
    assert got == [(b"M1 a {}", True), (b"M1 a {}", False), (b"M2 a {}", False), (b"M2 a {}", True)]


def test_a_lone_broadcast_from_redis_is_handled_at_once_and_the_rest_is_not() -> None:
    from chatd.backplane.address import parse_url
    from chatd.backplane.redis import PREFIX, RedisBackplane

    at_once: list[bytes] = []

    def send_now(function: Any, *args: Any) -> Any:
        at_once.append(args[1])
        return function(*args)

    core, clock = ChatCore(), Clock()
    chat = ClusterChat(core, Shards([RecordingBackplane()]), clock, refuse=lambda client: None)  # type: ignore[arg-type]
    backplane = RedisBackplane(parse_url("redis://localhost"), clock, at_once=send_now)
    backplane._listener = chat
    here = in_room(core, "room-one")
    channel = f"{PREFIX}r:room-one".encode()
    backplane._message(channel, b'M1 aaaa1111 {"n": 1}', alone=True)
    backplane._message(channel, b'M2 aaaa1111 {"n": 2}', alone=False)
    backplane._message(channel, b'M3 aaaa1111 {"n": 3}\n4 aaaa1111 {"n": 4}', alone=True)
    backplane._message(channel, b"enick aaaa1111 0 Ada", alone=True)
    # Only a single broadcast goes out at once; a batch, or an event, at the
    # end of the iteration.
    assert at_once == [b'M1 aaaa1111 {"n": 1}']
    assert [m["n"] for m in here.sink.received] == [1, 2, 3, 4]


def test_every_script_is_in_the_list_loaded_on_connecting() -> None:
    defined = {
        name for name, value in vars(scripts).items()
        if name.isupper() and not name.startswith("_") and isinstance(value, str)
        and value.startswith(scripts._PRELUDE)
    }
    assert {name for name in defined if getattr(scripts, name) in scripts.ALL} == defined
    assert len(scripts.ALL) == len(defined)


def test_a_sentinel_url_names_the_sentinels_and_the_service() -> None:
    from chatd.backplane.address import parse_url

    address = parse_url("sentinel://:s%40cret@10.0.0.1:26379,[::1]:26380/chatd/2")
    assert (address.sentinels, address.service, address.db, address.password) == (
        (("10.0.0.1", 26379), ("::1", 26380)), "chatd", 2, "s@cret")
    assert str(address) == "sentinel://10.0.0.1:26379,::1:26380/chatd/2"


class WritingSink(Outbox):
    """A connection's outbox whose writes are recorded."""

    STATE_OPEN = 1
    state = 1

    def __init__(self, flusher: Flusher) -> None:
        self.flusher = flusher
        self._to_flush = flusher.to_flush
        self.writes: list[bytes] = []

    def _write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self, code: int, reason: str) -> None:
        pass


def holding_node() -> tuple[ChatCore, RecordingBackplane, Clock, ClusterChat, Any, WritingSink]:
    """A node whose members' frames go through a Flusher: a sender, and a
    member whose writes are recorded."""
    core, backplane, clock = ChatCore(prepare=text_frame, join=b"".join), RecordingBackplane(), Clock()
    flusher = Flusher(clock)
    chat = ClusterChat(core, Shards([backplane]), clock, refuse=lambda client: None,  # type: ignore[arg-type]
                       flusher=flusher)
    sender = in_room(core, "room-one")
    member = core.connect(WritingSink(flusher))
    place(core, member, "room-one")
    return core, backplane, clock, chat, sender, member.sink


def batch(sender: Any, *ids: int) -> bytes:
    return b"M" + b"\n".join(b'%d %s {"n": %d}' % (i, sender.client_id.encode(), i) for i in ids)


def payloads(writes: list[bytes]) -> list[list[int]]:
    """The message numbers in each write."""
    return [[json.loads(payload)["n"] for _, payload in server_frames(data)] for data in writes]


def test_under_load_a_batch_waits_for_the_rooms_next_and_both_go_in_one_write() -> None:
    core, backplane, clock, chat, sender, member = holding_node()
    chat.submit(sender, "1", 0.0)
    clock.advance(0)  # batch A is with Redis
    chat.submit(sender, "2", 0.0)
    clock.advance(0)  # batch B gathers behind it
    [(_, _, reply_a)] = backplane.calls
    # A comes back on the channel before its reply: B is still to go, so
    # the member's frames wait.
    chat.channel_message("room-one", batch(sender, 1))
    clock.advance(0)
    assert member.writes == []
    reply_a.callback([1])  # A lands, B goes to Redis: the frames wait on
    clock.advance(0)
    assert member.writes == [] and len(backplane.calls) == 2
    chat.channel_message("room-one", batch(sender, 2))
    clock.advance(0)
    assert payloads(member.writes) == [[1, 2]]
    backplane.calls[1][2].callback([2])
    clock.advance(0)
    assert payloads(member.writes) == [[1, 2]]


def one_batch_waiting() -> tuple[ChatCore, RecordingBackplane, Clock, ClusterChat, Any, WritingSink]:
    """A node whose one batch came back on the channel before its reply:
    the member's frames wait."""
    core, backplane, clock, chat, sender, member = holding_node()
    chat.submit(sender, "1", 0.0)
    clock.advance(0)
    chat.channel_message("room-one", batch(sender, 1))
    clock.advance(0)
    assert member.writes == []
    return core, backplane, clock, chat, sender, member


def test_frames_wait_no_longer_than_the_last_batch_on_its_way() -> None:
    core, backplane, clock, chat, sender, member = one_batch_waiting()
    backplane.calls[0][2].callback([1])  # nothing follows it
    clock.advance(0)
    assert payloads(member.writes) == [[1]]


def test_a_batch_that_never_comes_back_holds_nothing_for_long() -> None:
    core, backplane, clock, chat, sender, member = one_batch_waiting()
    clock.advance(HOLD_LIMIT)  # Redis does not answer
    assert payloads(member.writes) == [[1]]
    backplane.calls[0][2].callback([1])
    clock.advance(0)
    assert payloads(member.writes) == [[1]]


def test_an_event_or_losing_redis_sends_the_waiting_frames_first() -> None:
    core, backplane, clock, chat, sender, member = one_batch_waiting()
    chat.channel_message("room-one", b"enick " + sender.client_id.encode() + b" 0 Ada")
    clock.advance(0)
    assert payloads(member.writes) == [[1]]
    chat.submit(member_client(core, member), "2", 0.0)
    clock.advance(0)
    chat.channel_message("room-one", batch(sender, 2))
    clock.advance(0)
    assert len(member.writes) == 1
    chat.backplane_down()
    clock.advance(0)
    assert payloads(member.writes[1:]) == [[2]]


def test_a_quiet_rooms_batch_does_not_wait() -> None:
    core, backplane, clock, chat, sender, member = holding_node()
    chat.channel_message("room-one", batch(sender, 1, 2))  # from another node; nothing of ours with Redis
    clock.advance(0)
    assert payloads(member.writes) == [[1, 2]]


def member_client(core: ChatCore, sink: WritingSink) -> Any:
    return next(client for client in core.clients.values() if client.sink is sink)
