"""
Naming the room: a room-scoped action's top-level ``"room_id"``, and
keeping rooms (``"keep"``), on the real ``twistd -n chatd`` alone and as two
nodes of a cluster.  A connection that
names its room this way receives broadcasts that name theirs; one that never
does receives the seed's bytes, in the same room, from the same sender.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted

from tests.support.clients import WSClient, connect
from tests.support.redis import RedisServer


async def welcomed(port: int) -> tuple[WSClient, str]:
    client = await connect(port)
    return client, (await client.next())["client_id"]


@pytest.fixture(params=["one process", "cluster"])
def ports(request: Any, daemon_factory: Any) -> Any:
    """Start chatd (or two nodes on one Redis): an awaitable of the ports to use."""

    async def start(*extra: str) -> list[int]:
        args = ("--listen", "tcp:0:interface=127.0.0.1", "--store", "memory", "--ping-interval", "0", *extra)
        if request.param == "one process":
            port = int(await daemon_factory(*args).wait_listening())
            return [port, port]
        redis: RedisServer = request.getfixturevalue("redis_server")
        nodes = [daemon_factory(*args, "--redis", redis.url) for _ in range(2)]
        return [int(await node.wait_listening()) for node in nodes]

    return start


@pytest_twisted.ensureDeferred
async def test_a_connection_that_names_its_room_gets_broadcasts_that_name_theirs(ports: Any) -> None:
    a, b = await ports()
    sender, _ = await welcomed(a)
    room = (await sender.request({"action": "create", "body": "Den"}))["room_id"]
    named, _ = await welcomed(b)
    seed, _ = await welcomed(b)
    for client in (named, seed):
        assert (await client.request({"action": "join", "body": {"room_id": room}}))["status"] == "success"
    # Any room-scoped action naming its room is answered as without it.
    members = await named.request({"action": "members", "room_id": room})
    assert (members["status"], members["room_id"]) == ("success", room)
    assert await sender.request({"action": "message", "body": "one"}) == {
        "status": "success", "message": "Message sent"}
    raw = await named.next_raw()
    assert list(json.loads(raw)) == ["from", "body", "timestamp", "id", "room_id"]
    assert json.loads(raw)["room_id"] == room
    # The seed's bytes for the one that never named a room.
    assert list(json.loads(await seed.next_raw())) == ["from", "body", "timestamp", "id"]
    # Its own messages, named, reach the others as ever.
    assert await named.request({"action": "message", "room_id": room, "body": "two"}) == {
        "status": "success", "message": "Message sent"}
    for client in (sender, seed):
        assert list(json.loads(await client.next_raw())) == ["from", "body", "timestamp", "id"]


@pytest_twisted.ensureDeferred
async def test_naming_a_room_the_connection_is_not_in_is_refused(ports: Any) -> None:
    a, b = await ports()
    owner, _ = await welcomed(a)
    private = (await owner.request({"action": "create", "body": {"name": "Den", "private": True}}))["room_id"]
    other, _ = await welcomed(b)
    lobby = (await other.request({"action": "create", "body": "Lobby"}))["room_id"]
    for room_id in (private, "nosuchroom"):  # a private room reads as one that does not exist
        for action, body in (("message", "hi"), ("members", None), ("leave", None), ("history", None),
                             ("nick", "Ada"), ("kick", {"client_id": "0000abcd"})):
            command: dict[str, Any] = {"action": action, "room_id": room_id}
            if body is not None:
                command["body"] = body
            assert await other.request(command) == {
                "status": "error", "message": f"You are not in room {room_id}"}, command
    for bad in (42, "", "x" * 65, ["r"]):
        assert await other.request({"action": "members", "room_id": bad}) == {
            "status": "error", "message": "'room_id' must be a room ID: a string of 1 to 64 characters"}
    # The connection is still in its room, and usable.
    assert (await other.request({"action": "members", "room_id": lobby}))["status"] == "success"
    assert (await other.request({"action": "leave", "room_id": lobby}))["status"] == "success"
    assert await other.request({"action": "members", "room_id": lobby}) == {
        "status": "error", "message": f"You are not in room {lobby}"}


@pytest_twisted.ensureDeferred
async def test_batches_of_broadcasts_name_the_room_for_those_who_ask(ports: Any) -> None:
    a, b = await ports()
    sender, _ = await welcomed(a)
    room = (await sender.request({"action": "create", "body": "Den"}))["room_id"]
    named, _ = await welcomed(b)
    seed, _ = await welcomed(a)
    for client in (named, seed):
        assert (await client.request({"action": "join", "body": {"room_id": room}}))["status"] == "success"
    assert (await named.request({"action": "members", "room_id": room}))["status"] == "success"
    # Pipelined from two senders, one of them named: read and fanned out in batches.
    for n in range(5):
        sender.send({"action": "message", "body": n})
        named.send({"action": "message", "room_id": room, "body": f"n{n}"})
    for client, keys in ((named, ["from", "body", "timestamp", "id", "room_id"]),
                         (seed, ["from", "body", "timestamp", "id"]),
                         (sender, ["from", "body", "timestamp", "id"])):
        others = [json.loads(await client.next_raw()) for _ in range(10)]  # a sender's 5 replies among them
        broadcasts = [m for m in others if "from" in m]
        assert len(broadcasts) == (5 if client is not seed else 10), (client, others)
        assert all(list(m) == keys for m in broadcasts), broadcasts


async def joined(client: WSClient, room_id: str, **body: Any) -> None:
    reply = await client.request({"action": "join", "body": {"room_id": room_id, **body}})
    assert reply["status"] == "success", reply


@pytest_twisted.ensureDeferred
async def test_a_connection_keeps_rooms_and_says_which_it_means(ports: Any) -> None:
    port, other = await ports()
    ada, _ = await welcomed(port)
    one = (await ada.request({"action": "create", "body": "One"}))["room_id"]
    created = await ada.request({"action": "create", "body": {"name": "Two", "keep": True}})
    two = created["room_id"]
    assert created == {"status": "success", "room_id": two, "message": "Room 'Two' created"}  # the seed's reply
    bob, _ = await welcomed(other)
    cy, _ = await welcomed(other)
    await joined(bob, one)
    await joined(cy, two)
    # Both rooms' broadcasts reach ada, each naming its room.
    await bob.request({"action": "message", "body": "in one"})
    await cy.request({"action": "message", "body": "in two"})
    got = [json.loads(await ada.next_raw()) for _ in range(2)]
    assert sorted((m["body"], m["room_id"]) for m in got) == [("in one", one), ("in two", two)]
    # Without "room_id", the current room (the last entered); with it, the one named.
    assert (await ada.request({"action": "message", "body": "to two"}))["status"] == "success"
    assert (await cy.next())["body"] == "to two"
    assert (await ada.request({"action": "message", "room_id": one, "body": "to one"}))["status"] == "success"
    assert (await bob.next())["body"] == "to one"
    members = await ada.request({"action": "members", "room_id": one})
    assert len(members["members"]) == 2 and members["room_id"] == one
    # Leaving the current room makes the one entered before it current.
    assert (await ada.request({"action": "leave"}))["status"] == "success"
    assert (await ada.request({"action": "members"}))["room_id"] == one
    assert await ada.request({"action": "members", "room_id": two}) == {
        "status": "error", "message": f"You are not in room {two}"}
    # Back into Two keeping One; then out of One by name, Two staying current.
    await joined(ada, two, keep=True)
    assert (await ada.request({"action": "leave", "room_id": one}))["status"] == "success"
    assert (await ada.request({"action": "members"}))["room_id"] == two
    # Joining without "keep" is the seed's: out of the current room only.
    await joined(ada, one, keep=True)
    three = (await bob.request({"action": "create", "body": "Three"}))["room_id"]
    await joined(ada, three)
    rooms = {r["room_id"] for r in (await ada.request({"action": "rooms"}))["rooms"]}
    assert rooms == {two, three}
    assert await ada.request({"action": "join", "body": {"room_id": two, "keep": "yes"}}) == {
        "status": "error", "message": "'keep' must be true or false"}


@pytest_twisted.ensureDeferred
async def test_rooms_per_connection_are_limited_and_all_left_on_disconnect(ports: Any) -> None:
    port, other = await ports("--max-rooms-per-connection", "2")
    ada, ada_id = await welcomed(port)
    watcher, _ = await welcomed(other)
    await watcher.request({"action": "events", "body": True})
    rooms = [(await watcher.request({"action": "create", "body": {"name": f"R{n}", "keep": True}}))["room_id"]
             for n in range(2)]
    await joined(ada, rooms[0])
    await joined(ada, rooms[1], keep=True)
    for _ in range(2):
        assert (await watcher.next())["event"] == "join"
    assert await ada.request({"action": "create", "body": {"name": "R2", "keep": True}}) == {
        "status": "error", "message": "You are in too many rooms (limit 2)"}
    assert await ada.request({"action": "join", "body": {"room_id": "anyroom0", "keep": True}}) == {
        "status": "error", "message": "You are in too many rooms (limit 2)"}
    await ada.close()
    left = [await watcher.next() for _ in range(2)]
    assert sorted((e["event"], e["room_id"], e["client_id"]) for e in left) == sorted(
        ("leave", room, ada_id) for room in rooms)
