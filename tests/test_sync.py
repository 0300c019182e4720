"""
``sync``, one round trip back to where a client was, on the real
``twistd -n chatd``: a guest names its rooms and the last message it saw in
each; a signed-in user gets its lasting rooms too, with unread counts from
the store, after a restart as before it.  What cannot be entered is said,
room by room, and bad input gets its own error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted

from tests.support.clients import WSClient
from tests.test_lasting import Daemon, guest, send, signed_in
from tests.test_room_scope import ports  # noqa: F401  (the fixture: one process, and two nodes of a cluster)

ARGS = ("--listen", "tcp:0:interface=127.0.0.1", "--store", "memory", "--ping-interval", "0")


async def room_with(client: WSClient, name: str, *bodies: str, private: bool = False) -> str:
    """A room ``client`` creates and says ``bodies`` in (the room's ID)."""
    reply = await client.request({"action": "create", "body": {"name": name, "private": private, "keep": True}})
    room_id: str = reply["room_id"]
    for body in bodies:
        assert (await client.request({"action": "message", "room_id": room_id, "body": body}))["status"] == "success"
    return room_id


@pytest_twisted.ensureDeferred
async def test_a_guest_catches_up_on_the_rooms_it_names(ports: Any) -> None:  # noqa: F811
    port, other = await ports()
    host, _ = await guest(other)
    den = await room_with(host, "Den", "d1", "d2", "d3")
    lobby = await room_with(host, "Lobby", "l1")
    hidden = await room_with(host, "Hidden", "secret", private=True)

    client, _ = await guest(port)
    reply = await client.request({"action": "sync", "body": {"since": {
        den: 1, lobby: 0, hidden: 0, "gone0000": 3}}})
    assert reply["status"] == "success"
    by_id = {r["room_id"]: r for r in reply["rooms"]}
    assert [r["room_id"] for r in reply["rooms"]] == [den, lobby]
    assert {k: v for k, v in by_id[den].items() if k != "messages"} == {
        "room_id": den, "name": "Den", "private": False, "persistent": False, "role": "member",
        "last_id": 3, "last_read": 1, "unread": 2, "current": True, "recovered": True}
    assert [(m["id"], m["body"]) for m in by_id[den]["messages"]] == [(2, "d2"), (3, "d3")]
    assert [m["body"] for m in by_id[lobby]["messages"]] == ["l1"]
    assert (by_id[lobby]["unread"], by_id[lobby]["current"]) == (1, False)
    # A private room reads as one that does not exist: nothing leaks.
    assert reply["skipped"] == [
        {"room_id": hidden, "message": f"Room {hidden} does not exist"},
        {"room_id": "gone0000", "message": "Room gone0000 does not exist"}]
    # In both rooms now, its broadcasts naming theirs; the first named is current.
    for room_id, body in ((lobby, "to lobby"), (den, "to den")):
        assert (await host.request({"action": "message", "room_id": room_id, "body": body}))["status"] == "success"
        message = await client.next()
        assert (message["room_id"], message["body"]) == (room_id, body)
    assert (await client.request({"action": "members"}))["room_id"] == den
    # Syncing again changes nothing: the rooms it is in are listed, current first.
    again = await client.request({"action": "sync"})
    assert [(r["room_id"], r["current"], r["unread"]) for r in again["rooms"]] == [
        (den, True, 0), (lobby, False, 0)]
    assert "skipped" not in again


async def lasting_news(alice_at: int, bob_at: int) -> tuple[str, str]:
    """alice's lasting rooms Team and Ops, bob in both; bob reads Ops up to
    its first message, then alice says two things in Team and one more in
    Ops: (Team's ID, Ops's)."""
    alice, _ = await signed_in(alice_at, "alice")
    team = (await alice.request({"action": "create", "body": {"name": "Team", "persistent": True}}))["room_id"]
    ops = (await alice.request({"action": "create", "body": {"name": "Ops", "persistent": True, "keep": True}}))[
        "room_id"]
    bob, _ = await signed_in(bob_at, "bob")
    for room_id in (team, ops):
        assert (await bob.request({"action": "join", "body": {"room_id": room_id, "keep": True}}))[
            "status"] == "success"
    await send(alice, "o1")  # to Ops, alice's current room
    assert (await bob.next())["body"] == "o1"
    assert await bob.request({"action": "read", "body": {"room_id": ops, "id": 1}}) == {
        "status": "success", "message": "Read up to 1"}
    for body in ("t1", "t2"):
        assert (await alice.request({"action": "message", "room_id": team, "body": body}))["status"] == "success"
    await send(alice, "o2")
    return team, ops


async def caught_up(bob_at: int, alice_at: int, team: str, ops: str) -> None:
    """bob, signed in again, syncs: in both rooms, with what he missed and
    his unread counts from the store; alice, back too, hears him in each."""
    bob, bob_id = await signed_in(bob_at, "bob")
    reply = await bob.request({"action": "sync", "body": {"since": {team: 1}}})
    assert reply["status"] == "success" and "skipped" not in reply, reply
    rooms = {r["room_id"]: r for r in reply["rooms"]}
    assert [r["room_id"] for r in reply["rooms"]] == [team, ops]
    assert {k: v for k, v in rooms[team].items() if k != "messages"} == {
        "room_id": team, "name": "Team", "private": False, "persistent": True, "role": "member",
        "last_id": 2, "last_read": 0, "unread": 2, "current": True, "recovered": True}
    assert [m["body"] for m in rooms[team]["messages"]] == ["t2"]
    assert rooms[ops] == {
        "room_id": ops, "name": "Ops", "private": False, "persistent": True, "role": "member",
        "last_id": 2, "last_read": 1, "unread": 1, "current": False}
    alice, _ = await signed_in(alice_at, "alice")
    assert [r["room_id"] for r in (await alice.request({"action": "sync"}))["rooms"]] == [team, ops]
    assert (await bob.request({"action": "message", "room_id": ops, "body": "back"}))["status"] == "success"
    heard = await alice.next()
    assert (heard["room_id"], heard["body"], heard["from"]) == (ops, "back", bob_id)


@pytest_twisted.ensureDeferred
async def test_a_user_catches_up_on_its_lasting_rooms_after_a_restart(
        daemon_factory: Any, tmp_path: Path, secret_file: Path) -> None:
    chatd = Daemon(daemon_factory, f"sqlite:{tmp_path}/chatd.db", secret_file)
    port = await chatd.start()
    team, ops = await lasting_news(port, port)
    port = await chatd.kill_and_restart()
    await caught_up(port, port, team, ops)


@pytest_twisted.ensureDeferred
async def test_sync_keeps_to_the_limit_and_to_the_room_rules(ports: Any) -> None:  # noqa: F811
    port, other = await ports("--max-rooms-per-connection", "2")
    host, host_id = await guest(other)
    rooms = [await room_with(host, name) for name in ("A", "B")]
    client, client_id = await guest(port)
    third = await room_with(client, "C")
    # Banned from A: the rest is entered, to the limit.
    assert (await host.request({"action": "join", "body": {"room_id": rooms[0], "keep": True}}))[
        "status"] == "success"
    assert (await host.request({"action": "ban", "room_id": rooms[0], "body": {"client_id": client_id}}))[
        "status"] == "success"
    reply = await client.request({"action": "sync", "body": {"since": {rooms[0]: 0, rooms[1]: 0}}})
    assert [r["room_id"] for r in reply["rooms"]] == [rooms[1], third]
    assert reply["skipped"] == [{"room_id": rooms[0], "message": f"You are banned from room {rooms[0]}"}]
    # At the limit now.
    host2, _ = await guest(other)
    fourth = await room_with(host2, "D")
    reply = await client.request({"action": "sync", "body": {"since": {fourth: 0}}})
    assert reply["skipped"] == [{"room_id": fourth, "message": "You are in too many rooms (limit 2)"}]
    assert host_id  # the host stays, unaffected


@pytest_twisted.ensureDeferred
async def test_bad_sync_requests_get_specific_errors(daemon_factory: Any) -> None:
    port = int(await daemon_factory(*ARGS).wait_listening())
    client, _ = await guest(port)
    too_many = {f"r{n}": 0 for n in range(1001)}
    for body, error in (
        ("all", 'Sync body must be an object, like {"since": {"a1b2c3d4": 42}}'),
        ({"since": [1, 2]}, "'since' must be an object from room IDs to the last message id seen in each, "
                            'like {"a1b2c3d4": 42}'),
        ({"since": {"r1": -1}}, "'since' of room r1 must be a message id (a whole number of at least 0)"),
        ({"since": {"r1": True}}, "'since' of room r1 must be a message id (a whole number of at least 0)"),
        ({"since": {"x" * 65: 1}}, "'room_id' must be a room ID: a string of 1 to 64 characters"),
        ({"since": {"": 1}}, "'room_id' must be a room ID: a string of 1 to 64 characters"),
        ({"since": too_many}, "'since' may name at most 1000 rooms"),
    ):
        assert await client.request({"action": "sync", "body": body}) == {"status": "error", "message": error}
    # Nothing to catch up on.
    assert await client.request({"action": "sync"}) == {"status": "success", "rooms": []}


@pytest_twisted.ensureDeferred
async def test_a_sync_costs_what_its_joins_would(ports: Any) -> None:  # noqa: F811
    # Entering many rooms at once is no cheaper than joining them: the
    # command rate limit is charged a join for each room past the first.
    port, _ = await ports("--rate-commands", "1", "--rate-commands-burst", "3")
    hosts = [(await guest(port))[0] for _ in range(5)]
    rooms = [await room_with(host, f"R{n}") for n, host in enumerate(hosts)]
    client, _ = await guest(port)
    reply = await client.request({"action": "sync", "body": {"since": {room_id: 0 for room_id in rooms}}})
    assert [r["room_id"] for r in reply["rooms"]] == rooms
    refused = await client.request({"action": "members"})
    assert (refused["status"], refused["message"]) == ("error", "Rate limit exceeded")
