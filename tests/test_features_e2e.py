"""
The features beyond the seed, end to end with real clients, and a seed-only
client in the middle of them.
"""

from __future__ import annotations

from typing import AsyncIterator

import pytest_twisted
from twisted.internet.threads import deferToThread

from chatd.settings import Settings
from tests.support.clients import WSClient
from tests.support.raw import handshake_from
from tests.support.servers import InProcessServer


@pytest_twisted.async_yield_fixture
async def rich() -> AsyncIterator[InProcessServer]:
    settings = Settings(
        ping_interval=0, ping_timeout=0, rate_messages=0, rate_creates=0, rate_connections_per_ip=0
    )
    running = await InProcessServer(settings).start()
    yield running
    await running.stop()


async def joined(server: InProcessServer, room_id: str) -> tuple[WSClient, str]:
    client, client_id = await server.welcomed()
    assert (await client.request({"action": "join", "body": {"room_id": room_id}}))["status"] == "success"
    return client, client_id


@pytest_twisted.ensureDeferred
async def test_a_late_joiner_reads_the_history_and_pages_back(rich: InProcessServer) -> None:
    a, a_id = await rich.welcomed()
    room_id = (await a.request({"action": "create", "body": "logbook"}))["room_id"]
    for i in range(1, 13):
        await a.request({"action": "message", "body": f"entry {i}"})
    late, _ = await joined(rich, room_id)
    page = await late.request({"action": "history", "body": {"limit": 5}})
    assert page["status"] == "success" and page["room_id"] == room_id
    assert [m["body"] for m in page["messages"]] == [f"entry {i}" for i in range(8, 13)]
    assert page["messages"][0]["from"] == a_id and page["messages"][0]["id"] == 8
    ids = [m["id"] for m in page["messages"]]
    while True:
        older = await late.request({"action": "history", "body": {"limit": 5, "before": ids[0]}})
        if not older["messages"]:
            break
        ids = [m["id"] for m in older["messages"]] + ids
    assert ids == list(range(1, 13))
    # The default page is 50, oldest first.
    assert len((await late.request({"action": "history"}))["messages"]) == 12


@pytest_twisted.ensureDeferred
async def test_list_pages_through_many_rooms(rich: InProcessServer) -> None:
    owners = []
    for i in range(120):
        client, _ = await rich.welcomed()
        await client.request({"action": "create", "body": f"room {i:03}"})
        owners.append(client)
    viewer, _ = await rich.welcomed()
    names, cursor = [], None
    while True:
        body = {"limit": 50} if cursor is None else {"limit": 50, "after": cursor}
        reply = await viewer.request({"action": "list", "body": body})
        names += [room["name"] for room in reply["rooms"]]
        assert all(room["members"] == 1 for room in reply["rooms"])
        cursor = reply.get("next")
        if cursor is None:
            break
    assert names == [f"room {i:03}" for i in range(120)]
    assert len((await viewer.request({"action": "list"}))["rooms"]) == 50


@pytest_twisted.ensureDeferred
async def test_members_nicks_and_presence_events_only_to_opted_in_clients(rich: InProcessServer) -> None:
    watcher, watcher_id = await rich.welcomed()
    room_id = (await watcher.request({"action": "create", "body": "lobby"}))["room_id"]
    assert await watcher.request({"action": "events", "body": True}) == {
        "status": "success", "message": "Events on"}
    assert (await watcher.request({"action": "nick", "body": "Watcher"}))["nick"] == "Watcher"
    seed, seed_id = await joined(rich, room_id)
    join = await watcher.next()
    assert {k: join[k] for k in ("event", "room_id", "client_id", "nick")} == {
        "event": "join", "room_id": room_id, "client_id": seed_id, "nick": None}
    guest, guest_id = await joined(rich, room_id)
    assert (await watcher.next())["client_id"] == guest_id
    # Nick rules over the wire.
    taken = await guest.request({"action": "nick", "body": "watcher"})
    assert taken == {"status": "error", "message": "Nick 'watcher' is already taken in this room"}
    assert (await guest.request({"action": "nick", "body": "Guest"}))["message"] == "Nick set to 'Guest'"
    assert (await watcher.next())["event"] == "nick"
    assert (await guest.request({"action": "members"}))["members"] == [
        {"client_id": watcher_id, "nick": "Watcher", "role": "owner"},
        {"client_id": seed_id, "nick": None, "role": "member"},
        {"client_id": guest_id, "nick": "Guest", "role": "member"},
    ]
    await guest.request({"action": "message", "body": "hello"})
    assert (await watcher.next())["nick"] == "Guest"
    await guest.close()
    leave = await watcher.next()
    assert (leave["event"], leave["client_id"], leave["nick"]) == ("leave", guest_id, "Guest")
    # The seed client, which never opted in, saw the broadcast and nothing else.
    message = await seed.next()
    assert (message["from"], message["body"]) == (guest_id, "hello")
    assert (await seed.request({"action": "leave"}))["message"] == "Left room"


@pytest_twisted.ensureDeferred
async def test_a_seed_only_client_sees_exactly_the_seed_messages(rich: InProcessServer) -> None:
    seed, seed_id = await rich.welcomed()
    room_id = (await seed.request({"action": "create", "body": "Game Night"}))["room_id"]
    busy = []
    for nick in ("Ada", "Bea"):
        client, _ = await joined(rich, room_id)
        await client.request({"action": "events", "body": True})
        await client.request({"action": "nick", "body": nick})
        await client.request({"action": "history"})
        await client.request({"action": "list"})
        await client.request({"action": "members"})
        busy.append(client)
    await busy[0].request({"action": "message", "body": "from Ada"})
    await busy[1].request({"action": "message", "body": {"custom": "from Bea"}})
    await busy[1].close()
    # Everything the seed client received, up to its own next reply:
    seed.send({"action": "message", "body": "seed says hi"})
    received = []
    while True:
        message = await seed.next()
        if message.get("status") == "success":
            assert message == {"status": "success", "message": "Message sent"}
            break
        received.append(message)
    assert [m["body"] for m in received] == ["from Ada", {"custom": "from Bea"}]
    for message in received:
        # The seed's keys, in the seed's order; added fields come after them.
        assert list(message)[:3] == ["from", "body", "timestamp"]
        assert "event" not in message


@pytest_twisted.ensureDeferred
async def test_rate_limit_retry_after_then_1008_for_hammering(server_factory) -> None:
    server = await server_factory(Settings(ping_interval=0, rate_messages=1, rate_messages_burst=2))
    a, _ = await server.welcomed()
    await a.request({"action": "create", "body": "slow lane"})
    for _ in range(2):
        assert (await a.request({"action": "message", "body": "ok"}))["status"] == "success"
    refused = await a.request({"action": "message", "body": "too fast"})
    assert refused["status"] == "error" and refused["message"] == "Rate limit exceeded"
    assert 0 < refused["retry_after"] <= 1.0
    # Keep hammering without waiting: closed with 1008.
    for _ in range(10):
        a.send({"action": "message", "body": "spam"})
    code, reason = await a.wait_closed()
    assert (code, reason) == (1008, "Rate limit exceeded repeatedly")
    values = server.factory.metrics.registry.get_sample_value
    assert values("chatd_errors_total", {"kind": "rate_limit"}) >= 3


@pytest_twisted.ensureDeferred
async def test_new_connections_per_ip_are_rate_limited(server_factory) -> None:
    server = await server_factory(Settings(ping_interval=0, rate_connections_per_ip=3, limit_loopback=True))
    for _ in range(3):
        await server.welcomed()
    refused = await deferToThread(handshake_from, server.port_number, "127.0.0.1")
    assert refused.startswith(b"HTTP/1.1 503 Too many new connections from your address\r\n")
    other = await deferToThread(handshake_from, server.port_number, "127.0.0.2")
    assert other.startswith(b"HTTP/1.1 101 ")
