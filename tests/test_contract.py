"""
The room rules, on every store: each test runs on one process (the rooms
in its memory) and on two cluster nodes sharing a real redis-server (the
rooms in Redis), through the same code, over real WebSockets.  The
people in a test connect to the two nodes in turn, so that a cluster's
rules are decided on both.  The rules' own unit tests are in
tests/test_rules.py; the wire's parsing in tests/test_rooms.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pytest
import pytest_twisted

from tests.conftest import Deployment
from tests.support.clients import WSClient
from tests.support.tokens import token


class Person:
    """A connection, its client ID, and a way to act."""

    def __init__(self, client: WSClient, client_id: str) -> None:
        self.client = client
        self.id = client_id

    async def act(self, action: str, body: Any = None) -> dict[str, Any]:
        return await self.client.request({"action": action} if body is None else {"action": action, "body": body})

    async def ok(self, action: str, body: Any = None) -> dict[str, Any]:
        reply = await self.act(action, body)
        assert reply["status"] == "success", reply
        return reply

    async def refused(self, action: str, body: Any = None) -> str:
        reply = await self.act(action, body)
        assert reply["status"] == "error", reply
        return str(reply["message"])

    async def event(self, kind: str, about: str) -> dict[str, Any]:
        """The next event of this kind about this client (others pass by)."""
        while True:
            message = await self.client.next()
            if message.get("event") == kind and message.get("client_id") == about:
                return message

    async def members(self) -> list[tuple[str, str]]:
        return [(m["client_id"], m["role"]) for m in (await self.ok("members"))["members"]]


class Rooms:
    """People on a deployment, each connecting to the next server."""

    def __init__(self, servers: tuple[Any, Any]) -> None:
        self.servers = servers
        self.people: list[Person] = []

    async def person(self, user: Optional[str] = None, events: bool = True) -> Person:
        client, client_id = await self.servers[len(self.people) % 2].welcomed()
        person = Person(client, client_id)
        self.people.append(person)
        if user is not None:
            assert (await person.ok("auth", {"token": token(user)}))["user"] == user
        if events:
            await person.ok("events", True)
        return person

    async def close(self) -> None:
        for person in self.people:
            await person.client.close()


@pytest_twisted.async_yield_fixture
async def rooms(deployment: Deployment, secret_file: Path) -> Any:
    chat = Rooms(await deployment(auth=f"jwt:key={secret_file}"))
    yield chat
    await chat.close()


@pytest_twisted.ensureDeferred
async def test_the_creator_owns_the_room_and_members_show_roles(rooms: Rooms) -> None:
    alice, bob = await rooms.person("alice"), await rooms.person()
    room_id = (await alice.ok("create", "Lobby"))["room_id"]
    await bob.ok("join", {"room_id": room_id})
    await alice.ok("op", {"client_id": bob.id})
    assert await alice.members() == [(alice.id, "owner"), (bob.id, "moderator")]
    assert list((await alice.ok("members"))["members"][0]) == ["client_id", "nick", "user", "role"]


@pytest_twisted.ensureDeferred
async def test_a_private_room_is_hidden_until_invited(rooms: Rooms) -> None:
    alice, bob, carol = await rooms.person("alice"), await rooms.person("bob"), await rooms.person()
    reply = await alice.ok("create", {"name": "Secret", "private": True})
    assert reply == {"status": "success", "room_id": reply["room_id"], "message": "Room 'Secret' created",
                     "private": True}
    room_id = reply["room_id"]
    await carol.ok("create", "Open")
    assert [r["name"] for r in (await bob.ok("list"))["rooms"]] == ["Open"]
    assert await bob.refused("join", {"room_id": room_id}) == f"Room {room_id} does not exist"
    # Invited by user name: any connection of that user, now or later.
    assert await alice.ok("invite", {"user": "bob"}) == {"status": "success", "message": "Invited 'bob'"}
    assert [(r["name"], r.get("private")) for r in (await bob.ok("list"))["rooms"]] == [
        ("Secret", True), ("Open", None)]
    await bob.ok("join", {"room_id": room_id})
    # By client ID: that connection only.
    assert (await alice.ok("invite", {"client_id": carol.id}))["message"] == f"Invited '{carol.id}'"
    await carol.ok("join", {"room_id": room_id})
    assert len(await alice.members()) == 3


@pytest_twisted.ensureDeferred
async def test_only_the_owner_or_a_moderator_may_act(rooms: Rooms) -> None:
    alice, bob, carol = await rooms.person(), await rooms.person(), await rooms.person()
    room_id = (await alice.ok("create", "Lobby"))["room_id"]
    for member in (bob, carol):
        await member.ok("join", {"room_id": room_id})
    for action in ("kick", "ban"):
        assert await bob.refused(action, {"client_id": carol.id}) == (
            f"Only the room's owner or a moderator may {action}")
    await alice.ok("op", {"client_id": bob.id})
    assert await bob.refused("op", {"client_id": carol.id}) == "Only the room's owner may op"
    # A moderator may kick a member, not another moderator, nor the owner.
    await alice.ok("op", {"client_id": carol.id})
    assert await bob.refused("kick", {"client_id": carol.id}) == "Only the room's owner may kick a moderator"
    assert await bob.refused("kick", {"client_id": alice.id}) == "The room's owner cannot be kicked"
    assert (await alice.ok("deop", {"client_id": carol.id}))["message"] == f"'{carol.id}' is no longer a moderator"
    assert (await bob.ok("kick", {"client_id": carol.id}))["message"] == f"Kicked '{carol.id}'"


@pytest.mark.parametrize(("who", "action", "body", "error"), [
    ("alice", "kick", "alice", "You cannot kick yourself"),
    ("alice", "ban", "alice", "You cannot ban yourself"),
    ("bob", "ban", "alice", "The room's owner cannot be banned"),
    # A client that does not exist is answered as one in another room.
    ("alice", "kick", "nobody", "Client 00000000 is not in this room"),
    ("alice", "kick", "dave", "Client {dave} is not in this room"),
    ("alice", "op", "alice", "Client {alice} is the room's owner"),
    ("alice", "deop", "carol", "Client {carol} is not a moderator"),
    ("alice", "unban", "carol", "'{carol}' is not banned from this room"),
    ("alice", "invite", "carol", "Room 'Lobby' is public: anyone may join"),
])
@pytest_twisted.ensureDeferred
async def test_refusals_name_their_reason(rooms: Rooms, who: str, action: str, body: str, error: str) -> None:
    people = {name: await rooms.person(events=False) for name in ("alice", "bob", "carol", "dave")}
    room_id = (await people["alice"].ok("create", "Lobby"))["room_id"]
    for name in ("bob", "carol"):
        await people[name].ok("join", {"room_id": room_id})
    await people["alice"].ok("op", {"client_id": people["bob"].id})
    target = people[body].id if body in people else "00000000"
    assert await people[who].refused(action, {"client_id": target}) == error.format(
        **{name: person.id for name, person in people.items()})


@pytest_twisted.ensureDeferred
async def test_a_kick_tells_the_one_kicked_and_the_others_see_a_leave(rooms: Rooms) -> None:
    alice, bob, carol = await rooms.person(), await rooms.person(events=False), await rooms.person()
    room_id = (await alice.ok("create", "Lobby"))["room_id"]
    for member in (bob, carol):
        await member.ok("join", {"room_id": room_id})
    await alice.ok("kick", {"client_id": bob.id, "reason": "spam"})
    # Whatever its events setting.
    assert await bob.client.next() == {"event": "kick", "room_id": room_id, "by": alice.id, "reason": "spam"}
    assert (await carol.event("leave", bob.id))["room_id"] == room_id
    assert await bob.refused("members") == "You must join a room first"
    # A kick is not a ban: back at once.
    await bob.ok("join", {"room_id": room_id})


@pytest_twisted.ensureDeferred
async def test_a_ban_by_user_removes_every_connection_and_holds_until_unbanned(rooms: Rooms) -> None:
    alice = await rooms.person("alice")
    phone, laptop = await rooms.person("bob", events=False), await rooms.person("bob", events=False)
    room_id = (await alice.ok("create", "Lobby"))["room_id"]
    for connection in (phone, laptop):
        await connection.ok("join", {"room_id": room_id})
    assert await alice.ok("ban", {"user": "bob", "reason": "trolling"}) == {
        "status": "success", "message": "Banned 'bob'"}
    for connection in (phone, laptop):
        assert await connection.client.next() == {
            "event": "kick", "room_id": room_id, "by": alice.id, "reason": "trolling"}
    assert await alice.members() == [(alice.id, "owner")]
    assert await laptop.refused("join", {"room_id": room_id}) == f"You are banned from room {room_id}"
    # A new connection of the same user too.
    later = await rooms.person("bob")
    assert await later.refused("join", {"room_id": room_id}) == f"You are banned from room {room_id}"
    assert (await alice.ok("unban", {"user": "bob"}))["message"] == "Unbanned 'bob'"
    await laptop.ok("join", {"room_id": room_id})


@pytest_twisted.ensureDeferred
async def test_a_ban_by_client_id_of_an_authenticated_client_bans_its_user(rooms: Rooms) -> None:
    alice, bob = await rooms.person(), await rooms.person("bob")
    room_id = (await alice.ok("create", "Lobby"))["room_id"]
    await bob.ok("join", {"room_id": room_id})
    await alice.ok("ban", {"client_id": bob.id})
    other = await rooms.person("bob")
    assert await other.refused("join", {"room_id": room_id}) == f"You are banned from room {room_id}"
    assert await alice.refused("invite", {"user": "bob"}) == "Room 'Lobby' is public: anyone may join"


@pytest_twisted.ensureDeferred
async def test_a_banned_user_cannot_be_invited_and_a_kick_ends_an_invitation(rooms: Rooms) -> None:
    alice, bob, carol = await rooms.person(), await rooms.person("bob"), await rooms.person("carol")
    room_id = (await alice.ok("create", {"name": "Secret", "private": True}))["room_id"]
    for user, person in (("bob", bob), ("carol", carol)):
        await alice.ok("invite", {"user": user})
        await person.ok("join", {"room_id": room_id})
    await alice.ok("kick", {"client_id": carol.id})
    assert await carol.refused("join", {"room_id": room_id}) == f"Room {room_id} does not exist"
    await alice.ok("ban", {"user": "bob"})
    assert await alice.refused("invite", {"user": "bob"}) == "'bob' is banned from this room; unban it first"


@pytest_twisted.ensureDeferred
async def test_the_longest_present_moderator_then_member_inherits_the_room(rooms: Rooms) -> None:
    alice, bob, carol, dave = [await rooms.person() for _ in range(4)]
    room_id = (await alice.ok("create", "Lobby"))["room_id"]
    for member in (bob, carol, dave):
        await member.ok("join", {"room_id": room_id})
    await alice.ok("op", {"client_id": dave.id})
    await alice.ok("op", {"client_id": carol.id})
    await alice.ok("leave")
    # Everyone who asked for events, the new owner too.
    for member in (bob, carol, dave):
        await member.event("leave", alice.id)
        assert (await member.event("owner", carol.id))["room_id"] == room_id  # joined before dave
    await carol.ok("leave")
    assert (await bob.event("owner", dave.id))["room_id"] == room_id
    await dave.ok("leave")
    assert (await bob.event("owner", bob.id))["room_id"] == room_id  # no moderator left: the longest present
    assert await bob.members() == [(bob.id, "owner")]


@pytest_twisted.ensureDeferred
async def test_a_room_action_needs_a_room(rooms: Rooms) -> None:
    alice = await rooms.person()
    assert await alice.refused("invite", {"user": "bob"}) == "You must join a room first"


@pytest_twisted.ensureDeferred
async def test_nicks_are_unique_in_a_room_and_a_users_connections_share_its_name(rooms: Rooms) -> None:
    alice, sam = await rooms.person(), await rooms.person()
    room_id = (await alice.ok("create", "Lobby"))["room_id"]
    await sam.ok("join", {"room_id": room_id})
    await sam.ok("nick", "Sam")
    assert await alice.refused("nick", "SAM") == "Nick 'SAM' is already taken in this room"
    phone, laptop = await rooms.person("bob"), await rooms.person("bob")
    for connection in (phone, laptop):
        await connection.ok("join", {"room_id": room_id})
    nicks = {m["client_id"]: m["nick"] for m in (await alice.ok("members"))["members"]}
    assert (nicks[phone.id], nicks[laptop.id]) == ("bob", "bob")
    assert await alice.refused("nick", "Bob") == "Nick 'Bob' is already taken in this room"
    # Another's nick keeps a guest out until it takes another.
    guest = await rooms.person()
    await guest.ok("nick", "sam")
    assert await guest.refused("join", {"room_id": room_id}) == (
        f"Nick 'sam' is taken in room {room_id}; choose another with \"nick\"")
    await guest.ok("nick", "sam2")
    await guest.ok("join", {"room_id": room_id})
