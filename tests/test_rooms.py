"""
Rooms people own, without sockets: owners and moderators, private rooms,
invitations, kicks and bans, and who owns a room after its owner.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from chatd import codec
from chatd.codec import Create, Manage, decode
from chatd.core import ChatCore
from chatd.rooms.state import Client
from chatd.errors import Banned, ChatError, NotAllowed, ProtocolError, RoomNotFound
from tests.fakes import FakeSink

NOW = 1_764_142_000.25


def parse(obj: Any) -> codec.Command:
    return decode(json.dumps(obj).encode())


# -- the wire -----------------------------------------------------------------

def test_create_takes_a_name_or_an_object() -> None:
    assert parse({"action": "create", "body": "Lobby"}) == Create("Lobby")
    assert parse({"action": "create", "body": {"name": "Game Night", "private": True}}) == Create(
        "Game Night", True)
    assert parse({"action": "create", "body": {"name": "Open"}}) == Create("Open", False)


@pytest.mark.parametrize(("body", "error"), [
    ({"private": True}, "Create body must be a room name, or an object with a string 'name', "
                        'like {"name": "Game Night", "private": true}'),
    ({"name": 5}, "Create body must be a room name, or an object with a string 'name', "
                  'like {"name": "Game Night", "private": true}'),
    ({"name": "x", "private": "yes"}, "'private' must be true or false"),
    ({"name": "  "}, "Room name must be a non-empty string"),
])
def test_bad_create_objects(body: Any, error: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse({"action": "create", "body": body})
    assert caught.value.message == error


def test_room_actions_parse() -> None:
    assert parse({"action": "invite", "body": {"user": "bob"}}) == Manage("invite", user="bob")
    assert parse({"action": "invite", "body": {"client_id": "9930240b"}}) == Manage("invite", "9930240b")
    assert parse({"action": "kick", "body": {"client_id": "9930240b", "reason": "spam"}}) == Manage(
        "kick", "9930240b", reason="spam")
    assert parse({"action": "ban", "body": {"user": "bob"}}) == Manage("ban", user="bob")
    assert parse({"action": "op", "body": {"client_id": "9930240b"}}).target == "9930240b"  # type: ignore[union-attr]


@pytest.mark.parametrize(("obj", "error"), [
    ({"action": "invite", "body": "bob"},
     "Invite body must be an object with a string 'user' or 'client_id', like "
     '{"user": "bob"} or {"client_id": "9930240b"}'),
    ({"action": "invite", "body": {"user": "bob", "client_id": "9930240b"}},
     "Invite body must be an object with a string 'user' or 'client_id', like "
     '{"user": "bob"} or {"client_id": "9930240b"}'),
    ({"action": "ban", "body": {"user": 7}},
     "Ban body must be an object with a string 'user' or 'client_id', like "
     '{"user": "bob"} or {"client_id": "9930240b", "reason": "spam"}'),
    ({"action": "kick", "body": {"user": "bob"}},
     "Kick body must be an object with a string 'client_id', like "
     '{"client_id": "9930240b", "reason": "spam"}'),
    ({"action": "op"}, "Op body must be an object with a string 'client_id', like {\"client_id\": \"9930240b\"}"),
    ({"action": "kick", "body": {"client_id": ""}}, "'client_id' must be 1 to 64 characters"),
    ({"action": "unban", "body": {"user": "x" * 65}}, "'user' must be 1 to 64 characters"),
    ({"action": "kick", "body": {"client_id": "9930240b", "reason": 5}}, "'reason' must be a string"),
    ({"action": "ban", "body": {"client_id": "9930240b", "reason": "x" * 201}},
     "'reason' must be at most 200 characters"),
])
def test_bad_room_actions(obj: Any, error: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse(obj)
    assert caught.value.message == error


# -- the rules ----------------------------------------------------------------

class Room:
    """A core, and a way to act as one of its clients."""

    def __init__(self) -> None:
        self.core = ChatCore()
        self.sinks: dict[str, FakeSink] = {}

    def client(self, user: str | None = None, events: bool = True) -> Client:
        sink = FakeSink()
        client = self.core.connect(sink)
        self.sinks[client.client_id] = sink
        if user is not None:
            self.core.set_user(client, user)
        client.events = events
        return client

    def act(self, client: Client, action: str, **body: Any) -> dict[str, Any]:
        command = parse({"action": action, "body": body})
        return self.core.handle(client, command, NOW)

    def heard(self, client: Client) -> list[Any]:
        sink = self.sinks[client.client_id]
        frames, sink.frames = sink.received, []
        return frames


@pytest.fixture
def chat() -> Room:
    return Room()


def test_the_creator_owns_the_room_and_members_show_roles(chat: Room) -> None:
    alice, bob = chat.client("alice"), chat.client()
    room_id = chat.core.create(alice, "Lobby", NOW)["room_id"]
    chat.core.join(bob, room_id, NOW)
    chat.act(alice, "op", client_id=bob.client_id)
    members = chat.core.members(alice)["members"]
    assert [(m["client_id"], m["role"]) for m in members] == [
        (alice.client_id, "owner"), (bob.client_id, "moderator")]
    assert list(members[0]) == ["client_id", "nick", "user", "role"]


def test_a_private_room_is_hidden_until_invited(chat: Room) -> None:
    alice, bob, carol = chat.client("alice"), chat.client("bob"), chat.client()
    reply = chat.act(alice, "create", name="Secret", private=True)
    assert reply == {"status": "success", "room_id": reply["room_id"], "message": "Room 'Secret' created",
                     "private": True}
    room_id = reply["room_id"]
    chat.core.create(carol, "Open", NOW)
    assert [r["name"] for r in chat.core.list_rooms(client=bob)["rooms"]] == ["Open"]
    with pytest.raises(RoomNotFound) as caught:
        chat.core.join(bob, room_id, NOW)
    assert caught.value.message == f"Room {room_id} does not exist"
    # Invited by user name: any connection of that user, now or later.
    assert chat.act(alice, "invite", user="bob") == {"status": "success", "message": "Invited 'bob'"}
    rooms = chat.core.list_rooms(client=bob)["rooms"]
    assert [(r["name"], r.get("private")) for r in rooms] == [("Secret", True), ("Open", None)]
    chat.core.join(bob, room_id, NOW)
    # By client ID: that connection only.
    assert chat.act(alice, "invite", client_id=carol.client_id)["message"] == f"Invited '{carol.client_id}'"
    chat.core.join(carol, room_id, NOW)
    assert len(chat.core.rooms[room_id].members) == 3


def test_only_the_owner_or_a_moderator_may_act(chat: Room) -> None:
    alice, bob, carol = chat.client(), chat.client(), chat.client()
    room_id = chat.core.create(alice, "Lobby", NOW)["room_id"]
    chat.core.join(bob, room_id, NOW)
    chat.core.join(carol, room_id, NOW)
    for action in ("kick", "ban"):
        with pytest.raises(NotAllowed) as caught:
            chat.act(bob, action, client_id=carol.client_id)
        assert caught.value.message == f"Only the room's owner or a moderator may {action}"
    chat.act(alice, "op", client_id=bob.client_id)
    with pytest.raises(NotAllowed) as caught:
        chat.act(bob, "op", client_id=carol.client_id)
    assert caught.value.message == "Only the room's owner may op"
    # A moderator may kick a member, not another moderator, nor the owner.
    chat.act(alice, "op", client_id=carol.client_id)
    with pytest.raises(NotAllowed) as caught:
        chat.act(bob, "kick", client_id=carol.client_id)
    assert caught.value.message == "Only the room's owner may kick a moderator"
    with pytest.raises(ChatError) as error:
        chat.act(bob, "kick", client_id=alice.client_id)
    assert error.value.message == "The room's owner cannot be kicked"
    assert chat.act(alice, "deop", client_id=carol.client_id)["message"] == (
        f"'{carol.client_id}' is no longer a moderator")
    assert chat.act(bob, "kick", client_id=carol.client_id)["message"] == f"Kicked '{carol.client_id}'"


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
def test_refusals_name_their_reason(chat: Room, who: str, action: str, body: str, error: str) -> None:
    people = {name: chat.client() for name in ("alice", "bob", "carol", "dave")}
    room_id = chat.core.create(people["alice"], "Lobby", NOW)["room_id"]
    for name in ("bob", "carol"):
        chat.core.join(people[name], room_id, NOW)
    chat.act(people["alice"], "op", client_id=people["bob"].client_id)
    target = people[body].client_id if body in people else "00000000"
    with pytest.raises(ChatError) as caught:
        chat.act(people[who], action, client_id=target)
    assert caught.value.message == error.format(**{n: c.client_id for n, c in people.items()})


def test_a_kick_tells_the_one_kicked_and_the_others_see_a_leave(chat: Room) -> None:
    alice, bob = chat.client(), chat.client(events=False)
    carol = chat.client()
    room_id = chat.core.create(alice, "Lobby", NOW)["room_id"]
    chat.core.join(bob, room_id, NOW)
    chat.core.join(carol, room_id, NOW)
    chat.heard(alice), chat.heard(carol)
    chat.act(alice, "kick", client_id=bob.client_id, reason="spam")
    # Whatever its events setting.
    assert chat.heard(bob) == [{"event": "kick", "room_id": room_id, "by": alice.client_id, "reason": "spam"}]
    assert bob.room is None
    [leave] = chat.heard(carol)
    assert (leave["event"], leave["client_id"]) == ("leave", bob.client_id)
    # A kick is not a ban: back at once.
    chat.core.join(bob, room_id, NOW)


def test_a_ban_by_user_removes_every_connection_and_holds_until_unbanned(chat: Room) -> None:
    alice = chat.client("alice")
    phone, laptop = chat.client("bob"), chat.client("bob")
    room_id = chat.core.create(alice, "Lobby", NOW)["room_id"]
    chat.core.join(phone, room_id, NOW)
    chat.core.join(laptop, room_id, NOW)
    assert chat.act(alice, "ban", user="bob", reason="trolling") == {
        "status": "success", "message": "Banned 'bob'"}
    assert phone.room is None and laptop.room is None
    assert chat.heard(laptop)[-1] == {"event": "kick", "room_id": room_id, "by": alice.client_id,
                                      "reason": "trolling"}
    with pytest.raises(Banned) as caught:
        chat.core.join(laptop, room_id, NOW)
    assert caught.value.message == f"You are banned from room {room_id}"
    # A new connection of the same user too.
    with pytest.raises(Banned):
        chat.core.join(chat.client("bob"), room_id, NOW)
    assert chat.act(alice, "unban", user="bob")["message"] == "Unbanned 'bob'"
    chat.core.join(laptop, room_id, NOW)


def test_a_ban_by_client_id_of_an_authenticated_client_bans_its_user(chat: Room) -> None:
    alice, bob = chat.client(), chat.client("bob")
    room_id = chat.core.create(alice, "Lobby", NOW)["room_id"]
    chat.core.join(bob, room_id, NOW)
    chat.act(alice, "ban", client_id=bob.client_id)
    with pytest.raises(Banned):
        chat.core.join(chat.client("bob"), room_id, NOW)
    with pytest.raises(ChatError) as caught:
        chat.act(alice, "invite", user="bob")
    assert caught.value.message == "Room 'Lobby' is public: anyone may join"


def test_a_banned_user_cannot_be_invited_and_a_kick_ends_an_invitation(chat: Room) -> None:
    alice, bob, carol = chat.client(), chat.client("bob"), chat.client("carol")
    room_id = chat.act(alice, "create", name="Secret", private=True)["room_id"]
    chat.act(alice, "invite", user="bob")
    chat.act(alice, "invite", user="carol")
    chat.core.join(bob, room_id, NOW)
    chat.core.join(carol, room_id, NOW)
    chat.act(alice, "kick", client_id=carol.client_id)
    with pytest.raises(RoomNotFound):
        chat.core.join(carol, room_id, NOW)
    chat.act(alice, "ban", user="bob")
    with pytest.raises(ChatError) as caught:
        chat.act(alice, "invite", user="bob")
    assert caught.value.message == "'bob' is banned from this room; unban it first"


def test_the_longest_present_moderator_then_member_inherits_the_room(chat: Room) -> None:
    alice, bob, carol, dave = (chat.client() for _ in range(4))
    room_id = chat.core.create(alice, "Lobby", NOW)["room_id"]
    for member in (bob, carol, dave):
        chat.core.join(member, room_id, NOW)
    chat.act(alice, "op", client_id=dave.client_id)
    chat.act(alice, "op", client_id=carol.client_id)
    for member in (bob, carol, dave):
        chat.heard(member)
    chat.core.leave(alice, NOW)
    room = chat.core.rooms[room_id]
    assert room.owner == carol.client_id  # joined before dave
    # Everyone who asked for events, the new owner too.
    for member in (bob, carol, dave):
        assert [(e["event"], e["client_id"]) for e in chat.heard(member)] == [
            ("leave", alice.client_id), ("owner", carol.client_id)]
    chat.core.leave(carol, NOW)
    assert room.owner == dave.client_id
    chat.core.leave(dave, NOW)
    assert room.owner == bob.client_id  # no moderator left: the longest present
    assert chat.core.members(bob)["members"][0]["role"] == "owner"


def test_a_room_action_needs_a_room(chat: Room) -> None:
    alice = chat.client()
    with pytest.raises(ChatError) as caught:
        chat.act(alice, "invite", user="bob")
    assert caught.value.message == "You must join a room first"


def test_a_users_connections_share_its_name_in_a_room(chat: Room) -> None:
    alice = chat.client()
    room_id = chat.core.create(alice, "Lobby", NOW)["room_id"]
    phone, laptop = chat.client(), chat.client()
    for connection in (phone, laptop):
        chat.core.authenticated(connection, "bob", "Bob", NOW)
        chat.core.join(connection, room_id, NOW)
    assert (phone.nick, laptop.nick) == ("Bob", "Bob")
    with pytest.raises(ChatError) as caught:
        chat.core.set_nick(alice, "bob", NOW)
    assert caught.value.message == "Nick 'bob' is already taken in this room"
