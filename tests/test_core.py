"""
The room rules, without sockets: fake sinks and explicit time.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from chatd.delivery.local import LocalRooms
from chatd.core import ChatCore, CoreEvents
from chatd.rooms.state import random_id
from chatd.errors import NotInRoom, RoomNotFound
from tests.fakes import FakeSink, GoneSink, SequentialIds

NOW = 1_764_142_000.25  # 2025-11-26T07:26:40.250Z


def make_core(*ids: str) -> ChatCore:
    return ChatCore(new_id=SequentialIds(*ids)) if ids else ChatCore()


def test_connect_assigns_eight_character_ids() -> None:
    core = ChatCore()
    client = core.connect(FakeSink())
    assert len(client.client_id) == 8
    assert core.clients == {client.client_id: client}


def test_random_id_is_eight_hex_characters_from_a_uuid() -> None:
    value = random_id()
    assert len(value) == 8
    int(value, 16)


def test_random_ids_go_on_past_each_chunk_of_random_bytes() -> None:
    # 4 KiB of system randomness serves 1024 IDs; the next are drawn afresh.
    values = [random_id() for _ in range(2500)]
    assert all(len(value) == 8 for value in values)
    assert len(set(values)) > 2490  # 32 random bits each: a repeat or two at most


def test_a_forked_process_draws_other_ids_than_its_parent() -> None:
    random_id()  # the parent holds random bytes it has not used yet
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next IDs, for the parent to compare
        os.write(write, "".join(random_id() for _ in range(4)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode()
    assert child != "".join(random_id() for _ in range(4))


def test_client_id_collisions_are_retried() -> None:
    core = make_core("aaaaaaaa", "aaaaaaaa", "bbbbbbbb")
    first = core.connect(FakeSink())
    second = core.connect(FakeSink())
    assert (first.client_id, second.client_id) == ("aaaaaaaa", "bbbbbbbb")


def test_room_id_collisions_are_retried_but_room_and_client_ids_are_separate() -> None:
    # Client "c1" and room "c1" may coexist; two live rooms may not share an ID.
    core = make_core("c1", "c1", "c2", "c1", "r2")
    a = core.connect(FakeSink())
    core.create(a, "one", NOW)
    b = core.connect(FakeSink())
    assert core.create(b, "two", NOW)["room_id"] == "r2"
    assert set(core.rooms) == {"c1", "r2"}


def test_broken_id_source_raises_instead_of_looping_forever() -> None:
    core = ChatCore(new_id=lambda: "same")
    core.connect(FakeSink())
    with pytest.raises(RuntimeError):
        core.connect(FakeSink())


def test_create_reply_and_creator_is_a_member() -> None:
    core = make_core("alice001", "room0001")
    alice = core.connect(FakeSink())
    reply = core.create(alice, "Game Night", NOW)
    assert reply == {
        "status": "success",
        "room_id": "room0001",
        "message": "Room 'Game Night' created",
    }
    assert list(reply) == ["status", "room_id", "message"]
    room = core.rooms["room0001"]
    assert room.members == {"alice001": alice}
    assert (room.name, room.created_by, room.created_at) == (
        "Game Night",
        "alice001",
        "2025-11-26T07:26:40.250Z",
    )


def test_join_reply_key_order_and_text() -> None:
    core = make_core("alice001", "room0001", "bob00002")
    alice = core.connect(FakeSink())
    core.create(alice, "Game Night", NOW)
    bob = core.connect(FakeSink())
    reply = core.join(bob, "room0001")
    assert list(reply.items()) == [
        ("status", "success"),
        ("message", "Joined room 'Game Night'"),
        ("room_id", "room0001"),
    ]
    assert set(core.rooms["room0001"].members) == {"alice001", "bob00002"}


def test_join_unknown_room() -> None:
    core = ChatCore()
    client = core.connect(FakeSink())
    with pytest.raises(RoomNotFound) as caught:
        core.join(client, "nope1234")
    assert caught.value.message == "Room nope1234 does not exist"


def test_create_leaves_previous_room_and_deletes_it_when_empty() -> None:
    core = make_core("alice001", "room0001", "room0002")
    alice = core.connect(FakeSink())
    core.create(alice, "one", NOW)
    core.create(alice, "two", NOW)
    assert list(core.rooms) == ["room0002"]
    assert alice.room is core.rooms["room0002"]


def test_join_moves_the_client_between_rooms() -> None:
    core = make_core("alice001", "room0001", "bob00002", "room0002")
    alice = core.connect(FakeSink())
    core.create(alice, "one", NOW)
    bob = core.connect(FakeSink())
    core.create(bob, "two", NOW)
    core.join(alice, "room0002")
    # "one" lost its last member and is gone; alice is only in "two".
    assert list(core.rooms) == ["room0002"]
    assert set(core.rooms["room0002"].members) == {"alice001", "bob00002"}


def test_joining_your_own_room_again_is_a_no_op_success() -> None:
    # Leaving first would delete a room whose only member is rejoining it.
    core = make_core("alice001", "room0001")
    alice = core.connect(FakeSink())
    core.create(alice, "solo", NOW)
    assert core.join(alice, "room0001")["message"] == "Joined room 'solo'"
    assert core.rooms["room0001"].members == {"alice001": alice}


def test_leave() -> None:
    core = make_core("alice001", "room0001", "bob00002")
    alice = core.connect(FakeSink())
    core.create(alice, "r", NOW)
    bob = core.connect(FakeSink())
    core.join(bob, "room0001")
    assert core.leave(alice) == {"status": "success", "message": "Left room"}
    # The creator leaving does not delete a room others are in.
    assert set(core.rooms["room0001"].members) == {"bob00002"}
    core.leave(bob)
    assert core.rooms == {}
    with pytest.raises(RoomNotFound):
        core.join(alice, "room0001")


def test_leave_when_not_in_a_room() -> None:
    core = ChatCore()
    client = core.connect(FakeSink())
    with pytest.raises(NotInRoom) as caught:
        core.leave(client)
    assert caught.value.message == "Not in any room"


def test_message_when_not_in_a_room() -> None:
    core = ChatCore()
    client = core.connect(FakeSink())
    with pytest.raises(NotInRoom) as caught:
        core.message(client, "hi", NOW)
    assert caught.value.message == "You must join a room first"


def three_in_a_room() -> tuple[ChatCore, list]:
    core = make_core("alice001", "room0001", "bob00002", "carol003", "dave0004", "room0002")
    sinks = [FakeSink() for _ in range(3)]
    alice = core.connect(sinks[0])
    core.create(alice, "r", NOW)
    bob = core.connect(sinks[1])
    carol = core.connect(sinks[2])
    core.join(bob, "room0001")
    core.join(carol, "room0001")
    return core, [(alice, sinks[0]), (bob, sinks[1]), (carol, sinks[2])]


def test_message_reaches_every_other_member_but_not_the_sender() -> None:
    core, [(alice, a), (bob, b), (carol, c)] = three_in_a_room()
    reply = core.message(alice, "Hello everyone!", NOW)
    assert reply == {"status": "success", "message": "Message sent"}
    expected = {"from": "alice001", "body": "Hello everyone!", "timestamp": "2025-11-26T07:26:40.250Z", "id": 1}
    assert b.received == [expected]
    assert c.received == [expected]
    assert a.frames == []
    # The seed's bytes (json.dumps key order and separators), then "id".
    assert b.frames[0] == (
        b'{"from": "alice001", "body": "Hello everyone!", '
        b'"timestamp": "2025-11-26T07:26:40.250Z", "id": 1}'
    )


def test_message_does_not_cross_rooms() -> None:
    core, [(alice, a), (bob, b), (carol, c)] = three_in_a_room()
    dave_sink = FakeSink()
    dave = core.connect(dave_sink)
    core.create(dave, "other", NOW)
    core.message(alice, "x", NOW)
    core.message(dave, "y", NOW)
    assert dave_sink.frames == []
    assert [m["body"] for m in b.received] == ["x"]


def test_body_is_passed_through_untouched() -> None:
    core, [(alice, a), (bob, b), _] = three_in_a_room()
    body = {"type": "custom", "nested": [1, 2.5, None, True, {"k": "\u00e9"}]}
    core.message(alice, body, NOW)
    core.message(alice, '{"encoded": "json string"}', NOW)
    assert [m["body"] for m in b.received] == [body, '{"encoded": "json string"}']


def test_broadcast_is_prepared_once_whatever_the_number_of_recipients() -> None:
    prepared: list[bytes] = []

    def prepare(payload: bytes) -> bytes:
        prepared.append(payload)
        return payload

    core = ChatCore(prepare=prepare)
    sender = core.connect(FakeSink())
    room_id = core.create(sender, "big", NOW)["room_id"]
    sinks = [FakeSink() for _ in range(50)]
    for sink in sinks:
        core.join(core.connect(sink), room_id)
    core.message(sender, "hi", NOW)
    assert len(prepared) == 1
    assert all(sink.frames == [prepared[0]] for sink in sinks)


def test_per_sender_order_is_kept() -> None:
    core, [(alice, a), (bob, b), (carol, c)] = three_in_a_room()
    for i in range(20):
        core.message(alice, i, NOW + i)
        core.message(bob, -i, NOW + i)
    assert [m["body"] for m in c.received if m["from"] == "alice001"] == list(range(20))
    assert [m["body"] for m in c.received if m["from"] == "bob00002"] == [-i for i in range(20)]


def test_disconnect_removes_client_and_empty_room() -> None:
    core, [(alice, a), (bob, b), (carol, c)] = three_in_a_room()
    core.disconnect(alice)
    core.disconnect(alice)  # idempotent
    assert "alice001" not in core.clients
    assert set(core.rooms["room0001"].members) == {"bob00002", "carol003"}
    core.disconnect(bob)
    core.disconnect(carol)
    assert core.rooms == {}
    assert core.clients == {}


def test_a_failing_sink_is_removed_and_the_others_still_receive() -> None:
    errors = []
    core = ChatCore(on_sink_error=lambda client, e: errors.append((client.client_id, e)))
    sender = core.connect(FakeSink())
    room_id = core.create(sender, "r", NOW)["room_id"]
    good1, bad, good2 = FakeSink(), FakeSink(fail_with=OSError("boom")), FakeSink()
    clients = [core.connect(s) for s in (good1, bad, good2)]
    for client in clients:
        core.join(client, room_id)
    core.message(sender, "one", NOW)
    core.message(sender, "two", NOW)
    assert [m["body"] for m in good1.received] == ["one", "two"]
    assert [m["body"] for m in good2.received] == ["one", "two"]
    assert [cid for cid, _ in errors] == [clients[1].client_id]
    assert bad.closed == (1011, "Internal error")
    assert clients[1].client_id not in core.clients
    assert clients[1].client_id not in core.rooms[room_id].members


def test_a_sink_that_is_gone_is_removed_quietly() -> None:
    errors: list = []
    core = ChatCore(on_sink_error=lambda client, e: errors.append(e))
    sender = core.connect(FakeSink())
    room_id = core.create(sender, "r", NOW)["room_id"]
    gone = GoneSink()
    gone_client = core.connect(gone)
    core.join(gone_client, room_id)
    core.message(sender, "x", NOW)
    assert errors == []
    assert gone.closed is None  # it is closing itself
    assert gone_client.client_id not in core.clients


def test_handle_dispatches_commands() -> None:
    from chatd.codec import Create, Join, Leave, Message

    core = make_core("alice001", "bob00002", "room0001")
    alice = core.connect(FakeSink())
    bob_sink = FakeSink()
    bob = core.connect(bob_sink)
    assert core.handle(alice, Create("r"), NOW)["room_id"] == "room0001"
    assert core.handle(bob, Join("room0001"), NOW)["status"] == "success"
    assert core.handle(alice, Message("m"), NOW)["message"] == "Message sent"
    assert core.handle(alice, Leave(), NOW)["message"] == "Left room"
    assert [m["body"] for m in bob_sink.received] == ["m"]


def test_a_cluster_nodes_view_has_a_receiver_in_its_rooms() -> None:
    core = ChatCore()
    local = LocalRooms(core)
    client = core.connect(FakeSink())
    first, second = local.room("r1"), local.room("r2")
    local.receive_in(client, first)
    local.receive_in(client, second)
    assert first.members[client.client_id] is client and second.members[client.client_id] is client
    local.stop_receiving(client, first)
    assert first.members == {} and client.receiving == {"r2": second}
    local.stop_receiving(client)
    assert second.members == {} and client.receiving is None


def test_a_batch_reaches_each_member_in_one_delivery_without_its_own_messages() -> None:
    # join=tuple: each delivery shows the frames it holds.
    core = ChatCore(join=tuple)
    local = LocalRooms(core)
    room = local.room("r1")
    ann, bob, cat, gone = (core.connect(sink) for sink in (FakeSink(), FakeSink(), FakeSink(), GoneSink()))
    for client in (ann, bob, cat, gone):
        local.receive_in(client, room)
    batch = [(ann.client_id, b"1"), ("elsewhere", b"2"), (ann.client_id, b"3"), (bob.client_id, b"4")]
    counts = local.deliver_batch(room, batch, NOW)
    assert cat.sink.frames == [(b"1", b"2", b"3", b"4")]
    assert ann.sink.frames == [(b"2", b"4")]
    assert bob.sink.frames == [(b"1", b"2", b"3")]
    # The member whose sink failed is counted for none of them.
    assert counts == [2, 3, 2, 2]


def test_without_join_a_batch_is_delivered_message_by_message() -> None:
    core = ChatCore()
    local = LocalRooms(core)
    room = local.room("r1")
    ann, bob = core.connect(FakeSink()), core.connect(FakeSink())
    for client in (ann, bob):
        local.receive_in(client, room)
    assert local.deliver_batch(room, [(ann.client_id, b"1"), ("x", b"2")], NOW) == [1, 2]
    assert bob.sink.frames == [b"1", b"2"] and ann.sink.frames == [b"2"]


class RecordedEvents(CoreEvents):
    def __init__(self) -> None:
        self.sent: list[tuple[Any, int]] = []

    def message_sent(self, room: Any, sender: Any, message: Any, recipients: int, size: int) -> None:
        self.sent.append((message["body"], recipients))


def test_gathered_broadcasts_reach_each_member_in_one_delivery_when_released() -> None:
    events = RecordedEvents()
    core = ChatCore(join=tuple, events=events, new_id=SequentialIds("ann00001", "room0001", "bob00001", "cat00001"))
    ann = core.connect(FakeSink())
    core.create(ann, "r", NOW)
    bob, cat = core.connect(FakeSink()), core.connect(GoneSink())
    core.join(bob, "room0001", NOW)
    core.join(cat, "room0001", NOW)
    core.gather()
    assert core.publish(ann, "1", NOW) == core.publish(ann, "2", NOW) == {"status": "success", "message": "Message sent"}
    assert bob.sink.frames == [] and events.sent == []  # waiting for release
    assert [m["body"] for m in core.recent(bob, 50, None)["messages"]] == ["1", "2"]  # in the history already
    core.end_gathering(NOW)
    [(one, two)] = bob.sink.frames
    assert [json.loads(one)["body"], json.loads(two)["body"]] == ["1", "2"]
    assert ann.sink.frames == []  # never its own
    # Counted once delivered: the member whose sink failed is not.
    assert events.sent == [("1", 1), ("2", 1)]
    assert "cat00001" not in core.clients
    # Released: the next one goes out at once.
    core.publish(ann, "3", NOW)
    assert len(bob.sink.frames) == 2 and events.sent[-1] == ("3", 1)


def test_flush_sends_what_is_gathered_and_goes_on_gathering() -> None:
    core = ChatCore(join=tuple, new_id=SequentialIds("ann00001", "room0001", "bob00001"))
    ann = core.connect(FakeSink())
    core.create(ann, "r", NOW)
    bob = core.connect(FakeSink())
    core.join(bob, "room0001", NOW)
    core.set_events(bob, True)
    core.gather()
    core.publish(ann, "before", NOW)
    core.fan_out_gathered(NOW)
    core.leave(ann, NOW)  # its event after its message, as it happened
    core.publish(bob, "alone", NOW)
    core.end_gathering(NOW)
    received = [json.loads(f[0] if isinstance(f, tuple) else f) for f in bob.sink.frames]
    assert [m.get("body", m.get("event")) for m in received] == ["before", "leave", "owner"]


def test_without_join_gathering_changes_nothing() -> None:
    core = ChatCore(new_id=SequentialIds("ann00001", "room0001", "bob00001"))
    ann = core.connect(FakeSink())
    core.create(ann, "r", NOW)
    bob = core.connect(FakeSink())
    core.join(bob, "room0001", NOW)
    core.gather()
    core.publish(ann, "now", NOW)
    assert [m["body"] for m in bob.sink.received] == ["now"]
    core.end_gathering(NOW)


def test_a_member_lost_while_told_of_a_leave_does_not_upset_the_owners_succession() -> None:
    # The last other member's connection fails as it is told the owner left
    # (its disconnect runs inside the delivery): the room goes with it.
    core = make_core("owner000", "member00", "room0000")
    owner = core.connect(FakeSink())
    room_id = core.create(owner, "Den", NOW)["room_id"]

    class Failing(FakeSink):
        def deliver(self, frame: Any) -> None:
            core.disconnect(member, NOW)

    member = core.connect(Failing())
    core.join(member, room_id, NOW)
    core.set_events(member, True)
    core.disconnect(owner, NOW)
    assert core.rooms == {} and core.clients == {}
