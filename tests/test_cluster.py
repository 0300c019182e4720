"""
A cluster: several chatd nodes on one real redis-server, clients spread
across them, and every seed rule holding as if they were one server.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred

from chatd.backplane import scripts

from tests.support.clients import seed_example_2, within, WSClient
from tests.support.redis import ClusterNode, RedisServer
from tests.support.servers import InProcessServer

UNAVAILABLE = {"status": "error", "message": "Service temporarily unavailable"}


async def welcomed(node: ClusterNode) -> tuple[WSClient, str]:
    return await node.welcomed()


async def room_across(nodes: list[ClusterNode], name: str = "lobby") -> tuple[str, list[tuple[WSClient, str]]]:
    """One client per node; the first creates a room, the others join it."""
    members = [await welcomed(node) for node in nodes]
    room_id = (await members[0][0].request({"action": "create", "body": name}))["room_id"]
    for client, _ in members[1:]:
        reply = await client.request({"action": "join", "body": {"room_id": room_id}})
        assert reply == {"status": "success", "message": f"Joined room '{name}'", "room_id": room_id}
    return room_id, members


@pytest_twisted.ensureDeferred
async def test_a_room_spans_three_nodes_and_the_seed_replies_are_unchanged(cluster: Any) -> None:
    nodes = [await cluster() for _ in range(3)]
    (a, a_id), (b, b_id), (c, c_id) = [await welcomed(node) for node in nodes]
    created = await a.request({"action": "create", "body": "General"})
    assert list(created) == ["status", "room_id", "message"]
    assert created["message"] == "Room 'General' created"
    room_id = created["room_id"]
    for client in (b, c):
        assert (await client.request({"action": "join", "body": {"room_id": room_id}}))["status"] == "success"
    await seed_example_2(a, a_id, [b, c])  # with b and c on other nodes
    # The sender gets no copy: its next message is the next reply.
    assert (await a.request({"action": "leave"}))["message"] == "Left room"


@pytest_twisted.ensureDeferred
async def test_concurrent_senders_on_every_node_reach_everyone_once_in_order(cluster: Any) -> None:
    nodes = [await cluster() for _ in range(3)]
    _, members = await room_across(nodes + nodes)  # two clients per node
    # A second room with a member on each node: nothing may cross over.
    _, others = await room_across(nodes, "other")
    per_sender = 20
    for i in range(per_sender):
        for client, _ in members:
            client.send({"action": "message", "body": i})
    for other, _ in others:
        other.send({"action": "message", "body": "elsewhere"})
    for client, client_id in members:
        seen: dict[str, list[int]] = {}
        replies = 0
        while replies < per_sender or sum(len(v) for v in seen.values()) < per_sender * (len(members) - 1):
            message = await client.next()
            if "status" in message:
                assert message["status"] == "success", message
                replies += 1
                continue
            assert message["body"] != "elsewhere"
            seen.setdefault(message["from"], []).append(message["body"])
        assert client_id not in seen
        assert set(seen) == {other_id for _, other_id in members} - {client_id}
        for bodies in seen.values():
            assert bodies == list(range(per_sender))  # exactly once, in order


@pytest_twisted.ensureDeferred
async def test_ids_are_one_sequence_per_room_and_the_same_order_everywhere(cluster: Any) -> None:
    nodes = [await cluster() for _ in range(2)]
    _, members = await room_across(nodes + nodes)
    for client, _ in members:
        for i in range(5):
            client.send({"action": "message", "body": i})
    orders = []
    for client, _ in members:
        ids = []
        while len(ids) < 15:
            message = await client.next()
            if "id" in message:
                ids.append(message["id"])
        orders.append(ids)
    for ids in orders:
        assert ids == sorted(ids) and len(set(ids)) == 15
    assert set().union(*orders) == set(range(1, 21))


@pytest_twisted.ensureDeferred
async def test_the_room_goes_when_its_last_member_anywhere_goes(cluster: Any) -> None:
    one, two, three = [await cluster() for _ in range(3)]
    room_id, [(a, _), (b, _)] = await room_across([one, two])
    await a.request({"action": "leave"})
    (c, _) = await welcomed(three)
    # Still there: b (on another node) is in it.
    assert (await c.request({"action": "join", "body": {"room_id": room_id}}))["status"] == "success"
    await c.request({"action": "leave"})
    await b.close()  # the last member disconnects
    # A disconnect reaches Redis after the connection is gone (there is no
    # reply to wait for): once its node has seen it and Redis applied it,
    # the room is gone everywhere.
    await two.all_gone()
    await within(two.chat.settled(), "the disconnect to reach Redis")
    listing = await c.request({"action": "list"})
    assert listing == {"status": "success", "rooms": []}
    for client in (a, c):
        refused = await client.request({"action": "join", "body": {"room_id": room_id}})
        assert refused == {"status": "error", "message": f"Room {room_id} does not exist"}


@pytest_twisted.ensureDeferred
async def test_client_and_room_ids_are_unique_across_nodes(cluster: Any) -> None:
    one, two = await cluster(), await cluster()
    (a, a_id) = await welcomed(one)
    room_id = (await a.request({"action": "create", "body": "r"}))["room_id"]
    # The second node's ID source offers the taken IDs first.
    offered = iter([a_id, "bbbbbbbb", room_id, "cccccccc"])
    two.factory.core._new_id = lambda: next(offered)
    (b, b_id) = await welcomed(two)
    assert b_id == "bbbbbbbb"
    created = await b.request({"action": "create", "body": "s"})
    assert created["room_id"] == "cccccccc"
    rooms = (await a.request({"action": "list"}))["rooms"]
    assert [(r["room_id"], r["name"], r["members"]) for r in rooms] == [(room_id, "r", 1), ("cccccccc", "s", 1)]


@pytest_twisted.ensureDeferred
async def test_list_members_history_nicks_and_events_are_cluster_wide(cluster: Any) -> None:
    one, two = await cluster(), await cluster()
    (a, a_id), (b, b_id) = await welcomed(one), await welcomed(two)
    assert (await a.request({"action": "nick", "body": "Ada"}))["nick"] == "Ada"
    room_id = (await a.request({"action": "create", "body": "r"}))["room_id"]
    assert (await a.request({"action": "events", "body": True}))["status"] == "success"
    # A nick taken in the room (case-insensitively) by a member on another node.
    await b.request({"action": "nick", "body": "ADA"})
    refused = await b.request({"action": "join", "body": {"room_id": room_id}})
    assert refused["status"] == "error" and "taken" in refused["message"]
    await b.request({"action": "nick", "body": "Bob"})
    await b.request({"action": "join", "body": {"room_id": room_id}})
    joined = await a.next()
    assert {k: joined[k] for k in ("event", "room_id", "client_id", "nick")} == {
        "event": "join", "room_id": room_id, "client_id": b_id, "nick": "Bob"}
    clash = await a.request({"action": "nick", "body": "bob"})
    assert clash == {"status": "error", "message": "Nick 'bob' is already taken in this room"}
    members = await a.request({"action": "members"})
    assert members["members"] == [{"client_id": a_id, "nick": "Ada", "role": "owner"},
                                  {"client_id": b_id, "nick": "Bob", "role": "member"}]
    for i in range(3):
        await b.request({"action": "message", "body": f"m{i}"})
    history = await a.request({"action": "history", "body": {"limit": 2}})
    assert [(m["body"], m["id"], m["nick"]) for m in history["messages"]] == [("m1", 2, "Bob"), ("m2", 3, "Bob")]
    older = await a.request({"action": "history", "body": {"before": 2}})
    assert [m["body"] for m in older["messages"]] == ["m0"]
    await b.request({"action": "nick", "body": "Bobby"})
    await b.request({"action": "leave"})
    kinds = []
    while len(kinds) < 2:
        message = await a.next()
        if "event" in message:
            kinds.append((message["event"], message["nick"]))
    assert kinds == [("nick", "Bobby"), ("leave", "Bobby")]
    listing = await b.request({"action": "list"})
    assert listing["rooms"][0]["members"] == 1


@pytest_twisted.ensureDeferred
async def test_each_broadcast_goes_to_redis_once(cluster: Any, redis_server: RedisServer) -> None:
    nodes = [await cluster() for _ in range(3)]
    _, members = await room_across(nodes + nodes)
    before = _publishes(redis_server)
    await members[0][0].request({"action": "message", "body": "one"})
    for client, _ in members[1:]:
        assert (await client.next())["body"] == "one"
    assert _publishes(redis_server) - before == 1  # six members on three nodes, one PUBLISH


def _publishes(redis_server: RedisServer) -> int:
    return _command_stats(redis_server).get("publish", {}).get("calls", 0)


def _command_stats(redis_server: RedisServer) -> dict[str, dict[str, int]]:
    """INFO commandstats: {command: {"calls": n, "failed_calls": n, ...}}."""
    stats: dict[str, dict[str, int]] = {}
    for line in redis_server.command("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line[len("cmdstat_"):].partition(":")
            stats[name] = {
                key: int(value) for key, value in (f.split("=") for f in fields.split(",")) if value.isdigit()
            }
    return stats


@pytest_twisted.ensureDeferred
async def test_scripts_are_loaded_before_the_first_calls(cluster: Any, redis_server: RedisServer) -> None:
    # From the first call of each script on: every call runs by its SHA1
    # (none fails with NOSCRIPT and goes again as EVAL with the text).
    nodes = [await cluster() for _ in range(2)]
    room_id, members = await room_across(nodes * 4)
    await members[0][0].request({"action": "message", "body": "hello"})
    stats = _command_stats(redis_server)
    assert stats["evalsha"]["calls"] > 10
    assert stats["evalsha"]["failed_calls"] == 0
    assert "eval" not in stats
    loads = stats.get("script|load") or stats["script"]  # Redis 7 names subcommands
    assert loads["calls"] == 2 * len(scripts.ALL)


@pytest_twisted.ensureDeferred
async def test_a_stopped_node_takes_its_members_out_at_once(cluster: Any) -> None:
    one, two = await cluster(), await cluster()
    (a, a_id), (b, b_id) = await welcomed(one), await welcomed(two)
    # Events on before b joins: b's join event, which comes through Redis,
    # is then known to come before anything else.
    await a.request({"action": "events", "body": True})
    room_id = (await a.request({"action": "create", "body": "lobby"}))["room_id"]
    await b.request({"action": "join", "body": {"room_id": room_id}})
    joined = await a.next()
    assert (joined["event"], joined["client_id"]) == ("join", b_id)
    await two.stop()  # what SIGTERM does
    left = await a.next()
    assert (left["event"], left["client_id"]) == ("leave", b_id)
    members = await a.request({"action": "members"})
    assert [m["client_id"] for m in members["members"]] == [a_id]


@pytest_twisted.ensureDeferred
async def test_redis_restart_local_chat_goes_on_and_all_comes_back(cluster: Any, redis_server: RedisServer) -> None:
    one, two = await cluster(redis_timeout=2), await cluster(redis_timeout=2)
    room_id, [(a, a_id), (a2, a2_id), (b, b_id)] = await room_across([one, one, two])
    await a.request({"action": "message", "body": "before"})
    for client in (a2, b):
        assert (await client.next())["id"] == 1
    redis_server.stop()
    for node in (one, two):
        await within(node.backplane.when_unavailable(), "the node to notice")
    # Members on the same node keep chatting.
    assert (await a.request({"action": "message", "body": "during"}))["status"] == "success"
    during = await a2.next()
    assert (during["body"], during["id"]) == ("during", 2)
    # What needs Redis says so, at once.
    for command in ({"action": "list"}, {"action": "create", "body": "x"},
                    {"action": "join", "body": {"room_id": "deadbeef"}}, {"action": "members"},
                    {"action": "history"}):
        assert await b.request(command) == UNAVAILABLE
    redis_server.start()  # same port, empty: every key was lost
    for node in (one, two):
        await within(node.backplane.when_available(), "the node to be back in step")
    # The room and its members are back, and ids go on past those seen.
    listing = await b.request({"action": "list"})
    assert [(r["room_id"], r["members"]) for r in listing["rooms"]] == [(room_id, 3)]
    await b.request({"action": "message", "body": "after"})
    for client in (a, a2):
        message = await client.next()
        assert (message["body"], message["id"]) == ("after", 3)
    await a.request({"action": "message", "body": "again"})
    for client in (a2, b):
        message = await client.next()
        assert (message["body"], message["id"]) == ("again", 4)
    # Nothing came twice: every queue is empty now.
    await a.request({"action": "members"})
    for client in (a2, b):
        assert (await client.request({"action": "members"}))["status"] == "success"
        assert not client.inbox



@pytest_twisted.ensureDeferred
async def test_a_redis_restart_brings_back_every_room_a_connection_keeps(
        cluster: Any, redis_server: RedisServer) -> None:
    one, two = await cluster(redis_timeout=2), await cluster(redis_timeout=2)
    (a, _), (b, b_id) = await welcomed(one), await welcomed(two)
    rooms = [(await a.request({"action": "create", "body": {"name": name, "keep": True}}))["room_id"]
             for name in ("R1", "R2")]
    for room_id in rooms:
        assert (await b.request({"action": "join", "body": {"room_id": room_id, "keep": True}}))["status"] == "success"
    redis_server.stop()
    for node in (one, two):
        await within(node.backplane.when_unavailable(), "the node to notice")
    redis_server.start()  # same port, empty: every key was lost
    for node in (one, two):
        await within(node.backplane.when_available(), "the node to be back in step")
    assert sorted(redis_server.command("SMEMBERS", f"chatd:client-rooms:{b_id}")) == sorted(rooms)
    listing = await a.request({"action": "list"})
    assert sorted((r["room_id"], r["members"]) for r in listing["rooms"]) == sorted((r, 2) for r in rooms)
    for room_id in rooms:
        assert (await a.request({"action": "message", "room_id": room_id, "body": room_id}))["status"] == "success"
        got = await b.next()
        assert (got["body"], got["room_id"]) == (room_id, room_id)


@pytest_twisted.ensureDeferred
async def test_pipelined_messages_and_the_next_command_keep_their_order(cluster: Any) -> None:
    one, two = await cluster(), await cluster()
    _, [(a, _), (b, _)] = await room_across([one, two])
    for i in range(5):
        a.send({"action": "message", "body": i})
    a.send({"action": "leave"})
    a.send({"action": "message", "body": "not in a room"})
    replies = [await a.next() for _ in range(7)]
    assert [r["message"] for r in replies] == ["Message sent"] * 5 + ["Left room", "You must join a room first"]
    assert [(await b.next())["body"] for _ in range(5)] == list(range(5))


@pytest_twisted.ensureDeferred
async def test_a_redis_that_stops_answering_is_given_up_and_rejoined(cluster: Any, redis_server: RedisServer) -> None:
    import signal

    one, two = await cluster(redis_timeout=1), await cluster(redis_timeout=1)
    room_id, [(a, _), (b, _)] = await room_across([one, two])
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)  # frozen: the sockets stay open
    try:
        # The command is sent and never answered: after --redis-timeout the
        # node gives up on the connection and the client hears why.
        assert await b.request({"action": "list"}) == UNAVAILABLE
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    for node in (one, two):
        await within(node.backplane.when_available(), "the node to be back in step")
    await a.request({"action": "message", "body": "still here"})
    assert (await b.next())["body"] == "still here"


@pytest_twisted.ensureDeferred
async def test_a_burst_of_messages_keeps_its_order_ids_and_history_across_nodes(cluster: Any) -> None:
    # Sent without waiting, the messages reach Redis in batches (one script
    # call per room per reactor iteration): order, ids and history hold.
    one, two = await cluster(), await cluster()
    room_id, [(a, a_id), (a2, _), (b, _)] = await room_across([one, one, two])
    bodies = [f"burst {i}" for i in range(30)]
    for body in bodies:
        a.send({"action": "message", "body": body})
    for _ in bodies:
        assert await a.next() == {"status": "success", "message": "Message sent"}
    for client in (a2, b):
        got = [await client.next() for _ in bodies]
        assert [(m["from"], m["body"], m["id"]) for m in got] == [
            (a_id, body, i + 1) for i, body in enumerate(bodies)
        ]
    history = await b.request({"action": "history", "body": {"limit": 3}})
    assert [(m["body"], m["id"]) for m in history["messages"]] == [("burst 27", 28), ("burst 28", 29), ("burst 29", 30)]


@pytest_twisted.ensureDeferred
async def test_a_burst_reaches_deflating_and_plain_clients_on_another_node(cluster: Any) -> None:
    # With --permessage-deflate, a batch from Redis goes to each member
    # compressed or plain, as it negotiated, in order.
    import json

    from twisted.internet.defer import Deferred
    from twisted.internet.threads import deferToThread
    from websockets.sync.client import connect

    one, two = await cluster(permessage_deflate=True), await cluster(permessage_deflate=True)
    sender, _ = await one.welcomed()
    room_id = (await sender.request({"action": "create", "body": "zip"}))["room_id"]
    bodies = [f"{i}: " + "compress me " * 200 for i in range(5)]
    ready: Deferred = Deferred()

    def members() -> list[Any]:
        url = f"ws://127.0.0.1:{two.port_number}"
        with connect(url, compression="deflate", open_timeout=10) as deflating, \
                connect(url, compression=None, open_timeout=10) as plain:
            for ws in (deflating, plain):
                json.loads(ws.recv(timeout=10))
                ws.send(json.dumps({"action": "join", "body": {"room_id": room_id}}))
                assert json.loads(ws.recv(timeout=10))["status"] == "success"
            from twisted.internet import reactor
            reactor.callFromThread(ready.callback, None)  # type: ignore[attr-defined]
            results = [deflating.response.headers.get("Sec-WebSocket-Extensions")]
            for ws in (deflating, plain):
                results.append([json.loads(ws.recv(timeout=10))["body"] for _ in bodies])
            return results

    d = deferToThread(members)
    await within(ready, "both members to join")
    for body in bodies:
        sender.send({"action": "message", "body": body})
    for _ in bodies:
        assert (await sender.next())["status"] == "success"
    extensions, deflated, plain = await within(d, "the members to receive the burst")
    assert extensions.startswith("permessage-deflate")
    assert deflated == plain == bodies


@pytest_twisted.ensureDeferred
async def test_history_in_redis_keeps_its_size_and_byte_bounds_across_batches(
    cluster: Any, redis_server: RedisServer
) -> None:
    # A burst goes to Redis in one batch: the room's history still keeps the
    # newest --history-size messages within --history-bytes.
    one, two = await cluster(history_size=4, history_bytes=10_000), await cluster(history_size=4, history_bytes=10_000)
    room_id, [(a, _), (b, _)] = await room_across([one, two])
    for i in range(10):
        a.send({"action": "message", "body": f"short {i}"})
    for _ in range(10):
        await a.next()
    for _ in range(10):
        await b.next()
    history = await b.request({"action": "history"})
    assert [m["body"] for m in history["messages"]] == [f"short {i}" for i in range(6, 10)]
    # Four short messages cannot reach 10,000 bytes: only the count binds,
    # and the bytes are left uncounted (-1) until they can matter.
    assert int(redis_server.command("HGET", f"chatd:room:{room_id}", "bytes")) == -1
    # Three messages of over 4,000 bytes: the newest two fit in 10,000
    # bytes, so the size bound (4) no longer decides.
    big = ["x" * 4000 + str(i) for i in range(3)]
    for body in big:
        a.send({"action": "message", "body": body})
    for _ in big:
        await a.next()
    for _ in big:
        await b.next()
    history = await b.request({"action": "history"})
    assert [m["body"] for m in history["messages"]] == big[1:]
    # The room's byte count, counted from the list when the large messages
    # came, is the size of what its history holds, after drops by count and
    # drops by bytes.
    entries = redis_server.command("LRANGE", f"chatd:history:{room_id}", "0", "-1")
    held = sum(len(entry.encode().split(b" ", 1)[1]) for entry in entries)
    assert len(entries) == 2
    assert int(redis_server.command("HGET", f"chatd:room:{room_id}", "bytes")) == held


@pytest_twisted.ensureDeferred
async def test_authenticated_users_are_known_on_every_node(cluster: Any, tmp_path: Any) -> None:
    import jwt

    from tests.support.clients import connect

    secret = tmp_path / "jwt.key"
    secret.write_bytes(b"a shared secret of the test, long enough for HS256")
    token = jwt.encode({"sub": "alice smith", "name": "Alice"}, secret.read_bytes(), algorithm="HS256")
    one, two = [await cluster(auth=f"jwt:key={secret}") for _ in range(2)]
    watcher, watcher_id = await welcomed(two)
    await watcher.request({"action": "events", "body": True})
    room_id = (await watcher.request({"action": "create", "body": "r"}))["room_id"]
    # At the handshake on one node...
    alice = await connect(one.port_number, headers={"Authorization": f"Bearer {token}"})
    welcome = await alice.next()
    assert welcome["user"] == "alice smith"
    assert (await alice.request({"action": "join", "body": {"room_id": room_id}}))["status"] == "success"
    joined = await watcher.next()
    assert (joined["event"], joined["user"], joined["nick"]) == ("join", "alice smith", "Alice")
    await alice.request({"action": "message", "body": "hello"})
    message = await watcher.next()
    assert (message["user"], message["nick"], message["body"]) == ("alice smith", "Alice", "hello")
    members = (await watcher.request({"action": "members"}))["members"]
    assert {"client_id": welcome["client_id"], "nick": "Alice", "user": "alice smith", "role": "member"} in members
    assert {"client_id": watcher_id, "nick": None, "role": "owner"} in members
    # Another node's member's user name cannot be taken as a nick.
    assert (await watcher.request({"action": "nick", "body": "Alice Smith"}))["status"] == "error"
    # ...and with the auth action, on the other node.
    bob, _ = await welcomed(two)
    await bob.request({"action": "join", "body": {"room_id": room_id}})
    await watcher.next()  # bob's join
    bob_token = jwt.encode({"sub": "bob", "name": "Bobby"}, secret.read_bytes(), algorithm="HS256")
    assert (await bob.request({"action": "auth", "body": {"token": bob_token}}))["user"] == "bob"
    renamed = await watcher.next()  # the default nick, from the token's name
    assert (renamed["event"], renamed["nick"], renamed["user"]) == ("nick", "Bobby", "bob")
    for client in (alice, bob, watcher):
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_node_stops_even_when_redis_is_gone(cluster: Any, redis_server: RedisServer) -> None:
    node = await cluster(redis_timeout=1)
    client, _ = await welcomed(node)
    redis_server.stop()
    # Nothing left to say goodbye to: stopping must not wait for Redis.
    await within(node.backplane.stop(), "the node to give up on Redis", seconds=10)
    node.stopped = True
    await InProcessServer.stop(node)


@pytest_twisted.ensureDeferred
async def test_list_pages_skip_private_rooms_and_a_restart_keeps_who_owns_what(
    cluster: Any, redis_server: RedisServer,
) -> None:
    one, two = await cluster(redis_timeout=2), await cluster(redis_timeout=2)
    (owner, owner_id), (moderator, moderator_id), (outsider, _) = [
        await welcomed(node) for node in (one, two, two)]
    # Five private rooms between two public ones, more than a page of two.
    others = [await welcomed(one) for _ in range(6)]
    names = ["public 1"] + [f"private {i}" for i in range(5)] + ["public 2"]
    for (client, _), name in zip(others, names, strict=False):
        await client.request({"action": "create", "body": {"name": name, "private": name.startswith("private")}})
    await outsider.request({"action": "create", "body": "public 2"})
    seen, after = [], None
    while True:
        page = await outsider.request({"action": "list", "body": {"limit": 2, **({"after": after} if after else {})}})
        seen += [room["name"] for room in page["rooms"]]
        if "next" not in page:
            break
        after = page["next"]
    assert seen == ["public 1", "public 2"]
    # A private room with an owner and a moderator, through a Redis restart.
    room_id = (await owner.request({"action": "create", "body": {"name": "Secret", "private": True}}))["room_id"]
    await owner.request({"action": "invite", "body": {"client_id": moderator_id}})
    await moderator.request({"action": "join", "body": {"room_id": room_id}})
    await owner.request({"action": "op", "body": {"client_id": moderator_id}})
    redis_server.stop()
    for node in (one, two):
        await within(node.backplane.when_unavailable(), "the node to notice")
    redis_server.start()  # empty: the nodes tell it what they know
    for node in (one, two):
        await within(node.backplane.when_available(), "the node to be back in step")
    assert room_id not in [r["room_id"] for r in (await outsider.request({"action": "list"}))["rooms"]]
    assert await outsider.request({"action": "join", "body": {"room_id": room_id}}) == {
        "status": "error", "message": f"Room {room_id} does not exist"}
    members = (await moderator.request({"action": "members"}))["members"]
    assert {m["client_id"]: m["role"] for m in members} == {owner_id: "owner", moderator_id: "moderator"}
    # Its members may come back after leaving.
    await moderator.request({"action": "leave"})
    assert (await moderator.request({"action": "join", "body": {"room_id": room_id}}))["status"] == "success"


@pytest_twisted.ensureDeferred
async def test_a_ban_by_user_name_removes_its_connections_on_every_node(cluster: Any, tmp_path: Any) -> None:
    import jwt

    from tests.support.clients import connect

    secret = tmp_path / "jwt.key"
    secret.write_bytes(b"a shared secret of the test, long enough for HS256")
    one, two = [await cluster(auth=f"jwt:key={secret}") for _ in range(2)]
    owner, owner_id = await welcomed(one)
    room_id = (await owner.request({"action": "create", "body": "Lobby"}))["room_id"]
    token = jwt.encode({"sub": "bob"}, secret.read_bytes(), algorithm="HS256")
    bobs = []
    for node in (one, two):
        bob = await connect(node.port_number, headers={"Authorization": f"Bearer {token}"})
        await bob.next()
        await bob.request({"action": "join", "body": {"room_id": room_id}})
        bobs.append(bob)
    assert (await owner.request({"action": "ban", "body": {"user": "bob", "reason": "enough"}}))["status"] == "success"
    for bob in bobs:
        assert await bob.next() == {"event": "kick", "room_id": room_id, "by": owner_id, "reason": "enough"}
        assert await bob.request({"action": "join", "body": {"room_id": room_id}}) == {
            "status": "error", "message": f"You are banned from room {room_id}"}
    members = (await owner.request({"action": "members"}))["members"]
    assert [m["client_id"] for m in members] == [owner_id]


@pytest_twisted.ensureDeferred
async def test_a_redis_with_a_password_and_another_database(redis_with_password: RedisServer) -> None:
    import socket as _socket

    from tests.support.redis import _read_reply, ClusterNodes

    redis = redis_with_password
    nodes = ClusterNodes((f"redis://:s3cret@127.0.0.1:{redis.port}/2",))
    try:
        one, two = await nodes.start(), await nodes.start()
        room_id, [(a, a_id), (b, _)] = await room_across([one, two])
        assert (await a.request({"action": "message", "body": "in db 2"}))["status"] == "success"
        assert (await b.next())["body"] == "in db 2"
        # The room is in database 2, which only the password opens.
        with _socket.create_connection(("127.0.0.1", redis.port), timeout=10) as sock:
            sock.sendall(b"AUTH s3cret\r\nSELECT 2\r\nEXISTS chatd:room:" + room_id.encode() + b"\r\n")
            stream = sock.makefile("rb")
            assert [_read_reply(stream) for _ in range(3)] == ["OK", "OK", 1]
        for client in (a, b):
            await client.close()
    finally:
        await nodes.stop()


@pytest_twisted.ensureDeferred
async def test_a_wrong_redis_password_is_said_and_the_node_keeps_trying(redis_with_password: RedisServer) -> None:
    from twisted.internet import reactor
    from twisted.logger import globalLogPublisher

    from chatd.compose import compose
    from chatd.settings import Settings

    redis = redis_with_password
    said: list[str] = []
    heard: Deferred = Deferred()

    def observe(event: dict[str, Any]) -> None:
        if "refused the connection's set-up" in str(event.get("log_format", "")):
            said.append(event["error"])
            if len(said) == 2 and not heard.called:
                heard.callback(None)  # twice: it tried again

    globalLogPublisher.addObserver(observe)
    settings = Settings(redis=(f"redis://:wrong@127.0.0.1:{redis.port}/0",), ping_interval=0, ping_timeout=0)
    server = compose(settings, reactor, reactor)
    shards, chat = server.shards, server.chat
    try:
        shards.start(chat)
        await within(heard, "the node to say Redis refused it, twice")
        assert "WRONGPASS" in said[0] or "invalid" in said[0]
        assert not shards.partly_available
    finally:
        globalLogPublisher.removeObserver(observe)
        await shards.stop()


@pytest_twisted.ensureDeferred
async def test_redis_keeps_the_rooms_of_each_client_and_cleans_up_an_older_record(
        cluster: Any, redis_server: RedisServer) -> None:
    node = await cluster()
    room_id, members = await room_across([node, node])
    (_, owner_id), (joiner, joiner_id) = members
    assert redis_server.command("SMEMBERS", f"chatd:client-rooms:{joiner_id}") == [room_id]
    assert (await joiner.request({"action": "leave"}))["status"] == "success"
    assert redis_server.command("SMEMBERS", f"chatd:client-rooms:{joiner_id}") == []
    # A client recorded by an older chatd (its room in a field, no set), of
    # a node that died: reaped, it is out of the room, which goes on.
    redis_server.command("HSET", "chatd:client:0ld0c1ie", "node", "gone-node", "room", room_id, "who", "0 ",
                         "claim", "", "counted", "", "user", "")
    redis_server.command("ZADD", f"chatd:members:{room_id}", "1000000", "0ld0c1ie")
    redis_server.command("SADD", "chatd:node-clients:gone-node", "0ld0c1ie")
    redis_server.command("SADD", "chatd:nodes", "gone-node")
    assert redis_server.command("EVAL", scripts.REAP, "0", "chatd:") == ["gone-node", 1]
    assert redis_server.command("ZRANGE", f"chatd:members:{room_id}", "0", "-1") == [owner_id]
    assert redis_server.command("EXISTS", "chatd:client:0ld0c1ie") == 0
