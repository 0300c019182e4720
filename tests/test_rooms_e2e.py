"""
Rooms people own, end to end against the real ``twistd -n chatd``: private
rooms and invitations, moderators, kicks and bans, and the owner's
succession, in one process and across two nodes on real Redis (each client
on the node the scenario puts it on: a kick and a ban cross nodes).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import jwt
import pytest
import pytest_twisted

from tests.support.clients import connect, WSClient
from tests.support.raw import http_get
from tests.support.servers import DaemonProcess, InProcessServer

SECRET = b"a shared secret of the test, long enough for HS256"


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwt.key"
    path.write_bytes(SECRET)
    return path


async def person(port: int, user: str | None = None, events: bool = False) -> tuple[WSClient, str]:
    headers = {}
    if user is not None:
        token = jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")
        headers["Authorization"] = f"Bearer {token}"
    client = await connect(port, headers=headers)
    client_id = (await client.next())["client_id"]
    if events:
        await client.request({"action": "events", "body": True})
    return client, client_id


async def event(client: WSClient, kind: str, about: str) -> dict[str, Any]:
    """The next event of this kind about this client (others pass by)."""
    while True:
        message = await client.next()
        if message.get("event") == kind and message.get("client_id") == about:
            return message


def ok(message: str) -> dict[str, str]:
    return {"status": "success", "message": message}


def error(message: str) -> dict[str, str]:
    return {"status": "error", "message": message}


async def owned_rooms(first: int, second: int) -> None:
    """The scenario, with clients on the ``first`` and ``second`` ports."""
    alice, alice_id = await person(first, "alice")
    bob, bob_id = await person(second, "bob", events=True)
    carol, carol_id = await person(first, events=True)
    mallory, mallory_id = await person(second, "mallory")
    created = await alice.request({"action": "create", "body": {"name": "Secret", "private": True}})
    room_id = created["room_id"]
    assert created == {"status": "success", "room_id": room_id, "message": "Room 'Secret' created",
                       "private": True}
    join = {"action": "join", "body": {"room_id": room_id}}
    # Hidden, and refused as if it did not exist, until invited.
    assert room_id not in [r["room_id"] for r in (await bob.request({"action": "list"}))["rooms"]]
    assert await bob.request(join) == error(f"Room {room_id} does not exist")
    assert await alice.request({"action": "invite", "body": {"user": "bob"}}) == ok("Invited 'bob'")
    listed = [r for r in (await bob.request({"action": "list"}))["rooms"] if r["room_id"] == room_id]
    assert listed == [{"room_id": room_id, "name": "Secret", "members": 1,
                       "created_at": created_at(listed), "private": True}]
    assert (await bob.request(join))["status"] == "success"
    assert await alice.request({"action": "invite", "body": {"client_id": carol_id}}) == ok(f"Invited '{carol_id}'")
    assert await alice.request({"action": "invite", "body": {"user": "mallory"}}) == ok("Invited 'mallory'")
    for client in (carol, mallory):
        assert (await client.request(join))["status"] == "success"
    members = (await carol.request({"action": "members"}))["members"]
    assert [(m["client_id"], m["role"]) for m in members] == [
        (alice_id, "owner"), (bob_id, "member"), (carol_id, "member"), (mallory_id, "member")]
    # Roles.
    assert await bob.request({"action": "kick", "body": {"client_id": carol_id}}) == error(
        "Only the room's owner or a moderator may kick")
    assert await bob.request({"action": "op", "body": {"client_id": bob_id}}) == error(
        "Only the room's owner may op")
    assert await alice.request({"action": "op", "body": {"client_id": bob_id}}) == ok(
        f"'{bob_id}' is now a moderator")
    assert (await event(carol, "op", bob_id))["room_id"] == room_id
    assert (await event(bob, "op", bob_id))["room_id"] == room_id  # its subject sees it too
    # A kick across nodes: mallory (events off) is told, the others see it leave.
    assert await alice.request({"action": "kick", "body": {"client_id": mallory_id, "reason": "spam"}}) == ok(
        f"Kicked '{mallory_id}'")
    assert await mallory.next() == {"event": "kick", "room_id": room_id, "by": alice_id, "reason": "spam"}
    await event(carol, "leave", mallory_id)
    await event(bob, "leave", mallory_id)
    assert await carol.request({"action": "message", "body": "after the kick"}) == ok("Message sent")
    assert (await bob.next())["body"] == "after the kick"
    assert await mallory.request({"action": "members"}) == error("You must join a room first")
    assert await mallory.request(join) == error(f"Room {room_id} does not exist")  # the invitation went
    # A ban by the moderator, across nodes, by client ID.
    assert await bob.request({"action": "ban", "body": {"client_id": carol_id, "reason": "rude"}}) == ok(
        f"Banned '{carol_id}'")
    assert await carol.next() == {"event": "kick", "room_id": room_id, "by": bob_id, "reason": "rude"}
    # The ban took her invitation: the private room is not there for her
    # (a ban says nothing of a private room to those not invited).
    assert await carol.request(join) == error(f"Room {room_id} does not exist")
    assert await alice.request({"action": "invite", "body": {"client_id": carol_id}}) == error(
        f"'{carol_id}' is banned from this room; unban it first")
    # Bad requests: each its own answer, and the connection goes on.
    assert await alice.request({"action": "kick", "body": {"client_id": alice_id}}) == error(
        "You cannot kick yourself")
    assert await bob.request({"action": "ban", "body": {"user": "alice"}}) == error(
        "The room's owner cannot be banned")
    assert await alice.request({"action": "kick", "body": {"client_id": mallory_id}}) == error(
        f"Client {mallory_id} is not in this room")
    assert await alice.request({"action": "kick", "body": {"client_id": "00000000"}}) == error(
        "Client 00000000 is not in this room")  # as for a client elsewhere: no oracle
    assert await alice.request({"action": "deop", "body": {"client_id": alice_id}}) == error(
        f"Client {alice_id} is the room's owner")
    assert await alice.request({"action": "kick", "body": {"user": "bob"}}) == error(
        "Kick body must be an object with a string 'client_id', like "
        '{"client_id": "9930240b", "reason": "spam"}')
    assert await alice.request({"action": "unban", "body": {"user": "mallory"}}) == error(
        "'mallory' is not banned from this room")
    assert await alice.request({"action": "unban", "body": {"client_id": carol_id}}) == ok(
        f"Unbanned '{carol_id}'")
    await alice.request({"action": "invite", "body": {"client_id": carol_id}})
    assert (await carol.request(join))["status"] == "success"
    # The owner leaves: the moderator (on the other node) owns the room.
    await event(bob, "join", carol_id)
    assert await alice.request({"action": "leave"}) == ok("Left room")
    assert (await event(carol, "owner", bob_id))["room_id"] == room_id
    assert (await event(bob, "owner", bob_id))["room_id"] == room_id
    members = (await carol.request({"action": "members"}))["members"]
    assert [(m["client_id"], m["role"]) for m in members] == [(bob_id, "owner"), (carol_id, "member")]
    # Alice was invited as its creator, so she may come back.
    assert (await alice.request(join))["status"] == "success"
    # A user invited before connecting may join once signed in, on any node.
    assert await bob.request({"action": "invite", "body": {"user": "dave"}}) == ok("Invited 'dave'")
    dave, _ = await person(first, "dave")
    assert (await dave.request(join))["status"] == "success"
    for client in (alice, bob, carol, mallory, dave):
        await client.close()


def created_at(rooms: list[dict[str, Any]]) -> Any:
    return rooms[0]["created_at"] if rooms else None


@pytest_twisted.ensureDeferred
async def test_owned_rooms_in_one_process(
    daemon_factory: Callable[..., DaemonProcess], secret_file: Path,
) -> None:
    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--auth", f"jwt:key={secret_file}",
                           "--metrics", "tcp:0:interface=127.0.0.1")
    port = await chatd.wait_listening()
    await owned_rooms(port, port)
    # Each action carried out is counted and logged; refusals are errors.
    _, metrics = await http_get(f"http://127.0.0.1:{await chatd.wait_metrics()}/metrics")
    for action, count in (("invite", 5), ("op", 1), ("kick", 1), ("ban", 1), ("unban", 1)):
        assert f'chatd_room_actions_total{{action="{action}"}} {count}.0'.encode() in metrics, action
    assert b"chatd_errors_total{kind=\"permission\"} 2.0" in metrics
    await chatd.wait_for(rb"in [0-9a-f]{8}: kick [0-9a-f]{8}", "the kick in the log")


@pytest_twisted.ensureDeferred
async def test_owned_rooms_across_two_nodes(
    daemon_factory: Callable[..., DaemonProcess], secret_file: Path, redis_server: Any,
) -> None:
    nodes = [daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--redis", redis_server.url,
                            "--auth", f"jwt:key={secret_file}") for _ in range(2)]
    first, second = [await node.wait_listening() for node in nodes]
    await owned_rooms(first, second)


@pytest_twisted.ensureDeferred
async def test_a_seed_client_sees_the_seed_replies_in_an_owned_room(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    """Nothing of ownership reaches a client that never asks for it."""
    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1")
    port = await chatd.wait_listening()
    owner, _ = await person(port)
    seed, seed_id = await person(port)
    created = await owner.request({"action": "create", "body": "Lobby"})
    assert list(created) == ["status", "room_id", "message"]
    room_id = created["room_id"]
    assert await seed.request({"action": "join", "body": {"room_id": room_id}}) == {
        "status": "success", "message": "Joined room 'Lobby'", "room_id": room_id}
    await owner.request({"action": "leave"})  # the seed client owns it now, and is not told
    owner.send({"action": "join", "body": {"room_id": room_id}})
    assert (await owner.next())["status"] == "success"
    owner.send({"action": "message", "body": "hi"})
    assert (await owner.next())["status"] == "success"
    message = await seed.next()
    assert list(message) == ["from", "body", "timestamp", "id"]
    for client in (owner, seed):
        await client.close()


@pytest.mark.parametrize("where", ["one process", "two nodes"])
@pytest_twisted.ensureDeferred
async def test_an_invitee_that_asked_for_events_hears_of_the_invitation(
    where: str, server: InProcessServer, cluster: Any,
) -> None:
    first, second = (server, server) if where == "one process" else (await cluster(), await cluster())
    owner, owner_id = await first.welcomed()
    guest, guest_id = await second.welcomed()
    quiet, quiet_id = await second.welcomed()
    await owner.request({"action": "nick", "body": "Ada"})
    await guest.request({"action": "events", "body": True})
    room_id = (await owner.request({"action": "create", "body": {"name": "Den", "private": True}}))["room_id"]
    await owner.request({"action": "invite", "body": {"client_id": quiet_id}})  # events off: not told
    assert (await owner.request({"action": "invite", "body": {"client_id": guest_id}}))["status"] == "success"
    notice = await guest.next()
    assert notice == {"event": "invite", "room_id": room_id, "name": "Den", "client_id": owner_id,
                      "nick": "Ada", "timestamp": notice["timestamp"]}
    assert (await guest.request({"action": "join", "body": {"room_id": room_id}}))["status"] == "success"
    assert await quiet.request({"action": "members"}) == {"status": "error", "message": "You must join a room first"}
    for client in (owner, guest, quiet):
        await client.close()
