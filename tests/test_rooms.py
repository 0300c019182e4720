"""
Rooms people own, on the wire: how room creation and the owners' and
moderators' actions are parsed, and how a bad one is refused.  The rules
themselves run on every store in tests/test_contract.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from chatd import codec
from chatd.codec import Create, Manage, decode
from chatd.errors import ProtocolError

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
