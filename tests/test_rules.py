"""
The room rules as pure functions: what an action changes, or why it is
refused, from the state they are given alone.
"""

from __future__ import annotations

import pytest

from chatd.codec import Manage
from chatd.errors import ChatError
from chatd.rooms.rules import Changes, hears_invitation, join_refusal, manage, name_holders
from chatd.rooms.state import Client, Room
from tests.fakes import FakeSink


def room_of(owner: Client, *members: Client, private: bool = False) -> Room:
    room = Room("r1", "Den", "", owner.client_id, 1)
    room.private = private
    for member in (owner, *members):
        room.members[member.client_id] = member
        member.room = room
    return room


def person(client_id: str, user: str | None = None) -> Client:
    client = Client(client_id, FakeSink())
    client.user = user
    return client


def test_a_ban_bans_the_user_uninvites_it_and_puts_every_connection_of_it_out() -> None:
    ada, bob1, bob2, cy = person("a"), person("b1", "bob"), person("b2", "bob"), person("c")
    room = room_of(ada, bob1, bob2, cy, private=True)
    room.invited = {"u:bob", "c:c"}
    assert manage(room, ada, Manage("ban", user="bob"), None, None) == Changes(
        ban=frozenset({"u:bob"}), uninvite=frozenset({"u:bob"}), remove=("b1", "b2"))
    assert room.banned is None  # decided, not applied: the state is as it was


def test_each_refusal_leaves_the_state_alone() -> None:
    ada, bob = person("a"), person("b")
    room = room_of(ada, bob)
    for actor, command, target_room, message in [
        (bob, Manage("kick", client_id="a"), "r1", "Only the room's owner or a moderator may kick"),
        (ada, Manage("kick", client_id="zz"), None, "Client zz is not in this room"),
        (ada, Manage("op", client_id="a"), "r1", "Client a is the room's owner"),
        (ada, Manage("invite", user="bob"), None, "Room 'Den' is public: anyone may join"),
    ]:
        with pytest.raises(ChatError) as refused:
            manage(room, actor, command, None, target_room)
        assert refused.value.message == message
    assert room.moderators is None and room.banned is None and room.invited is None


def test_the_join_admission_of_a_private_room_says_nothing_to_the_banned() -> None:
    ada, bob = person("a"), person("b", "bob")
    room = room_of(ada, private=True)
    room.banned = {"u:bob"}
    refused = join_refusal(room, bob)
    assert refused is not None and refused.message == "Room r1 does not exist"
    room.invited = {"c:b"}
    refused = join_refusal(room, bob)
    assert refused is not None and refused.message == "You are banned from room r1"


def test_a_users_name_is_taken_back_from_other_peoples_nicks_only() -> None:
    ada, guest, other_ada = person("a", "ada"), person("g"), person("a2", "ada")
    guest.nick, other_ada.nick = "ADA", "ada"
    room = room_of(ada, guest, other_ada)
    assert name_holders(room, ada) == ["g"]  # her own other connection keeps it
    assert name_holders(room, guest) == []  # a guest has no name to claim


def test_who_hears_of_an_invitation() -> None:
    bob, inside, pest = person("b", "bob"), person("i"), person("p", "pest")
    room_of(person("o"), inside)
    bob.events = inside.events = True
    assert hears_invitation(bob, "r1", "p", "pest")
    assert not hears_invitation(inside, "r1", "p", "pest")  # in the room already
    bob.blocked = {"u:pest"}
    assert not hears_invitation(bob, "r1", "p", "pest")
    assert not hears_invitation(pest, "r1", "b", "bob")  # asked for no events
