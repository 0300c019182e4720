"""
Room rules decided on two nodes at once, on a real Redis: each decision is
made on a node and applied only if what it read is still so, so that the
outcome is always that of some serial order.  Each test holds one node's
change until the other node's has been applied (the interleaving that
would break a rule if decisions were not checked), then lets it go.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from chatd.backplane import scripts
from tests.support.clients import WSClient


class Held:
    """The first call of ``script`` on a node's shard (that ``which``
    accepts) waits until :meth:`release`; ``reached`` fires when it comes."""

    def __init__(self, node: Any, room_id: str, script: str, which: Callable[[tuple[Any, ...]], bool] = bool) -> None:
        self.reached: Deferred = Deferred()
        self._released: Deferred = Deferred()
        shard = node.factory.chat.shards.of(room_id)
        call = shard.call

        def held(name: str, *args: Any) -> Deferred:
            if name is script and not self.reached.called and which(args):
                self.reached.callback(None)
                return self._released.addCallback(lambda _: call(name, *args))
            return call(name, *args)

        shard.call = held

    def release(self) -> None:
        self._released.callback(None)


async def in_room(node: Any, room_id: str) -> tuple[WSClient, str]:
    client, client_id = await node.welcomed()
    assert (await client.request({"action": "join", "body": {"room_id": room_id}}))["status"] == "success"
    return client, client_id


async def members(client: WSClient) -> list[dict[str, Any]]:
    reply = await client.request({"action": "members"})
    assert reply["status"] == "success"
    return reply["members"]


@pytest_twisted.ensureDeferred
async def test_two_members_never_hold_one_nick(cluster: Any) -> None:
    one, two = await cluster(), await cluster()
    owner, _ = await two.welcomed()
    room_id = (await owner.request({"action": "create", "body": "den"}))["room_id"]
    (a, a_id), (b, b_id) = await in_room(one, room_id), await in_room(two, room_id)
    held = Held(one, room_id, scripts.CHANGE)
    a.send({"action": "nick", "body": "Sam"})
    await held.reached  # a's node decided: free
    assert (await b.request({"action": "nick", "body": "SAM"}))["status"] == "success"
    held.release()
    assert await a.next() == {"status": "error", "message": "Nick 'Sam' is already taken in this room"}
    nicks = {m["client_id"]: m["nick"] for m in await members(owner)}
    assert (nicks[a_id], nicks[b_id]) == (None, "SAM")
    for client in (owner, a, b):
        await client.close()


@pytest_twisted.ensureDeferred
async def test_two_joins_with_one_nick_admit_one(cluster: Any) -> None:
    one, two = await cluster(), await cluster()
    owner, _ = await two.welcomed()
    room_id = (await owner.request({"action": "create", "body": "den"}))["room_id"]
    (a, _), (b, b_id) = await one.welcomed(), await two.welcomed()
    for client in (a, b):
        await client.request({"action": "nick", "body": "Sam"})
    held = Held(one, room_id, scripts.ENTER)
    a.send({"action": "join", "body": {"room_id": room_id}})
    await held.reached
    assert (await b.request({"action": "join", "body": {"room_id": room_id}}))["status"] == "success"
    held.release()
    assert await a.next() == {
        "status": "error", "message": f"Nick 'Sam' is taken in room {room_id}; choose another with \"nick\""}
    assert [m["client_id"] for m in await members(owner)][1:] == [b_id]
    for client in (owner, a, b):
        await client.close()


@pytest.mark.parametrize("by", ["client", "user"])
@pytest_twisted.ensureDeferred
async def test_no_join_succeeds_after_a_ban_has_been_answered(cluster: Any, by: str) -> None:
    one, two = await cluster(), await cluster()
    owner, _ = await two.welcomed()
    room_id = (await owner.request({"action": "create", "body": "den"}))["room_id"]
    joiner, joiner_id = await one.welcomed()
    held = Held(one, room_id, scripts.ENTER)
    joiner.send({"action": "join", "body": {"room_id": room_id}})
    await held.reached  # the joiner's node decided: not banned
    ban = {"client_id": joiner_id} if by == "client" else {"user": "nobody"}
    assert (await owner.request({"action": "ban", "body": ban}))["status"] == "success"
    held.release()
    reply = await joiner.next()
    if by == "client":
        assert reply == {"status": "error", "message": f"You are banned from room {room_id}"}
        assert joiner_id not in [m["client_id"] for m in await members(owner)]
    else:  # a ban of someone else: decided again, and admitted
        assert reply["status"] == "success"
    await owner.close()
    await joiner.close()


@pytest_twisted.ensureDeferred
async def test_succession_picks_one_owner_when_every_node_tries(cluster: Any) -> None:
    one, two = await cluster(), await cluster()
    owner, owner_id = await one.welcomed()
    room_id = (await owner.request({"action": "create", "body": "den"}))["room_id"]
    (first, first_id), (second, second_id) = await in_room(two, room_id), await in_room(one, room_id)
    await second.request({"action": "events", "body": True})
    held = Held(two, room_id, scripts.CHANGE)  # node two's attempt waits for node one's
    await owner.close()
    await held.reached
    left = await second.next()
    assert (left["event"], left["client_id"]) == ("leave", owner_id)
    owner_event = await second.next()
    assert (owner_event["event"], owner_event["client_id"]) == ("owner", first_id)
    held.release()
    # Node two decides again, on a room that has its owner: nothing changes.
    assert [(m["client_id"], m["role"]) for m in await members(first)] == [(first_id, "owner"), (second_id, "member")]
    assert (await second.request({"action": "nick", "body": "x"}))["status"] == "success"
    assert [json.loads(raw)["event"] for raw in second.inbox] == []
    await first.close()
    await second.close()


@pytest_twisted.ensureDeferred
async def test_succession_decided_again_when_the_heir_leaves_meanwhile(cluster: Any) -> None:
    one, two = await cluster(), await cluster()
    owner, _ = await one.welcomed()
    room_id = (await owner.request({"action": "create", "body": "den"}))["room_id"]
    (heir, _), (next_heir, next_id) = await in_room(one, room_id), await in_room(two, room_id)
    # Both nodes' attempts wait: the heir they picked leaves meanwhile.
    holds = [Held(node, room_id, scripts.CHANGE) for node in (one, two)]
    await owner.close()
    for held in holds:
        await held.reached
    assert (await heir.request({"action": "leave"}))["status"] == "success"
    await heir.request({"action": "list"})  # after the leave, on the same connection to Redis
    for held in holds:
        held.release()
    # Members are read once the room has an owner again.
    assert [(m["client_id"], m["role"]) for m in await members(next_heir)] == [(next_id, "owner")]
    await heir.close()
    await next_heir.close()


@pytest_twisted.ensureDeferred
async def test_joins_from_two_nodes_at_once_keep_nicks_unique(cluster: Any) -> None:
    one, two = await cluster(), await cluster()
    owner, _ = await one.welcomed()
    room_id = (await owner.request({"action": "create", "body": "den"}))["room_id"]
    clients = [await node.welcomed() for node in (one, two) * 20]
    for i, (client, _) in enumerate(clients):
        await client.request({"action": "nick", "body": f"n{i % 5}"})
    for client, _ in clients:  # all at once
        client.send({"action": "join", "body": {"room_id": room_id}})
    replies = [await client.next() for client, _ in clients]
    assert sum(reply["status"] == "success" for reply in replies) == 5
    assert sorted(m["nick"] for m in (await members(owner))[1:]) == [f"n{i}" for i in range(5)]
    for client, _ in [(owner, ""), *clients]:
        await client.close()
