"""
Direct messages, end to end against the real ``twistd -n chatd``: to a
client ID or to every connection of an authenticated user, through the same
limits and moderators as room messages, in one process and across two
nodes on real Redis.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

import jwt
import pytest
import pytest_twisted

from tests.support.clients import connect, WSClient
from tests.support.servers import DaemonProcess

SECRET = b"a shared secret of the test, long enough for HS256"


def token(user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwt.key"
    path.write_bytes(SECRET)
    return path


async def user(port: int, name: str) -> tuple[WSClient, str]:
    client = await connect(port, headers={"Authorization": f"Bearer {token(name)}"})
    return client, (await client.next())["client_id"]


async def guest(port: int) -> tuple[WSClient, str]:
    client = await connect(port)
    return client, (await client.next())["client_id"]


@pytest_twisted.ensureDeferred
async def test_a_direct_message_to_a_client_and_to_every_connection_of_a_user(
    daemon_factory: Callable[..., DaemonProcess], secret_file: Path, tmp_path: Path,
) -> None:
    words = tmp_path / "words.txt"
    words.write_text("darn\n")
    db = tmp_path / "messages.db"
    chatd = daemon_factory(
        "--listen", "tcp:0:interface=127.0.0.1", "--auth", f"jwt:key={secret_file}",
        "--moderator", f"banned-words:file={words}", "--message-log", f"sqlite:{db}",
    )
    port = await chatd.wait_listening()
    alice, alice_id = await user(port, "alice")
    bob_phone, _ = await user(port, "bob")
    bob_laptop, _ = await user(port, "bob")
    carol, carol_id = await guest(port)
    # To a user: every connection of theirs; no room needed.
    assert await alice.request({"action": "direct", "body": {"to": "bob", "body": "psst"}}) == {
        "status": "success", "message": "Message sent"}
    for bob in (bob_phone, bob_laptop):
        message = await bob.next()
        assert list(message) == ["from", "body", "timestamp", "direct", "to", "nick", "user"]
        assert (message["from"], message["body"], message["direct"], message["to"], message["user"]) == (
            alice_id, "psst", True, "bob", "alice")
    # To a client ID, from a guest.
    await carol.request({"action": "direct", "body": {"to": alice_id, "body": {"any": "json"}}})
    message = await alice.next()
    assert (message["from"], message["body"], message["to"]) == (carol_id, {"any": "json"}, alice_id)
    assert "user" not in message
    # The moderators see it as they see room messages.
    assert await carol.request({"action": "direct", "body": {"to": alice_id, "body": "darn it"}}) == {
        "status": "error", "message": "Message rejected by moderation"}
    # Nobody of that name.
    assert await carol.request({"action": "direct", "body": {"to": "nobody", "body": "hi"}}) == {
        "status": "error", "message": "No such client or user: nobody"}
    for body in ({"body": "hi"}, {"to": 5, "body": "hi"}, {"to": "bob"}, {"to": "", "body": "x"}, "bob"):
        assert await carol.request({"action": "direct", "body": body}) == {
            "status": "error",
            "message": "Direct body must be an object with a string 'to' and a 'body', "
                       'like {"to": "9930240b", "body": "hi"}'}
    # Not in any room's history; in the message log, flagged.
    for client in (alice, bob_phone, bob_laptop, carol):
        await client.close()
    chatd.signal("TERM")
    assert await chatd.wait_exit() == 0
    rows = sqlite3.connect(db).execute(
        "SELECT room_id, client_id, body, direct, recipient FROM messages ORDER BY seq").fetchall()
    assert rows == [("", alice_id, json.dumps("psst"), 1, "bob"),
                    ("", carol_id, json.dumps({"any": "json"}), 1, alice_id)]


@pytest_twisted.ensureDeferred
async def test_direct_messages_are_rate_limited_like_room_messages(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--rate-messages", "1",
                           "--rate-messages-burst", "2")
    port = await chatd.wait_listening()
    a, _ = await guest(port)
    b, b_id = await guest(port)
    replies = [await a.request({"action": "direct", "body": {"to": b_id, "body": i}}) for i in range(3)]
    assert [r["status"] for r in replies] == ["success", "success", "error"]
    assert replies[2]["message"] == "Rate limit exceeded"


@pytest_twisted.ensureDeferred
async def test_a_user_connected_to_two_nodes_gets_a_direct_message_on_both(
    daemon_factory: Callable[..., DaemonProcess], secret_file: Path, redis_server: Any,
) -> None:
    nodes = [daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--redis", redis_server.url,
                            "--auth", f"jwt:key={secret_file}") for _ in range(2)]
    one, two = [await node.wait_listening() for node in nodes]
    alice, alice_id = await user(one, "alice")
    bob_one, _ = await user(one, "bob")
    bob_two, _ = await user(two, "bob")
    carol, carol_id = await guest(two)
    await alice.request({"action": "direct", "body": {"to": "bob", "body": "both of you"}})
    for bob in (bob_one, bob_two):
        message = await bob.next()
        assert (message["from"], message["body"], message["user"]) == (alice_id, "both of you", "alice")
    # A guest's client ID on the other node; and back.
    await alice.request({"action": "direct", "body": {"to": carol_id, "body": "hello there"}})
    assert (await carol.next())["body"] == "hello there"
    await carol.request({"action": "direct", "body": {"to": alice_id, "body": "hi back"}})
    assert (await alice.next())["body"] == "hi back"
    # A user who authenticates with the auth action is reachable from every node.
    dave = await connect(two)
    await dave.next()
    await dave.request({"action": "auth", "body": {"token": token("dave")}})
    await alice.request({"action": "direct", "body": {"to": "dave", "body": "welcome"}})
    assert (await dave.next())["body"] == "welcome"
    assert await alice.request({"action": "direct", "body": {"to": "nobody", "body": "x"}}) == {
        "status": "error", "message": "No such client or user: nobody"}
    for client in (alice, bob_one, bob_two, carol, dave):
        await client.close()
