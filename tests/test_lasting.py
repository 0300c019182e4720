"""
Rooms that last, on the real ``twistd -n chatd`` with each durable store
(an SQLite file; a real PostgreSQL server): persistent rooms, memberships,
read markers, history from the store, deletion, and everything acknowledged
found again after a SIGKILL and a restart.  Bad input to each new action
gets its own error and changes nothing stored.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from tests.support.clients import WSClient, connect
from tests.support.raw import http_get
from tests.support.tokens import token


async def signed_in(port: int, user: str) -> tuple[WSClient, str]:
    client = await connect(port)
    welcome = await client.next()
    reply = await client.request({"action": "auth", "body": {"token": token(user)}})
    assert reply["status"] == "success", reply
    return client, welcome["client_id"]


async def guest(port: int) -> tuple[WSClient, str]:
    client = await connect(port)
    return client, (await client.next())["client_id"]


class Daemon:
    """``twistd -n chatd`` on one store, started again after a SIGKILL."""

    def __init__(self, daemon_factory: Any, store: str, secret: Path, *extra: str) -> None:
        self.start_daemon = daemon_factory
        self.args = ("--listen", "tcp:0:interface=127.0.0.1", "--store", store, "--auth", f"jwt:key={secret}",
                     "--ping-interval", "0", *extra)
        self.process: Any = None
        self.wrapper: tuple[str, ...] = ()

    async def start(self) -> int:
        self.process = self.start_daemon(*self.args, wrapper=self.wrapper)
        return int(await self.process.wait_listening())

    async def kill_and_restart(self) -> int:
        self.process.signal("KILL")
        await self.process.wait_exit()
        return await self.start()


async def team(port: int) -> tuple[WSClient, WSClient, str]:
    """alice's persistent room "Team", with bob in it: (alice, bob, its ID)."""
    alice, _ = await signed_in(port, "alice")
    room = (await alice.request({"action": "create", "body": {"name": "Team", "persistent": True}}))["room_id"]
    bob, _ = await signed_in(port, "bob")
    assert (await bob.request({"action": "join", "body": {"room_id": room}}))["status"] == "success"
    return alice, bob, room


async def send(client: WSClient, body: Any) -> None:
    assert await client.request({"action": "message", "body": body}) == {
        "status": "success", "message": "Message sent"}


@pytest_twisted.ensureDeferred
async def test_a_persistent_room_and_everything_in_it_survive_sigkill(
        daemon_factory: Any, store: str, secret_file: Path) -> None:
    chatd = Daemon(daemon_factory, store, secret_file)
    port = await chatd.start()
    alice, _ = await signed_in(port, "alice")
    created = await alice.request({"action": "create", "body": {"name": "Team", "persistent": True}})
    room = created["room_id"]
    assert created == {"status": "success", "room_id": room, "message": "Room 'Team' created", "persistent": True}
    bob, bob_id = await signed_in(port, "bob")
    assert (await bob.request({"action": "join", "body": {"room_id": room}}))["status"] == "success"
    assert await alice.request({"action": "op", "body": {"client_id": bob_id}}) == {
        "status": "success", "message": f"'{bob_id}' is now a moderator"}
    assert (await alice.request({"action": "ban", "body": {"user": "mallory"}}))["status"] == "success"
    for n in range(1, 6):
        await send(alice, f"m{n}")
    for n in range(1, 6):
        assert (await bob.next())["id"] == n
    assert await bob.request({"action": "read", "body": {"room_id": room, "id": 2}}) == {
        "status": "success", "message": "Read up to 2"}
    # A seed-style room beside it vanishes as it always did.
    carol, _ = await guest(port)
    seed = (await carol.request({"action": "create", "body": "Lobby"}))["room_id"]

    port = await chatd.kill_and_restart()

    alice, _ = await signed_in(port, "alice")
    rooms = await alice.request({"action": "rooms"})
    assert rooms == {"status": "success", "rooms": [{
        "room_id": room, "name": "Team", "private": False, "persistent": True, "role": "owner",
        "last_id": 5, "last_read": 0, "unread": 0}]}
    bob, bob_id = await signed_in(port, "bob")
    assert (await bob.request({"action": "rooms"}))["rooms"] == [{
        "room_id": room, "name": "Team", "private": False, "persistent": True, "role": "moderator",
        "last_id": 5, "last_read": 2, "unread": 3}]
    listed = await bob.request({"action": "list"})
    assert [(r["room_id"], r.get("persistent")) for r in listed["rooms"]] == [(room, True)]
    assert seed not in {r["room_id"] for r in listed["rooms"]}
    assert (await bob.request({"action": "join", "body": {"room_id": room, "since": 2}})) == {
        "status": "success", "message": "Joined room 'Team'", "room_id": room, "recovered": True,
        "messages": [{"from": m["from"], "body": f"m{m['id']}", "timestamp": m["timestamp"], "id": m["id"],
                      "nick": "alice", "user": "alice"} for m in (await bob.request(
                          {"action": "history", "body": {"limit": 3}}))["messages"]]}
    history = await bob.request({"action": "history"})
    assert [m["body"] for m in history["messages"]] == ["m1", "m2", "m3", "m4", "m5"]
    members = await bob.request({"action": "members"})
    assert members["persistent"] is True and members["members"][0]["role"] == "moderator"
    mallory, _ = await signed_in(port, "mallory")
    assert (await mallory.request({"action": "join", "body": {"room_id": room}}))["status"] == "error"
    # Numbering goes on above the last stored id.
    assert (await alice.request({"action": "join", "body": {"room_id": room}}))["status"] == "success"
    await send(alice, "after")
    assert (await bob.next())["id"] == 6


@pytest_twisted.ensureDeferred
async def test_the_owner_deletes_a_persistent_room_and_everyone_is_told(
        daemon_factory: Any, store: str, secret_file: Path) -> None:
    chatd = Daemon(daemon_factory, store, secret_file)
    port = await chatd.start()
    alice, bob, room = await team(port)
    assert await bob.request({"action": "delete", "body": {"room_id": room}}) == {
        "status": "error", "message": "Only the room's owner may delete it"}
    assert await alice.request({"action": "delete", "body": {"room_id": room}}) == {
        "status": "success", "message": "Deleted room 'Team'"}
    assert await bob.next() == {"event": "deleted", "room_id": room}
    assert await bob.request({"action": "members"}) == {"status": "error", "message": "You must join a room first"}
    port = await chatd.kill_and_restart()
    bob, _ = await signed_in(port, "bob")
    assert await bob.request({"action": "rooms"}) == {"status": "success", "rooms": []}
    assert (await bob.request({"action": "join", "body": {"room_id": room}}))["message"] == f"Room {room} does not exist"


@pytest_twisted.ensureDeferred
async def test_history_pages_back_through_the_store_past_memory(
        daemon_factory: Any, store: str, secret_file: Path) -> None:
    chatd = Daemon(daemon_factory, store, secret_file, "--history-size", "3", "--rate-messages", "0")
    port = await chatd.start()
    alice, _ = await signed_in(port, "alice")
    room = (await alice.request({"action": "create", "body": {"name": "Log", "persistent": True}}))["room_id"]
    for n in range(1, 11):
        await send(alice, n)
    pages, before = [], None
    while True:
        body: dict[str, Any] = {"limit": 4} if before is None else {"limit": 4, "before": before}
        page = (await alice.request({"action": "history", "body": body}))["messages"]
        if not page:
            break
        pages.append([m["body"] for m in page])
        before = page[0]["id"]
    assert pages == [[7, 8, 9, 10], [3, 4, 5, 6], [1, 2]]
    # A reconnect whose gap is older than memory recovers from the store.
    bob, _ = await signed_in(port, "bob")
    joined = await bob.request({"action": "join", "body": {"room_id": room, "since": 1}})
    assert joined["recovered"] is False  # more than history-size missed: the first 3 after it, then page on
    assert [m["body"] for m in joined["messages"]] == [2, 3, 4]


@pytest_twisted.ensureDeferred
async def test_who_may_create_and_read(daemon_factory: Any, tmp_path: Path, secret_file: Path) -> None:
    chatd = Daemon(daemon_factory, f"sqlite:{tmp_path}/c.db", secret_file)
    port = await chatd.start()
    carol, _ = await guest(port)
    assert await carol.request({"action": "create", "body": {"name": "T", "persistent": True}}) == {
        "status": "error", "message": "Sign in to create a persistent room"}
    alice, _ = await signed_in(port, "alice")
    room = (await alice.request({"action": "create", "body": {"name": "T", "persistent": True}}))["room_id"]
    await carol.request({"action": "join", "body": {"room_id": room}})
    assert await carol.request({"action": "read", "body": {"room_id": room, "id": 1}}) == {
        "status": "error", "message": "Sign in to keep read markers"}
    await send(alice, "one")
    await carol.next()
    assert await alice.request({"action": "read", "body": {"room_id": room, "id": 2}}) == {
        "status": "error", "message": "Message 2 is past the room's last message (1)"}
    # A user's other connections hear the marker move.
    alice2, _ = await signed_in(port, "alice")
    assert await alice.request({"action": "read", "body": {"room_id": room, "id": 1}}) == {
        "status": "success", "message": "Read up to 1"}
    assert await alice2.next() == {"event": "read", "room_id": room, "id": 1}
    seed = (await carol.request({"action": "create", "body": "Lobby"}))["room_id"]
    assert await alice2.request({"action": "read", "body": {"room_id": seed, "id": 1}}) == {
        "status": "error", "message": f"You are not a member of room {seed}"}
    assert await alice2.request({"action": "delete", "body": {"room_id": seed}}) == {
        "status": "error", "message": "Room 'Lobby' is not persistent: it ends with its last member"}
    for bad, message in (
        ({"action": "read"}, 'Read body must be an object with a string \'room_id\', like {"room_id": "a1b2c3d4", "id": 42}'),
        ({"action": "read", "body": {"room_id": room}}, "'id' must be a message id (a whole number of at least 1)"),
        ({"action": "read", "body": {"room_id": room, "id": "1"}}, "'id' must be a message id (a whole number of at least 1)"),
        ({"action": "delete", "body": []}, 'Delete body must be an object with a string \'room_id\', like {"room_id": "a1b2c3d4"}'),
        ({"action": "delete", "body": {"room_id": "nope"}}, "Room nope does not exist"),
        ({"action": "create", "body": {"name": "X", "persistent": "yes"}}, "'persistent' must be true or false"),
    ):
        assert await alice.request(bad) == {"status": "error", "message": message}, bad
    assert (await alice.request({"action": "rooms"}))["rooms"][0]["last_read"] == 1
    # A guest that signs in inside the room is a member from then on.
    await carol.request({"action": "join", "body": {"room_id": room}})
    assert (await carol.request({"action": "auth", "body": {"token": token("carol")}}))["status"] == "success"
    await carol.close()
    carol, _ = await signed_in(port, "carol")
    assert [r["room_id"] for r in (await carol.request({"action": "rooms"}))["rooms"]] == [room]


@pytest_twisted.ensureDeferred
async def test_the_memory_store_keeps_no_rooms(daemon_factory: Any, secret_file: Path) -> None:
    chatd = Daemon(daemon_factory, "memory", secret_file)
    port = await chatd.start()
    alice, _ = await signed_in(port, "alice")
    assert await alice.request({"action": "create", "body": {"name": "T", "persistent": True}}) == {
        "status": "error",
        "message": "This server keeps no rooms: persistent rooms need a store (--store sqlite:PATH or postgresql://...)"}


@pytest_twisted.ensureDeferred
async def test_nothing_acknowledged_is_lost_to_a_sigkill_mid_stream(
        daemon_factory: Any, store: str, secret_file: Path) -> None:
    chatd = Daemon(daemon_factory, store, secret_file, "--rate-messages", "0")
    port = await chatd.start()
    alice, _ = await signed_in(port, "alice")
    room = (await alice.request({"action": "create", "body": {"name": "Stream", "persistent": True}}))["room_id"]
    # Messages pipelined without waiting (as many as a connection may have
    # awaiting replies); chatd is killed as soon as 100 are acknowledged,
    # with more on their way.
    for n in range(1, 181):
        alice.send({"action": "message", "body": n})
    acknowledged = 0
    while acknowledged < 100:
        reply = await alice.next()
        assert reply == {"status": "success", "message": "Message sent"}, reply
        acknowledged += 1
    port = await chatd.kill_and_restart()
    alice, _ = await signed_in(port, "alice")
    await alice.request({"action": "join", "body": {"room_id": room}})
    kept: list[Any] = []
    before = None
    while True:
        body: dict[str, Any] = {"limit": 100} if before is None else {"limit": 100, "before": before}
        page = (await alice.request({"action": "history", "body": body}))["messages"]
        if not page:
            break
        kept = page + kept
        before = page[0]["id"]
    # Every acknowledged message, in order and numbered from 1 (and maybe
    # some that were stored but not yet acknowledged).
    assert [m["body"] for m in kept] == list(range(1, len(kept) + 1))
    assert [m["id"] for m in kept] == list(range(1, len(kept) + 1))
    assert len(kept) >= acknowledged
    await send(alice, "next")
    assert (await alice.request({"action": "history", "body": {"limit": 1}}))["messages"][0]["id"] == len(kept) + 1


@pytest_twisted.ensureDeferred
async def test_declared_rooms_are_made_once_and_kept(daemon_factory: Any, store: str, secret_file: Path) -> None:
    chatd = Daemon(daemon_factory, store, secret_file, "--room", "Team:private:owner=alice", "--room", "Lobby")
    port = await chatd.start()
    bob, _ = await signed_in(port, "bob")
    listed = (await bob.request({"action": "list"}))["rooms"]
    assert [(r["name"], r.get("persistent")) for r in listed] == [("Lobby", True)]  # Team is private
    lobby = listed[0]["room_id"]
    alice, _ = await signed_in(port, "alice")
    team = [r for r in (await alice.request({"action": "list"}))["rooms"] if r["name"] == "Team"]
    assert [(r["private"], r["persistent"]) for r in team] == [(True, True)]
    assert (await alice.request({"action": "join", "body": {"room_id": team[0]["room_id"]}}))["status"] == "success"
    assert (await alice.request({"action": "members"}))["members"][0]["role"] == "owner"
    port = await chatd.kill_and_restart()
    bob, _ = await signed_in(port, "bob")
    assert [r["room_id"] for r in (await bob.request({"action": "list"}))["rooms"]] == [lobby]
    assert (await bob.request({"action": "join", "body": {"room_id": lobby}}))["status"] == "success"
    # Lobby has no lasting owner: whoever is in it owns it.
    assert (await bob.request({"action": "members"}))["members"][0]["role"] == "owner"


@pytest_twisted.ensureDeferred
async def test_a_database_outage_is_reported_and_survived(
        daemon_factory: Any, postgres_server: Any, secret_file: Path) -> None:
    from tests.support.postgres import PostgresServer

    database = PostgresServer(postgres_server.bindir).start()  # its own, to stop
    try:
        chatd = Daemon(daemon_factory, database.new_database(), secret_file,
                       "--metrics", "tcp:0:interface=127.0.0.1")
        port = await chatd.start()
        metrics = int(await chatd.process.wait_metrics())
        alice, _ = await signed_in(port, "alice")
        await alice.request({"action": "create", "body": {"name": "Team", "persistent": True}})
        await send(alice, "before")
        database.stop()
        assert await alice.request({"action": "message", "body": "during"}) == {
            "status": "error", "message": "Not stored: the store is unavailable; try again later"}
        assert await alice.request({"action": "rooms"}) == {
            "status": "error", "message": "The store is unavailable; try again later"}
        status, body = await http_get(f"http://127.0.0.1:{metrics}/readyz")
        assert status == 503 and body.startswith(b"not ready: the store cannot write"), body
        _, text = await http_get(f"http://127.0.0.1:{metrics}/metrics")
        assert b"chatd_store_available 0.0" in text
        # Rooms that do not last go on as ever.
        carol, _ = await guest(port)
        assert (await carol.request({"action": "create", "body": "Lobby"}))["status"] == "success"
        database.start()
        await send(alice, "after")
        assert await http_get(f"http://127.0.0.1:{metrics}/readyz") == (200, b"ready\n")
        history = await alice.request({"action": "history"})
        assert [m["body"] for m in history["messages"]] == ["before", "after"]
        assert b"Could not write" in chatd.process.output and b"writes again" in chatd.process.output
    finally:
        database.remove()


@pytest_twisted.ensureDeferred
async def test_a_full_disk_is_reported_and_survived(daemon_factory: Any, tmp_path: Path, secret_file: Path) -> None:
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed")
    # The daemon may write no file past 1 MiB (RLIMIT_FSIZE, which binds
    # root as anyone): its SQLite store fills up as on a full disk.
    chatd = Daemon(daemon_factory, f"sqlite:{tmp_path}/c.db", secret_file, "--metrics", "tcp:0:interface=127.0.0.1")
    chatd.wrapper = ("prlimit", f"--fsize={1 << 20}:unlimited", "--")  # soft: raised again below
    port = await chatd.start()
    metrics = int(await chatd.process.wait_metrics())
    alice, _ = await signed_in(port, "alice")
    await alice.request({"action": "create", "body": {"name": "Team", "persistent": True}})
    await send(alice, "before")
    big = "x" * 30_000
    for _ in range(100):
        reply = await alice.request({"action": "message", "body": big})
        if reply["status"] == "error":
            break
    assert reply == {"status": "error", "message": "Not stored: the store is unavailable; try again later"}
    status, body = await http_get(f"http://127.0.0.1:{metrics}/readyz")
    assert status == 503 and body.startswith(b"not ready: the store cannot write"), body
    _, text = await http_get(f"http://127.0.0.1:{metrics}/metrics")
    assert b"chatd_store_available 0.0" in text
    assert b"Could not write" in chatd.process.output
    # Room freed on the disk: the daemon writes again, untouched.
    subprocess.run(["prlimit", "--pid", str(chatd.process.pid), "--fsize=unlimited"], check=True)
    await send(alice, "after")
    assert await http_get(f"http://127.0.0.1:{metrics}/readyz") == (200, b"ready\n")
    history = await alice.request({"action": "history", "body": {"limit": 1}})
    assert [m["body"] for m in history["messages"]] == ["after"]


@pytest_twisted.ensureDeferred
async def test_a_ban_ends_a_users_membership_even_while_they_are_away(
        daemon_factory: Any, tmp_path: Path, secret_file: Path) -> None:
    chatd = Daemon(daemon_factory, f"sqlite:{tmp_path}/c.db", secret_file)
    port = await chatd.start()
    alice, bob, room = await team(port)
    await bob.close()
    assert (await alice.request({"action": "ban", "body": {"user": "bob"}}))["status"] == "success"
    port = await chatd.kill_and_restart()
    bob, _ = await signed_in(port, "bob")
    assert await bob.request({"action": "rooms"}) == {"status": "success", "rooms": []}
    assert await bob.request({"action": "join", "body": {"room_id": room}}) == {
        "status": "error", "message": f"You are banned from room {room}"}
