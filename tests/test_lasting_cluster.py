"""
Rooms that last on a cluster: two real ``twistd -n chatd`` nodes on a real
Redis, keeping their persistent rooms in a real PostgreSQL server.  Every
node is SIGKILLed and Redis emptied (FLUSHALL); started again, the nodes
find every persistent room, its roles, lists, memberships, read markers
and acknowledged messages in PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from tests.support.clients import WSClient
from tests.support.raw import http_get
from tests.support.redis import RedisServer
from tests.support.tokens import token
from tests.test_lasting import Daemon, guest, send, signed_in
from tests.test_sync import caught_up, lasting_news


class Cluster:
    """Two nodes on one Redis and one PostgreSQL database."""

    def __init__(self, daemon_factory: Any, redis: RedisServer, database: str, secret: Path) -> None:
        self.nodes = [Daemon(daemon_factory, database, secret, "--redis", redis.url) for _ in range(2)]

    async def start(self) -> list[int]:
        return [await node.start() for node in self.nodes]

    async def kill_and_restart(self, redis: RedisServer) -> list[int]:
        for node in self.nodes:
            node.process.signal("KILL")
            await node.process.wait_exit()
        assert redis.command("FLUSHALL") == "OK"
        return await self.start()


@pytest.fixture
def stored_cluster(daemon_factory: Any, redis_server: RedisServer, postgres_server: Any, secret_file: Path) -> Cluster:
    """Two nodes (not started) on the test's Redis and a new PostgreSQL database."""
    return Cluster(daemon_factory, redis_server, str(postgres_server.new_database()), secret_file)


async def alices_team(port: int) -> tuple[WSClient, str]:
    """alice, signed in, in her new persistent room "Team": (alice, its ID)."""
    alice, _ = await signed_in(port, "alice")
    return alice, (await request(alice, "create", {"name": "Team", "persistent": True}))["room_id"]


async def request(client: WSClient, action: str, body: Any = None) -> Any:
    return await client.request({"action": action} if body is None else {"action": action, "body": body})


@pytest_twisted.ensureDeferred
async def test_persistent_rooms_outlive_every_node_and_redis(
        stored_cluster: Cluster, redis_server: RedisServer) -> None:
    a, b = await stored_cluster.start()
    alice, _ = await signed_in(a, "alice")
    created = await request(alice, "create", {"name": "Team", "persistent": True})
    room = created["room_id"]
    assert created == {"status": "success", "room_id": room, "message": "Room 'Team' created", "persistent": True}
    bob, bob_id = await signed_in(b, "bob")
    bob_elsewhere, _ = await signed_in(a, "bob")
    assert (await request(bob, "join", {"room_id": room}))["status"] == "success"
    assert await request(alice, "op", {"client_id": bob_id}) == {
        "status": "success", "message": f"'{bob_id}' is now a moderator"}
    assert (await request(alice, "ban", {"user": "mallory"}))["status"] == "success"
    members = await request(bob, "members")
    assert members["persistent"] is True
    assert [(m["client_id"] == bob_id, m["role"]) for m in members["members"]] == [
        (False, "owner"), (True, "moderator")]
    for n in range(1, 6):
        await send(alice, f"m{n}")
    for n in range(1, 6):
        assert (await bob.next())["id"] == n
    assert await request(bob, "read", {"room_id": room, "id": 2}) == {"status": "success", "message": "Read up to 2"}
    assert await bob_elsewhere.next() == {"event": "read", "room_id": room, "id": 2}
    # Its last member gone, the room stays, on every node (and their memberships with it).
    await alice.close()
    await bob.close()
    listed = await request(bob_elsewhere, "list")
    assert [(r["room_id"], r.get("persistent")) for r in listed["rooms"]] == [(room, True)]
    # A seed-style room beside it vanishes as it always did.
    carol, _ = await guest(b)
    seed = (await request(carol, "create", "Lobby"))["room_id"]
    assert (await request(carol, "message", "hi"))["status"] == "success"

    a, b = await stored_cluster.kill_and_restart(redis_server)

    alice, _ = await signed_in(b, "alice")
    assert await request(alice, "rooms") == {"status": "success", "rooms": [{
        "room_id": room, "name": "Team", "private": False, "persistent": True, "role": "owner",
        "last_id": 5, "last_read": 0, "unread": 0}]}
    bob, bob_id = await signed_in(a, "bob")
    assert (await request(bob, "rooms"))["rooms"] == [{
        "room_id": room, "name": "Team", "private": False, "persistent": True, "role": "moderator",
        "last_id": 5, "last_read": 2, "unread": 3}]
    listed = await request(bob, "list")
    assert [(r["room_id"], r.get("persistent")) for r in listed["rooms"]] == [(room, True)]
    assert seed not in {r["room_id"] for r in listed["rooms"]}
    # The first join puts the room back into Redis; what bob missed comes from PostgreSQL.
    joined = await request(bob, "join", {"room_id": room, "since": 2})
    assert (joined["recovered"], [m["body"] for m in joined["messages"]]) == (True, ["m3", "m4", "m5"])
    history = await request(bob, "history")
    assert [m["body"] for m in history["messages"]] == ["m1", "m2", "m3", "m4", "m5"]
    members = await request(bob, "members")
    assert members["persistent"] is True and members["members"][0]["role"] == "moderator"
    mallory, _ = await signed_in(b, "mallory")
    assert (await request(mallory, "join", {"room_id": room}))["status"] == "error"
    # Numbering goes on above the last stored id, and the owner is the owner on any node.
    assert (await request(alice, "join", {"room_id": room}))["status"] == "success"
    await send(alice, "after")
    assert (await bob.next())["id"] == 6
    assert (await request(alice, "members"))["members"][0]["role"] == "moderator"
    assert (await request(alice, "members"))["members"][1]["role"] == "owner"

    # Only the owner deletes it; every member, on every node, hears of it.
    assert await request(bob, "delete", {"room_id": room}) == {
        "status": "error", "message": "Only the room's owner may delete it"}
    assert await request(alice, "delete", {"room_id": room}) == {
        "status": "success", "message": "Deleted room 'Team'"}
    assert await bob.next() == {"event": "deleted", "room_id": room}
    assert await request(bob, "members") == {"status": "error", "message": "You must join a room first"}
    assert await request(bob, "rooms") == {"status": "success", "rooms": []}
    assert (await request(bob, "join", {"room_id": room}))["message"] == f"Room {room} does not exist"


@pytest_twisted.ensureDeferred
async def test_a_cluster_refuses_what_one_process_refuses(
        stored_cluster: Cluster) -> None:
    a, b = await stored_cluster.start()
    visitor, _ = await guest(a)
    assert await request(visitor, "create", {"name": "Team", "persistent": True}) == {
        "status": "error", "message": "Sign in to create a persistent room"}
    assert await request(visitor, "read", {"room_id": "nope", "id": 1}) == {
        "status": "error", "message": "Sign in to keep read markers"}
    alice, _ = await signed_in(a, "alice")
    room = (await request(alice, "create", {"name": "Team", "persistent": True, "private": True}))["room_id"]
    await send(alice, "one")
    bob, _ = await signed_in(b, "bob")
    # A private room bob was not invited to: nothing leaks.
    for action, body in (("read", {"room_id": room, "id": 1}), ("delete", {"room_id": room}),
                         ("join", {"room_id": room})):
        reply = await request(bob, action, body)
        assert reply["status"] == "error" and room in reply["message"], (action, reply)
    assert await request(alice, "read", {"room_id": room, "id": 9}) == {
        "status": "error", "message": "Message 9 is past the room's last message (1)"}
    lobby = (await request(bob, "create", "Lobby"))["room_id"]
    assert await request(bob, "delete", {"room_id": lobby}) == {
        "status": "error", "message": "Room 'Lobby' is not persistent: it ends with its last member"}
    assert await request(bob, "read", {"room_id": lobby, "id": 1}) == {
        "status": "error", "message": "Room 'Lobby' is not persistent: it keeps no read markers"}
    # The connection stays usable, and the room unchanged.
    assert (await request(alice, "rooms"))["rooms"][0]["last_id"] == 1


@pytest_twisted.ensureDeferred
async def test_nothing_acknowledged_is_lost_when_every_node_and_redis_go(
        stored_cluster: Cluster, redis_server: RedisServer) -> None:
    for node in stored_cluster.nodes:
        node.args += ("--rate-messages", "0")
    a, b = await stored_cluster.start()
    alice, _ = await signed_in(a, "alice")
    room = (await request(alice, "create", {"name": "Stream", "persistent": True}))["room_id"]
    bob, _ = await signed_in(b, "bob")
    assert (await request(bob, "join", {"room_id": room}))["status"] == "success"
    # Pipelined without waiting; every node is killed as soon as 100 are
    # acknowledged, with more on their way, and Redis emptied.
    for n in range(1, 181):
        alice.send({"action": "message", "body": n})
    for _ in range(100):
        assert await alice.next() == {"status": "success", "message": "Message sent"}
    a, b = await stored_cluster.kill_and_restart(redis_server)
    bob, _ = await signed_in(b, "bob")
    assert (await request(bob, "join", {"room_id": room}))["status"] == "success"
    kept: list[Any] = []
    before = None
    while True:
        page = (await request(bob, "history", {"limit": 100} if before is None else {"limit": 100, "before": before}))
        if not page["messages"]:
            break
        kept = page["messages"] + kept
        before = kept[0]["id"]
    assert [m["body"] for m in kept] == list(range(1, len(kept) + 1))
    assert [m["id"] for m in kept] == list(range(1, len(kept) + 1))
    assert len(kept) >= 100
    await send(bob, "next")
    assert (await request(bob, "history", {"limit": 1}))["messages"][0]["id"] == len(kept) + 1


@pytest_twisted.ensureDeferred
async def test_memberships_on_a_cluster_follow_auth_and_bans(
        stored_cluster: Cluster, redis_server: RedisServer) -> None:
    for node in stored_cluster.nodes:
        node.args += ("--room", "Team:owner=alice", "--room", "Hidden:private:owner=alice")
    a, b = await stored_cluster.start()  # both declare: each room is made once
    carol, _ = await guest(b)
    listed = (await request(carol, "list"))["rooms"]
    assert [(r["name"], r["members"], r.get("persistent")) for r in listed] == [("Team", 0, True)]
    team = listed[0]["room_id"]
    # A guest who signs in inside a persistent room becomes its member.
    assert (await request(carol, "join", {"room_id": team}))["status"] == "success"
    assert (await request(carol, "auth", {"token": token("carol")}))["status"] == "success"
    assert [r["room_id"] for r in (await request(carol, "rooms"))["rooms"]] == [team]
    # Leaving ends a membership only once none of the user's connections, on any node, is in the room.
    carol_elsewhere, _ = await signed_in(a, "carol")
    assert (await request(carol_elsewhere, "join", {"room_id": team}))["status"] == "success"
    assert (await request(carol_elsewhere, "leave"))["status"] == "success"
    assert [r["room_id"] for r in (await request(carol_elsewhere, "rooms"))["rooms"]] == [team]
    alice, _ = await signed_in(a, "alice")
    assert [r["name"] for r in (await request(alice, "list"))["rooms"]] == ["Team", "Hidden"]
    assert (await request(alice, "join", {"room_id": team}))["status"] == "success"
    assert [m["role"] for m in (await request(alice, "members"))["members"]] == ["member", "owner"]
    await carol.close()
    # A ban ends the user's membership, even while they are away.
    assert (await request(alice, "ban", {"user": "carol"}))["status"] == "success"
    a, b = await stored_cluster.kill_and_restart(redis_server)
    carol, _ = await signed_in(a, "carol")
    assert await request(carol, "rooms") == {"status": "success", "rooms": []}
    assert await request(carol, "join", {"room_id": team}) == {
        "status": "error", "message": f"You are banned from room {team}"}


@pytest_twisted.ensureDeferred
async def test_a_database_outage_on_a_cluster_is_reported_and_survived(
        daemon_factory: Any, redis_server: RedisServer, postgres_server: Any, secret_file: Path) -> None:
    from tests.support.postgres import PostgresServer

    database = PostgresServer(postgres_server.bindir).start()  # its own, to stop
    try:
        node = Daemon(daemon_factory, database.new_database(), secret_file, "--redis", redis_server.url,
                      "--metrics", "tcp:0:interface=127.0.0.1")
        port = await node.start()
        metrics = int(await node.process.wait_metrics())
        alice, _ = await signed_in(port, "alice")
        room = (await request(alice, "create", {"name": "Team", "persistent": True}))["room_id"]
        await send(alice, "before")
        database.stop()
        # Reads first: the first one reports the outage, once, however many follow.
        for action, body in (("rooms", None), ("read", {"room_id": room, "id": 1})) * 3:
            assert await request(alice, action, body) == {
                "status": "error", "message": "The store is unavailable; try again later"}, action
        status, text = await http_get(f"http://127.0.0.1:{metrics}/readyz")
        assert status == 503 and text.startswith(b"not ready: the store cannot be read"), text
        assert node.process.output.count(b"Could not read the store") == 1
        assert await request(alice, "message", "during") == {
            "status": "error", "message": "Not stored: the store is unavailable; try again later"}
        status, text = await http_get(f"http://127.0.0.1:{metrics}/readyz")
        assert status == 503 and text.startswith(b"not ready: the store cannot write"), text
        # Rooms that do not last go on as ever.
        carol, _ = await guest(port)
        assert (await request(carol, "create", "Lobby"))["status"] == "success"
        assert (await request(carol, "message", "hi"))["status"] == "success"
        database.start()
        await send(alice, "after")
        assert await http_get(f"http://127.0.0.1:{metrics}/readyz") == (200, b"ready\n")
        assert (await request(alice, "read", {"room_id": room, "id": 1}))["status"] == "success"
        assert b"Could not write" in node.process.output
    finally:
        database.remove()


@pytest_twisted.ensureDeferred
async def test_history_and_recovery_page_past_redis_into_the_store(
        stored_cluster: Cluster) -> None:
    for node in stored_cluster.nodes:
        node.args += ("--history-size", "3")  # Redis keeps a room's last 3
    a, b = await stored_cluster.start()
    alice, room = await alices_team(a)
    for n in range(1, 11):
        await send(alice, f"m{n}")
    bob, _ = await signed_in(b, "bob")
    # Joining since 2: 8 missed, more than a join recovers (--history-size):
    # the first 3 of them, from PostgreSQL, as on one process; the client pages for the rest.
    joined = await request(bob, "join", {"room_id": room, "since": 2})
    assert (joined["recovered"], [m["id"] for m in joined["messages"]]) == (False, [3, 4, 5])
    carol, _ = await signed_in(a, "carol")
    joined = await request(carol, "join", {"room_id": room, "since": 7})
    assert (joined["recovered"], [m["id"] for m in joined["messages"]]) == (True, [8, 9, 10])
    assert [m["body"] for m in (await request(bob, "history", {"limit": 5}))["messages"]] == [
        "m6", "m7", "m8", "m9", "m10"]
    older = await request(bob, "history", {"limit": 5, "before": 6})
    assert [m["body"] for m in older["messages"]] == ["m1", "m2", "m3", "m4", "m5"]


@pytest_twisted.ensureDeferred
async def test_workers_keep_persistent_rooms_in_postgresql(
        daemon_factory: Any, redis_server: RedisServer, postgres_server: Any, secret_file: Path) -> None:
    parent = daemon_factory("--workers", "2", "--listen", "tcp:0:interface=127.0.0.1", "--redis", redis_server.url,
                            "--store", str(postgres_server.new_database()), "--auth", f"jwt:key={secret_file}",
                            "--room", "Team:owner=alice", "--log-format", "json")
    match = await parent.wait_for(rb"Listening on 127\.0\.0\.1:(\d+) for 2 workers", "the parent to bind")
    for _ in range(2):
        await parent.wait_for(rb"In step with Redis(?s:.*)In step with Redis", "both workers")
    port = int(match.group(1))
    # Connections land on either worker; they are one chat, with one store.
    clients = [await signed_in(port, user) for user in ("alice", "bob", "carol", "dave")]
    listed = (await request(clients[0][0], "list"))["rooms"]
    assert [(r["name"], r.get("persistent")) for r in listed] == [("Team", True)]
    team = listed[0]["room_id"]
    for client, _ in clients:
        assert (await request(client, "join", {"room_id": team}))["status"] == "success"
    await send(clients[0][0], "hello")
    for client, _ in clients[1:]:
        assert (await client.next())["body"] == "hello"
    for client, _ in clients:
        rooms = (await request(client, "rooms"))["rooms"]
        assert [(r["room_id"], r["last_id"]) for r in rooms] == [(team, 1)]


@pytest_twisted.ensureDeferred
async def test_decisions_stored_out_of_order_leave_the_newest_state(postgres_server: Any) -> None:
    """Two nodes' changes to one room are ordered by Redis; their commits to
    PostgreSQL may land the other way round, and the newest state stands."""
    from twisted.internet import reactor

    from chatd.backplane.lasting import ClusterLasting
    from chatd.rooms.rules import Changes
    from chatd.rooms.state import Room
    from chatd.storage.postgres import open_postgresql

    durable = open_postgresql(str(postgres_server.new_database()), reactor)
    durable.open()
    try:
        durable.write("INSERT INTO rooms (room_id, name, created_at, created_by, seq, private, owner)"
                      " VALUES ('r1', 'Team', 't', '', 1, 0, 'alice')")
        await durable.synced()
        lasting = ClusterLasting(durable, rooms=None, calls=None, shards=None, core=None)  # type: ignore[arg-type]

        def view(banned: set[str], moderators: set[str]) -> Room:
            room = Room("r1", "Team", "", "", 1)
            room.persistent, room.owner_user = True, "alice"
            room.banned, room.moderator_users = banned or None, moderators or None
            return room

        # As Redis applied them: mallory banned at version 4, then eve at 6
        # (decided on the room with mallory's ban in it).
        first = (view(set(), {"bob"}), Changes(ban=frozenset({"u:mallory"})), 4)
        second = (view({"u:mallory"}, {"bob"}), Changes(ban=frozenset({"u:eve"})), 6)
        for decision in (second, first):  # the second's commit lands first
            assert lasting.managed(*decision)
            await durable.synced()
        [stored] = await durable.rooms("room_id = ?", "r1")
        assert (stored.banned, stored.moderators, stored.lists_v) == ({"u:mallory", "u:eve"}, {"bob"}, 7)
    finally:
        await durable.close()


@pytest_twisted.ensureDeferred
async def test_a_redis_restart_under_live_nodes_puts_roles_and_lists_back(
        stored_cluster: Cluster, redis_server: RedisServer) -> None:
    a, b = await stored_cluster.start()
    alice, room = await alices_team(a)
    bob, bob_id = await signed_in(b, "bob")
    assert (await request(bob, "join", {"room_id": room}))["status"] == "success"
    assert (await request(alice, "op", {"client_id": bob_id}))["status"] == "success"
    assert (await request(alice, "ban", {"user": "mallory"}))["status"] == "success"
    redis_server.stop()
    redis_server.start()  # same port, empty: the nodes' resync makes the room anew
    for node in stored_cluster.nodes:
        await node.process.wait_for(rb"In step with Redis(?s:.*)In step with Redis", "the node back in step")
        await node.process.wait_for(rb"Restored the roles and lists of 1 persistent rooms", "the lists back")
    mallory, _ = await signed_in(b, "mallory")
    assert await request(mallory, "join", {"room_id": room}) == {
        "status": "error", "message": f"You are banned from room {room}"}
    members = (await request(bob, "members"))["members"]  # in the order the nodes' resyncs put them back
    assert {m["client_id"]: m["role"] for m in members}[bob_id] == "moderator"
    assert sorted(m["role"] for m in members) == ["moderator", "owner"]
    # Changes after it are stored as ever (the room's version went on above the stored one).
    assert (await request(alice, "ban", {"user": "eve"}))["status"] == "success"
    a, b = await stored_cluster.kill_and_restart(redis_server)
    eve, _ = await signed_in(a, "eve")
    assert await request(eve, "join", {"room_id": room}) == {
        "status": "error", "message": f"You are banned from room {room}"}
    bob, _ = await signed_in(b, "bob")
    assert (await request(bob, "join", {"room_id": room}))["status"] == "success"
    assert [m["role"] for m in (await request(bob, "members"))["members"]] == ["moderator"]


@pytest_twisted.ensureDeferred
async def test_an_ownerless_persistent_room_is_owned_by_whoever_is_in_it(stored_cluster: Cluster) -> None:
    for node in stored_cluster.nodes:
        node.args += ("--room", "Lobby")
    a, b = await stored_cluster.start()
    carol, _ = await signed_in(a, "carol")
    lobby = (await request(carol, "list"))["rooms"][0]["room_id"]
    assert (await request(carol, "join", {"room_id": lobby}))["status"] == "success"
    assert [(r["room_id"], r["role"]) for r in (await request(carol, "rooms"))["rooms"]] == [(lobby, "owner")]
    dave, _ = await signed_in(b, "dave")
    assert (await request(dave, "join", {"room_id": lobby}))["status"] == "success"
    assert [m["role"] for m in (await request(dave, "members"))["members"]] == ["owner", "member"]


@pytest_twisted.ensureDeferred
async def test_a_user_syncs_its_lasting_rooms_on_another_node_after_every_node_restarts(
        stored_cluster: Cluster, redis_server: RedisServer) -> None:
    a, b = await stored_cluster.start()
    team, ops = await lasting_news(a, b)
    a, b = await stored_cluster.kill_and_restart(redis_server)
    await caught_up(a, b, team, ops)  # bob on the node alice was on, alice on the other
