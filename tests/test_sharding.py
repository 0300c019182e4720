"""
Rooms spread over several Redis (``--redis`` given more than once), on real
redis-servers: each room wholly on one shard, chosen by its ID; every node
on all of them; one shard lost takes only its own rooms down.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import pytest_twisted

from twisted.internet.defer import Deferred

from chatd.backplane.shards import Shards, preference, rendezvous
from tests.support.clients import connect, within, WSClient
from tests.support.redis import RedisServer
from tests.support.servers import DaemonProcess

UNAVAILABLE = {"status": "error", "message": "Service temporarily unavailable"}


def test_a_rooms_shard_is_stable_even_and_moves_little_when_one_is_added() -> None:
    keys = [f"{i:08x}" for i in range(0, 12000 * 7919, 7919)]
    two = [rendezvous(key, 2) for key in keys]
    assert two == [rendezvous(key, 2) for key in keys]  # the same every time
    assert abs(two.count(0) - two.count(1)) < 0.05 * len(keys)
    three = [rendezvous(key, 3) for key in keys]
    moved = [(before, after) for before, after in zip(two, three, strict=True) if before != after]
    # Only the rooms the new shard wins move, and about a third of them.
    assert {after for _, after in moved} == {2}
    assert 0.28 < len(moved) / len(keys) < 0.38
    assert all(preference(key, 3)[0] == rendezvous(key, 3) for key in keys[:500])
    assert rendezvous("anything", 1) == 0


class _Shard:
    def __init__(self, available: bool) -> None:
        self.node, self.available = "node-1", available
        self.waiting: list[Deferred[None]] = []

    def when_available(self) -> "Deferred[None]":
        d: Deferred[None] = Deferred()
        self.waiting.append(d)
        return d


def test_what_any_shard_can_answer_goes_to_the_first_in_step_in_the_keys_order() -> None:
    up, down = _Shard(True), _Shard(False)
    shards = Shards([up, down])
    assert shards.partly_available and not shards.available
    keys = [f"user{i}" for i in range(200)]
    assert {shards.serving(key) for key in keys} == {up}
    up.available, down.available = False, True
    assert {shards.serving(key) for key in keys} == {down}
    up.available = True
    # Both in step: spread over both, each key always to the same one.
    assert {shards.serving(key) for key in keys} == {up, down}
    assert [shards.serving(key) for key in keys] == [shards.serving(key) for key in keys]
    assert all(shards.of(key) is shards.all[rendezvous(key, 2)] for key in keys)


def test_the_node_is_ready_with_one_shard_and_whole_with_every_shard() -> None:
    one, two = _Shard(False), _Shard(False)
    shards = Shards([one, two])
    partly, whole = shards.when_partly_available(), shards.when_available()
    fired: list[str] = []
    partly.addCallback(lambda _: fired.append("partly"))
    whole.addCallback(lambda _: fired.append("whole"))
    one.available = True
    one.waiting.pop().callback(None)
    one.waiting.pop().callback(None)
    assert fired == ["partly"]
    two.available = True
    for d in two.waiting:
        d.callback(None)
    assert fired == ["partly", "whole"]


def shard_of(room_id: str, shards: list[RedisServer]) -> int:
    """Which Redis holds the room (asked of Redis itself)."""
    holders = [i for i, shard in enumerate(shards) if shard.command("EXISTS", f"chatd:room:{room_id}") == 1]
    assert len(holders) == 1, (room_id, holders)
    return holders[0]


async def room_on_each_shard(
    newcomer: Callable[[], Awaitable[tuple[WSClient, str]]], shards: list[RedisServer],
) -> tuple[list[str], list[WSClient]]:
    """Rooms made by newcomers until there is one on each shard: their IDs
    by shard, and their creators (who stay in them, keeping them)."""
    found: dict[int, tuple[str, WSClient]] = {}
    for attempt in range(40):
        creator, _ = await newcomer()
        room_id = (await creator.request({"action": "create", "body": f"room {attempt}"}))["room_id"]
        index = shard_of(room_id, shards)
        if index in found:
            await creator.close()
        else:
            found[index] = (room_id, creator)
        if len(found) == len(shards):
            return [found[i][0] for i in range(len(shards))], [found[i][1] for i in range(len(shards))]
    raise AssertionError("room IDs never landed on every shard")


@pytest_twisted.ensureDeferred
async def test_rooms_live_on_both_shards_and_chat_crosses_nodes_in_each(
    sharded_cluster: Any, redis_shards: list[RedisServer],
) -> None:
    one, two = await sharded_cluster(), await sharded_cluster()
    (a, a_id), (b, _) = await one.welcomed(), await two.welcomed()
    # Every client is known to both shards (its ID is unique across them).
    for shard in redis_shards:
        assert shard.command("HGET", f"chatd:client:{a_id}", "node") is not None
    rooms, holders = await room_on_each_shard(one.welcomed, redis_shards)
    for index, room_id in enumerate(rooms):
        assert (await a.request({"action": "join", "body": {"room_id": room_id}}))["status"] == "success"
        assert (await b.request({"action": "join", "body": {"room_id": room_id}}))["status"] == "success"
        for i in range(3):
            assert (await a.request({"action": "message", "body": f"{index}:{i}"}))["status"] == "success"
            message = await b.next()
            assert (message["body"], message["id"]) == (f"{index}:{i}", i + 1)
        history = await b.request({"action": "history"})
        assert [m["body"] for m in history["messages"]] == [f"{index}:{i}" for i in range(3)]
        # The room is wholly on its shard: members and history too.
        other = redis_shards[1 - index]
        assert other.command("EXISTS", f"chatd:members:{room_id}") == 0
        assert redis_shards[index].command("ZCARD", f"chatd:members:{room_id}") == 3
    # Moving to the room on the other shard took both out of the first;
    # the last one out deletes it there.
    assert redis_shards[0].command("ZCARD", f"chatd:members:{rooms[0]}") == 1
    await holders[0].close()
    await within(one.chat.settled(), "the disconnect to reach Redis")
    assert redis_shards[0].command("EXISTS", f"chatd:room:{rooms[0]}") == 0
    for client in (a, b, holders[1]):
        await client.close()


@pytest_twisted.ensureDeferred
async def test_moving_between_shards_tells_the_old_room_and_nicks_hold_on_the_new(
    sharded_cluster: Any, redis_shards: list[RedisServer],
) -> None:
    one, two = await sharded_cluster(), await sharded_cluster()
    (mover, mover_id), (ada, _) = await two.welcomed(), await one.welcomed()
    (first, second), (owner, other) = await room_on_each_shard(one.welcomed, redis_shards)
    assert (await owner.request({"action": "events", "body": True}))["status"] == "success"
    await ada.request({"action": "join", "body": {"room_id": second}})
    assert (await ada.request({"action": "nick", "body": "ada"}))["status"] == "success"
    # Named while in no room: the nick reaches every shard.
    assert (await mover.request({"action": "nick", "body": "Ada"}))["status"] == "success"
    assert (await mover.request({"action": "join", "body": {"room_id": first}}))["status"] == "success"
    joined = await owner.next()
    assert (joined["event"], joined["client_id"], joined["nick"]) == ("join", mover_id, "Ada")
    refused = await mover.request({"action": "join", "body": {"room_id": second}})
    assert refused == {"status": "error",
                       "message": f"Nick 'Ada' is taken in room {second}; choose another with \"nick\""}
    assert (await mover.request({"action": "nick", "body": "Grace"}))["status"] == "success"
    assert (await owner.next())["event"] == "nick"
    assert (await mover.request({"action": "join", "body": {"room_id": second}}))["status"] == "success"
    # The first room's shard hears the move, and so do its members.
    left = await owner.next()
    assert (left["event"], left["client_id"]) == ("leave", mover_id)
    members = (await owner.request({"action": "members"}))["members"]
    assert [m["client_id"] for m in members] != [] and mover_id not in [m["client_id"] for m in members]
    assert redis_shards[shard_of(first, redis_shards)].command("ZSCORE", f"chatd:members:{first}", mover_id) is None
    members = (await ada.request({"action": "members"}))["members"]
    assert {m["nick"] for m in members} == {None, "ada", "Grace"}
    for client in (owner, other, mover, ada):
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_connection_keeps_rooms_on_both_shards(
    sharded_cluster: Any, redis_shards: list[RedisServer],
) -> None:
    one, two = await sharded_cluster(), await sharded_cluster()
    (keeper, keeper_id), (ada, _) = await two.welcomed(), await one.welcomed()
    rooms, holders = await room_on_each_shard(one.welcomed, redis_shards)
    for room_id in rooms:
        reply = await keeper.request({"action": "join", "body": {"room_id": room_id, "keep": True}})
        assert reply["status"] == "success", reply
    for index, room_id in enumerate(rooms):  # each shard holds it in its own room
        assert redis_shards[index].command("SMEMBERS", f"chatd:client-rooms:{keeper_id}") == [room_id]
    # Messages from both shards reach it, named; it speaks in either.
    for holder, room_id in zip(holders, rooms, strict=True):
        assert (await holder.request({"action": "message", "body": f"to {room_id}"}))["status"] == "success"
        got = await keeper.next()
        assert (got["body"], got["room_id"]) == (f"to {room_id}", room_id)
    assert (await keeper.request({"action": "message", "room_id": rooms[0], "body": "back"}))["status"] == "success"
    assert (await holders[0].next())["body"] == "back"
    # A nick is checked in both rooms, on both shards, before it is taken in either.
    assert (await holders[0].request({"action": "nick", "body": "Taken"}))["status"] == "success"
    assert (await keeper.request({"action": "nick", "body": "taken"}))["status"] == "error"
    assert (await ada.request({"action": "join", "body": {"room_id": rooms[1]}}))["status"] == "success"
    assert (await keeper.request({"action": "nick", "body": "Kay"}))["status"] == "success"
    members = (await ada.request({"action": "members"}))["members"]
    assert {m["client_id"]: m["nick"] for m in members}[keeper_id] == "Kay"
    # The seed's join, from the room on shard 1: out of that one only.
    third = (await ada.request({"action": "create", "body": {"name": "third", "keep": True}}))["room_id"]
    assert (await keeper.request({"action": "join", "body": {"room_id": third}}))["status"] == "success"
    kept = {room_id for index, shard in enumerate(redis_shards)
            for room_id in shard.command("SMEMBERS", f"chatd:client-rooms:{keeper_id}")}
    assert kept == {rooms[0], third}
    # Gone: out of every room, on both shards.
    await keeper.close()
    await within(two.chat.settled(), "the disconnect to reach Redis")
    for index, room_id in enumerate(rooms):
        assert redis_shards[index].command("ZSCORE", f"chatd:members:{room_id}", keeper_id) is None
        assert redis_shards[index].command("EXISTS", f"chatd:client-rooms:{keeper_id}") == 0
    for client in (ada, *holders):
        await client.close()


@pytest_twisted.ensureDeferred
async def test_list_pages_through_both_shards_in_creation_order(
    sharded_cluster: Any, redis_shards: list[RedisServer],
) -> None:
    one, two = await sharded_cluster(), await sharded_cluster()
    # Rooms made on both nodes in turn, at least 7, until both shards hold
    # some (a room's shard follows from its random ID).
    creators: list[Any] = []
    made: list[str] = []
    while len(made) < 7 or {shard_of(room_id, redis_shards) for room_id in made} != {0, 1}:
        assert len(made) < 60, "every room on one shard: the IDs are not spread"
        creator = await (one, two)[len(made) % 2].welcomed()
        creators.append(creator)
        made.append((await creator[0].request({"action": "create", "body": f"room {len(made)}"}))["room_id"])
    reader, _ = await two.welcomed()
    seen, after = [], None
    while True:
        body: dict[str, Any] = {"limit": 3}
        if after is not None:
            body["after"] = after
        page = await reader.request({"action": "list", "body": body})
        assert len(page["rooms"]) <= 3
        seen += [room["room_id"] for room in page["rooms"]]
        after = page.get("next")
        if after is None:
            break
    assert seen == made
    for client, _ in creators:
        await client.close()
    await reader.close()


@pytest_twisted.ensureDeferred
async def test_a_direct_message_reaches_a_client_on_another_node(sharded_cluster: Any) -> None:
    one, two = await sharded_cluster(), await sharded_cluster()
    (a, a_id), (b, b_id) = await one.welcomed(), await two.welcomed()
    assert (await a.request({"action": "direct", "body": {"to": b_id, "body": "psst"}}))["status"] == "success"
    message = await b.next()
    assert (message["from"], message["body"]) == (a_id, "psst")
    for client in (a, b):
        await client.close()


async def member(port: int) -> tuple[WSClient, str]:
    client = await connect(port)
    return client, (await client.next())["client_id"]


def in_step_with(shard: RedisServer, times: int = 1) -> bytes:
    return rb"(?s)" + rb".*".join([rb"In step with Redis at redis://127\.0\.0\.1:%d/" % shard.port] * times)


@pytest_twisted.ensureDeferred
async def test_three_nodes_two_redis_one_lost_only_its_rooms_degrade(
    daemon_factory: Callable[..., DaemonProcess], redis_shards: list[RedisServer],
) -> None:
    urls = [arg for shard in redis_shards for arg in ("--redis", shard.url)]
    nodes = [daemon_factory("--listen", "tcp:0:interface=127.0.0.1", *urls, "--redis-timeout", "2",
                            "--rate-messages", "0") for _ in range(3)]
    ports = [await node.wait_listening() for node in nodes]
    for node in nodes:
        for shard in redis_shards:
            await node.wait_for(in_step_with(shard), "the node to be in step with each shard")
    rooms, founders = await room_on_each_shard(lambda: member(ports[0]), redis_shards)
    # In each room, a member on every node.
    members = {room_id: [await member(port) for port in ports] for room_id in rooms}
    for room_id, clients in members.items():
        for client, _ in clients:
            assert (await client.request({"action": "join", "body": {"room_id": room_id}}))["status"] == "success"

    async def chat_across(room_id: str, text: str) -> None:
        (sender, sender_id), *others = members[room_id]
        assert (await sender.request({"action": "message", "body": text}))["status"] == "success"
        for other, _ in others:
            message = await other.next()
            assert (message["from"], message["body"]) == (sender_id, text)

    for room_id in rooms:
        await chat_across(room_id, "before")
    lost, kept = redis_shards[1], redis_shards[0]
    lost_room, kept_room = rooms[1], rooms[0]
    lost.stop()  # SIGKILL
    for node in nodes:
        await node.wait_for(rb"Lost Redis at redis://127\.0\.0\.1:%d/" % lost.port, "the node to notice")
    # The other shard's rooms carry on across nodes...
    await chat_across(kept_room, "during")
    # ...new clients come in, and new rooms land on the shard that is there.
    newcomer, _ = await member(ports[2])
    made = (await newcomer.request({"action": "create", "body": "made meanwhile"}))["room_id"]
    assert kept.command("EXISTS", f"chatd:room:{made}") == 1
    listed = {room["room_id"] for room in (await newcomer.request({"action": "list"}))["rooms"]}
    assert {kept_room, made} <= listed
    # Only the lost shard's rooms degrade: nobody new gets in.
    assert await newcomer.request({"action": "join", "body": {"room_id": lost_room}}) == UNAVAILABLE
    assert await members[lost_room][0][0].request({"action": "members"}) == UNAVAILABLE
    # Back, its rooms are restored from what the nodes hold, ids going on.
    lost.start()
    for node in nodes:
        await node.wait_for(in_step_with(lost, 2), "the node to be in step with the shard again")
    assert lost.command("ZCARD", f"chatd:members:{lost_room}") == 4
    await chat_across(lost_room, "after")
    await chat_across(kept_room, "after")
    # The lost shard's room numbers on from the last id anyone saw.
    history = await members[lost_room][1][0].request({"action": "history"})
    assert [(m["body"], m["id"]) for m in history["messages"]] == [("after", 2)]
    for client in [client for clients in members.values() for client, _ in clients] + founders + [newcomer]:
        await client.close()
