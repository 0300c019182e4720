"""
The features beyond the seed, in the core and codec, without
sockets: list, members, nick, history, events, rate limits.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from chatd import codec
from chatd.codec import Events, History, ListRooms, Members, Nick
from chatd.core import ChatCore
from chatd.rooms.history import MemoryHistory
from chatd.rooms.state import Limits
from chatd.errors import ChatError, NotInRoom, ProtocolError, RateLimited
from chatd.ratelimit import TokenBucket
from tests.fakes import FakeSink, SequentialIds

NOW = 1_764_142_000.0
NO_LIMITS = Limits(messages_per_second=0, creates_per_minute=0)


def decode(obj: Any) -> Any:
    return codec.decode(json.dumps(obj).encode())


def decode_error(obj: Any) -> str:
    with pytest.raises(ProtocolError) as caught:
        decode(obj)
    return caught.value.message


# -- codec -----------------------------------------------------------------


def test_new_actions_decode_with_defaults() -> None:
    assert decode({"action": "list"}) == ListRooms(50, None)
    assert decode({"action": "list", "body": {"limit": 5, "after": "12"}}) == ListRooms(5, "12")
    assert decode({"action": "members"}) == Members()
    assert decode({"action": "nick", "body": "  Ada  "}) == Nick("Ada")
    assert decode({"action": "history"}) == History(50, None)
    assert decode({"action": "history", "body": {"limit": 100, "before": 7}}) == History(100, 7)
    assert decode({"action": "events", "body": True}) == Events(True)
    assert decode({"action": "events", "body": False}) == Events(False)


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"action": "list", "body": 5}, 'List body must be an object like {"limit": 50, "after": "CURSOR"}'),
        ({"action": "list", "body": {"limit": 0}}, "'limit' must be a whole number from 1 to 100"),
        ({"action": "list", "body": {"limit": 101}}, "'limit' must be a whole number from 1 to 100"),
        ({"action": "list", "body": {"limit": True}}, "'limit' must be a whole number from 1 to 100"),
        ({"action": "list", "body": {"after": 3}}, "'after' must be the 'next' string of a previous list reply"),
        ({"action": "list", "body": {"after": "x1"}}, "'after' must be the 'next' string of a previous list reply"),
        ({"action": "list", "body": {"after": "9" * 5000}},
         "'after' must be the 'next' string of a previous list reply"),
        ({"action": "history", "body": {"limit": 2.5}}, "'limit' must be a whole number from 1 to 100"),
        ({"action": "history", "body": {"before": 0}}, "'before' must be a message id (a whole number of at least 1)"),
        ({"action": "history", "body": {"before": "5"}}, "'before' must be a message id (a whole number of at least 1)"),
        ({"action": "nick"}, "Nick must be a non-empty string"),
        ({"action": "nick", "body": "   "}, "Nick must be a non-empty string"),
        ({"action": "nick", "body": 5}, "Nick must be a non-empty string"),
        ({"action": "nick", "body": "x" * 33}, "Nick must be at most 32 characters"),
        ({"action": "nick", "body": "a\tb"}, "Nick must not contain control characters"),
        ({"action": "nick", "body": "a\u202eb"}, "Nick must not contain control characters"),
        ({"action": "nick", "body": "DeadBeef"}, "Nick must not look like a client ID"),
        ({"action": "events", "body": "yes"}, "Events body must be true or false"),
        ({"action": "events"}, "Events body must be true or false"),
    ],
)
def test_new_actions_reject_bad_bodies(obj: Any, message: str) -> None:
    assert decode_error(obj) == message


# -- list ------------------------------------------------------------------


def core_with_rooms(n: int) -> tuple[ChatCore, list]:
    core = ChatCore(limits=NO_LIMITS)
    owners = []
    for i in range(n):
        owner = core.connect(FakeSink())
        core.create(owner, f"room {i}", NOW + i)
        owners.append(owner)
    return core, owners


def test_list_pages_through_rooms_in_creation_order() -> None:
    core, owners = core_with_rooms(7)
    core.join(core.connect(FakeSink()), owners[0].room.room_id, NOW)
    first = core.list_rooms(limit=3)
    assert [r["name"] for r in first["rooms"]] == ["room 0", "room 1", "room 2"]
    assert first["rooms"][0] == {
        "room_id": owners[0].room.room_id, "name": "room 0", "members": 2,
        "created_at": codec.timestamp(NOW),
    }
    second = core.list_rooms(limit=3, after=first["next"])
    assert [r["name"] for r in second["rooms"]] == ["room 3", "room 4", "room 5"]
    # A room deleted between pages does not upset the cursor.
    core.leave(owners[6], NOW)
    core.leave(owners[4], NOW)
    third = core.list_rooms(limit=3, after=second["next"])
    assert third == {"status": "success", "rooms": []}
    assert "next" not in core.list_rooms(limit=100)


def test_list_reply_without_rooms() -> None:
    assert ChatCore().list_rooms() == {"status": "success", "rooms": []}


# -- members and nick ----------------------------------------------------------


def test_members_with_nicks_in_join_order() -> None:
    core = ChatCore(new_id=SequentialIds("alice001", "room0001", "bob00002", "carol003"), limits=NO_LIMITS)
    alice = core.connect(FakeSink())
    core.create(alice, "r", NOW)
    core.set_nick(alice, "Alice", NOW)
    bob = core.connect(FakeSink())
    core.join(bob, "room0001", NOW)
    assert core.members(alice) == {
        "status": "success", "room_id": "room0001",
        "members": [{"client_id": "alice001", "nick": "Alice", "role": "owner"},
                    {"client_id": "bob00002", "nick": None, "role": "member"}],
    }
    with pytest.raises(NotInRoom):
        core.members(core.connect(FakeSink()))


def test_nicks_are_unique_in_a_room_ignoring_case() -> None:
    core = ChatCore(limits=NO_LIMITS)
    a, b = core.connect(FakeSink()), core.connect(FakeSink())
    room_id = core.create(a, "r", NOW)["room_id"]
    core.join(b, room_id, NOW)
    assert core.set_nick(a, "Ada", NOW) == {"status": "success", "message": "Nick set to 'Ada'", "nick": "Ada"}
    with pytest.raises(ChatError, match="Nick 'ADA' is already taken in this room"):
        core.set_nick(b, "ADA", NOW)
    assert core.set_nick(a, "ada", NOW)["nick"] == "ada"  # your own, in another case


def test_joining_a_room_where_your_nick_is_taken_is_refused_and_you_stay_put() -> None:
    core = ChatCore(limits=NO_LIMITS)
    a, b = core.connect(FakeSink()), core.connect(FakeSink())
    room1 = core.create(a, "one", NOW)["room_id"]
    core.set_nick(a, "Ada", NOW)
    room2 = core.create(b, "two", NOW)["room_id"]
    core.set_nick(b, "ada", NOW)
    with pytest.raises(ChatError, match=f"Nick 'ada' is taken in room {room1}"):
        core.join(b, room1, NOW)
    assert b.room is not None and b.room.room_id == room2


def test_broadcasts_carry_the_nick_once_set() -> None:
    core = ChatCore(limits=NO_LIMITS)
    a, b_sink = core.connect(FakeSink()), FakeSink()
    b = core.connect(b_sink)
    room_id = core.create(a, "r", NOW)["room_id"]
    core.join(b, room_id, NOW)
    core.message(a, "before", NOW)
    core.set_nick(a, "Ada", NOW)
    core.message(a, "after", NOW)
    first, second = b_sink.received
    assert "nick" not in first
    assert second["nick"] == "Ada" and list(second) == ["from", "body", "timestamp", "id", "nick"]


# -- history -------------------------------------------------------------------


def room_with_messages(n: int, history: Any = None) -> tuple[ChatCore, Any, Any]:
    core = ChatCore(limits=Limits(messages_per_second=0, creates_per_minute=0, history_size=100), history=history)
    a, b = core.connect(FakeSink()), core.connect(FakeSink())
    room_id = core.create(a, "r", NOW)["room_id"]
    core.join(b, room_id, NOW)
    for i in range(n):
        core.message(a if i % 2 == 0 else b, f"m{i + 1}", NOW + i)
    return core, a, b


def test_history_is_the_recent_messages_oldest_first_in_the_broadcast_shape() -> None:
    core, a, b = room_with_messages(5)
    reply = core.recent(b, limit=3, before=None)
    assert reply["status"] == "success" and reply["room_id"] == a.room.room_id
    assert [m["body"] for m in reply["messages"]] == ["m3", "m4", "m5"]
    assert [m["id"] for m in reply["messages"]] == [3, 4, 5]
    assert reply["messages"][0] == {
        "from": a.client_id, "body": "m3", "timestamp": codec.timestamp(NOW + 2), "id": 3,
    }


def test_history_pages_backwards_with_before() -> None:
    core, a, b = room_with_messages(10)
    page = core.recent(a, limit=4, before=None)["messages"]
    seen = [m["id"] for m in page]
    while page:
        page = core.recent(a, limit=4, before=page[0]["id"])["messages"]
        seen = [m["id"] for m in page] + seen
    assert seen == list(range(1, 11))


def test_history_is_bounded_by_count_and_bytes_and_dies_with_the_room() -> None:
    history = MemoryHistory(size=3, max_bytes=10_000)
    core, a, b = room_with_messages(5, history=history)
    assert [m["id"] for m in core.recent(a, 50, None)["messages"]] == [3, 4, 5]
    assert [m["id"] for m in history.recent(a.room, 50, None, after=3)] == [4, 5]
    big = "x" * 4000
    for _ in range(3):
        core.message(a, big, NOW)
    # Three 4 KB messages do not fit in 10,000 bytes: the oldest went.
    assert [m["id"] for m in core.recent(a, 50, None)["messages"]] == [7, 8]
    room = a.room
    core.leave(a, NOW)
    core.leave(b, NOW)
    assert history.recent(room, 50, None) == []


def test_past_the_history_memory_the_quietest_rooms_lose_their_oldest_first() -> None:
    from chatd.rooms.history import ENTRY_OVERHEAD

    body = "x" * 1000  # about 1 KiB a message, encoded
    cost = len(json.dumps({"from": "aaaaaaaa", "body": body, "timestamp": "2025-11-26T07:26:40.250Z",
                           "id": 1})) + ENTRY_OVERHEAD
    history = MemoryHistory(size=100, max_bytes=100_000, budget=10 * cost)
    core = ChatCore(limits=NO_LIMITS, history=history)
    owners = []
    for _ in range(3):
        owner = core.connect(FakeSink())
        core.create(owner, "r", NOW)
        owners.append(owner)
    quiet, middle, busy = owners
    for owner, count in ((quiet, 4), (middle, 4), (busy, 2)):
        for _ in range(count):
            core.message(owner, body, NOW)
    assert history.total == 10 * cost
    # Over the budget: the room quiet longest loses its oldest messages first.
    core.message(busy, body, NOW)
    assert [m["id"] for m in core.recent(quiet, 50, None)["messages"]] == [2, 3, 4]
    for _ in range(4):
        core.message(busy, body, NOW)
    assert core.recent(quiet, 50, None)["messages"] == []
    assert [m["id"] for m in core.recent(middle, 50, None)["messages"]] == [2, 3, 4]
    assert history.total == 10 * cost
    # What history and a rejoin with "since" say then: what is left.
    late = core.connect(FakeSink())
    reply = core.join(late, middle.room.room_id, NOW, since=0)
    assert (reply["recovered"], [m["id"] for m in reply["messages"]]) == (False, [2, 3, 4])
    # A room that goes gives its share back.
    core.leave(busy, NOW)
    assert history.total == 3 * cost


def test_history_keeps_the_broadcast_bytes() -> None:
    history = MemoryHistory(size=10)
    core, a, _ = room_with_messages(1, history=history)
    core.set_nick(a, "Ada", NOW)
    core.message(a, {"nested": ["é", 1.5]}, NOW)
    [_, kept] = core.recent(a, 50, None)["messages"]
    assert list(kept) == ["from", "body", "timestamp", "id", "nick"]
    assert kept["body"] == {"nested": ["é", 1.5]}


def test_history_needs_a_room() -> None:
    core = ChatCore()
    with pytest.raises(NotInRoom):
        core.recent(core.connect(FakeSink()), 50, None)


# -- events --------------------------------------------------------------------


def test_events_go_only_to_members_who_opted_in() -> None:
    core = ChatCore(
        new_id=SequentialIds("watcher1", "room0001", "seedonly", "joiner01", "latecome"), limits=NO_LIMITS
    )
    watcher_sink, seed_sink, joiner_sink = FakeSink(), FakeSink(), FakeSink()
    watcher = core.connect(watcher_sink)
    core.create(watcher, "r", NOW)
    assert core.set_events(watcher, True) == {"status": "success", "message": "Events on"}
    seed = core.connect(seed_sink)
    core.join(seed, "room0001", NOW)
    joiner = core.connect(joiner_sink)
    core.join(joiner, "room0001", NOW + 1)
    core.set_nick(joiner, "Jo", NOW + 2)
    core.leave(joiner, NOW + 3)
    core.disconnect(seed, NOW + 4)
    ts = codec.timestamp
    assert watcher_sink.received == [
        {"event": "join", "room_id": "room0001", "client_id": "seedonly", "nick": None, "timestamp": ts(NOW)},
        {"event": "join", "room_id": "room0001", "client_id": "joiner01", "nick": None, "timestamp": ts(NOW + 1)},
        {"event": "nick", "room_id": "room0001", "client_id": "joiner01", "nick": "Jo", "timestamp": ts(NOW + 2)},
        {"event": "leave", "room_id": "room0001", "client_id": "joiner01", "nick": "Jo", "timestamp": ts(NOW + 3)},
        {"event": "leave", "room_id": "room0001", "client_id": "seedonly", "nick": None, "timestamp": ts(NOW + 4)},
    ]
    # The seed-only member never asked, and got nothing.
    assert seed_sink.frames == []
    assert joiner_sink.frames == []
    core.set_events(watcher, False)
    core.join(core.connect(FakeSink()), "room0001", NOW)
    assert len(watcher_sink.frames) == 5


# -- rate limits -----------------------------------------------------------------


def test_token_bucket_refills_exactly() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)
    assert bucket.take(100.25) == pytest.approx(0.25)  # half a token so far
    assert bucket.take(100.5) == 0.0
    assert bucket.take(100.5) == pytest.approx(0.5)
    assert not bucket.full(100.5)
    assert bucket.full(102.0)
    assert [bucket.take(200.0) for _ in range(4)][:3] == [0.0, 0.0, 0.0]  # never above burst


def test_message_rate_limit_with_retry_after_and_exact_refill() -> None:
    core = ChatCore(limits=Limits(messages_per_second=2, messages_burst=3, creates_per_minute=0))
    a, b_sink = core.connect(FakeSink()), FakeSink()
    core.join(core.connect(b_sink), core.create(a, "r", NOW)["room_id"], NOW)
    for _ in range(3):
        core.message(a, "ok", NOW)
    with pytest.raises(RateLimited) as caught:
        core.message(a, "too soon", NOW)
    assert caught.value.message == "Rate limit exceeded"
    assert caught.value.extra == {"retry_after": 0.5}
    core.message(a, "refilled", NOW + 0.5)
    assert [m["body"] for m in b_sink.received] == ["ok", "ok", "ok", "refilled"]


def test_a_client_hammering_far_past_the_limit_is_closed_1008() -> None:
    core = ChatCore(limits=Limits(messages_per_second=1, messages_burst=2, creates_per_minute=0))
    sink = FakeSink()
    a = core.connect(sink)
    core.create(a, "r", NOW)
    core.message(a, 1, NOW)
    core.message(a, 2, NOW)
    for _ in range(3):  # refused three times in a row: not yet
        with pytest.raises(RateLimited):
            core.message(a, "x", NOW)
    assert sink.closed is None
    with pytest.raises(RateLimited):
        core.message(a, "x", NOW)  # the fourth: twice the burst
    assert sink.closed == (1008, "Rate limit exceeded repeatedly")


def test_an_accepted_message_resets_the_strikes() -> None:
    core = ChatCore(limits=Limits(messages_per_second=1, messages_burst=2, creates_per_minute=0))
    sink = FakeSink()
    a = core.connect(sink)
    core.create(a, "r", NOW)
    now = NOW
    for _ in range(10):  # over the limit, but not far over: a token each second
        core.message(a, "x", now)
        core.message(a, "x", now)
        with pytest.raises(RateLimited):
            core.message(a, "x", now)
        now += 2
    assert sink.closed is None


def test_create_rate_limit_per_minute() -> None:
    core = ChatCore(limits=Limits(messages_per_second=0, creates_per_minute=6, creates_burst=2))
    a = core.connect(FakeSink())
    core.create(a, "1", NOW)
    core.create(a, "2", NOW)
    with pytest.raises(RateLimited) as caught:
        core.create(a, "3", NOW)
    assert caught.value.retry_after == pytest.approx(10.0)  # 6 a minute: one every 10 s
    assert core.create(a, "3", NOW + 10)["status"] == "success"


def test_messages_outside_a_room_do_not_use_tokens() -> None:
    core = ChatCore(limits=Limits(messages_per_second=1, messages_burst=1, creates_per_minute=0))
    a = core.connect(FakeSink())
    for _ in range(5):
        with pytest.raises(NotInRoom):
            core.message(a, "x", NOW)
    core.create(a, "r", NOW)
    assert core.message(a, "first", NOW)["status"] == "success"
