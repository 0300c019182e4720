"""
Naming the room: a room-scoped action's top-level ``"room_id"``, on the real
``twistd -n chatd`` alone and as two nodes of a cluster.  A connection that
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

    async def start() -> list[int]:
        args = ("--listen", "tcp:0:interface=127.0.0.1", "--store", "memory", "--ping-interval", "0")
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
