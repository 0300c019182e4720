"""
End to end: a real chatd on a loopback port, real WebSocket clients.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThread

from tests.support.clients import seed_example_2, WSClient
from tests.support.servers import InProcessServer



@pytest_twisted.ensureDeferred
async def test_seed_example_1_creating_and_joining_a_room(server: InProcessServer) -> None:
    a = await server.client()
    welcome_raw = await a.next_raw()
    welcome = json.loads(welcome_raw)
    assert welcome_raw == (
        b'{"status": "connected", "client_id": "%s", "message": "Welcome!"}'
        % welcome["client_id"].encode()
    )
    assert len(welcome["client_id"]) == 8
    b, _ = await server.welcomed()

    a.send({"action": "create", "body": "Game Night"})
    created_raw = await a.next_raw()
    room_id = json.loads(created_raw)["room_id"]
    assert created_raw == (
        b'{"status": "success", "room_id": "%s", "message": "Room \'Game Night\' created"}'
        % room_id.encode()
    )
    assert len(room_id) == 8

    b.send({"action": "join", "body": {"room_id": room_id}})
    assert await b.next_raw() == (
        b'{"status": "success", "message": "Joined room \'Game Night\'", "room_id": "%s"}'
        % room_id.encode()
    )


async def room_of(server: InProcessServer, n: int) -> tuple[str, list[tuple[WSClient, str]]]:
    members = [await server.welcomed() for _ in range(n)]
    room_id = (await members[0][0].request({"action": "create", "body": "Test Room"}))["room_id"]
    for client, _ in members[1:]:
        reply = await client.request({"action": "join", "body": {"room_id": room_id}})
        assert reply["status"] == "success"
    return room_id, members


@pytest_twisted.ensureDeferred
async def test_seed_example_2_broadcasting(server: InProcessServer) -> None:
    _, [(a, a_id), (b, _), (c, _)] = await room_of(server, 3)
    await seed_example_2(a, a_id, [b, c])
    # The sender does not receive its own broadcast: its next message is the
    # reply to its next command.
    assert (await a.request({"action": "leave"}))["message"] == "Left room"


@pytest_twisted.ensureDeferred
async def test_server_sockets_have_nagle_off(server: InProcessServer) -> None:
    client, _ = await server.welcomed()
    [protocol] = list(server.factory.connections)
    sock = protocol.transport.getHandle()
    # Autobahn's own tcpNoDelay option never takes effect on server sockets.
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


@pytest_twisted.ensureDeferred
async def test_custom_json_bodies_pass_through(server: InProcessServer) -> None:
    _, [(a, _), (b, _)] = await room_of(server, 2)
    for body in [{"type": "emoji", "code": [1, 2.5, None]}, '{"as": "json string"}', 7, "caf\u00e9"]:
        await a.request({"action": "message", "body": body})
        assert (await b.next())["body"] == body


@pytest_twisted.ensureDeferred
async def test_room_is_deleted_when_its_last_member_leaves(server: InProcessServer) -> None:
    room_id, [(a, _), (b, _)] = await room_of(server, 2)
    # The creator leaving does not delete a room others are in.
    assert await a.request({"action": "leave"}) == {"status": "success", "message": "Left room"}
    assert (await a.request({"action": "join", "body": {"room_id": room_id}}))["status"] == "success"
    await a.request({"action": "leave"})
    await b.request({"action": "leave"})
    assert await a.request({"action": "join", "body": {"room_id": room_id}}) == {
        "status": "error",
        "message": f"Room {room_id} does not exist",
    }
    assert await a.request({"action": "leave"}) == {"status": "error", "message": "Not in any room"}


@pytest_twisted.ensureDeferred
async def test_moving_between_rooms(server: InProcessServer) -> None:
    room1, [(a, a_id), (b, _)] = await room_of(server, 2)
    c, _ = await server.welcomed()
    room2 = (await c.request({"action": "create", "body": "Second"}))["room_id"]
    assert await a.request({"action": "join", "body": {"room_id": room2}}) == {
        "status": "success", "message": "Joined room 'Second'", "room_id": room2,
    }
    await a.request({"action": "message", "body": "only in room 2"})
    assert (await c.next())["body"] == "only in room 2"
    # b, still in room 1, got nothing: its next message answers its own command.
    assert (await b.request({"action": "message", "body": "alone"}))["message"] == "Message sent"
    # create also moves: a leaves room 2 for a room of its own.
    room3 = (await a.request({"action": "create", "body": "Third"}))["room_id"]
    await c.request({"action": "message", "body": "a has gone"})
    await c.request({"action": "leave"})
    assert (await c.request({"action": "join", "body": {"room_id": room2}}))["status"] == "error"
    assert room3 != room2


@pytest_twisted.ensureDeferred
async def test_disconnects_remove_members_clean_or_dropped(server: InProcessServer) -> None:
    room_id, [(a, _), (b, _), (c, _)] = await room_of(server, 3)
    await a.close()  # clean closing handshake
    b.abort()  # TCP dropped without one
    await b.wait_closed()
    await c.request({"action": "message", "body": "anyone?"})
    await c.close()
    # Every member is gone, so the room is too.
    d, _ = await server.welcomed()
    assert (await d.request({"action": "join", "body": {"room_id": room_id}}))["message"] == (
        f"Room {room_id} does not exist"
    )
    assert len(server.factory.core.clients) == 1  # only d is left


@pytest_twisted.ensureDeferred
async def test_thirty_members_sending_concurrently_exactly_once_in_order(
    server: InProcessServer,
) -> None:
    n, per_sender = 30, 20
    _, members = await room_of(server, n)
    ids = [client_id for _, client_id in members]

    # Everyone sends at once; nobody waits for replies between sends.
    for client, client_id in members:
        for seq in range(per_sender):
            client.send({"action": "message", "body": {"seq": seq, "by": client_id}})

    async def collect(client: WSClient, own_id: str) -> tuple[str, dict[str, list[int]], int]:
        seen: dict[str, list[int]] = {}
        replies = 0
        while replies < per_sender or sum(map(len, seen.values())) < (n - 1) * per_sender:
            message = await client.next()
            if "status" in message:
                assert message == {"status": "success", "message": "Message sent"}
                replies += 1
            else:
                assert message["body"]["by"] == message["from"]
                seen.setdefault(message["from"], []).append(message["body"]["seq"])
        return own_id, seen, replies

    results = await gatherResults(
        [Deferred.fromCoroutine(collect(c, i)) for c, i in members]
    )
    for own_id, seen, replies in results:
        assert replies == per_sender
        assert own_id not in seen
        assert set(seen) == set(ids) - {own_id}
        for sender, seqs in seen.items():
            assert seqs == list(range(per_sender)), (own_id, sender, seqs)


@pytest_twisted.ensureDeferred
async def test_a_burst_then_a_leave_reach_the_room_in_the_order_sent(server: InProcessServer) -> None:
    # Sent in one go (one write, usually one read for the server): the
    # messages reach the others before the sender's leave, and its nick
    # change between them comes between them.
    room_id, [(a, a_id), (b, _), (c, _)] = await room_of(server, 3)
    for watcher in (b, c):
        await watcher.request({"action": "events", "body": True})
    burst = [{"action": "message", "body": n} for n in range(5)]
    for command in (*burst[:3], {"action": "nick", "body": "ann"}, *burst[3:], {"action": "leave"}):
        a.send(command)
    for watcher in (b, c):
        seen = [await watcher.next() for _ in range(7)]
        assert [m.get("body", m.get("event")) for m in seen] == [0, 1, 2, "nick", 3, 4, "leave"]
        assert all(m["from"] == a_id for m in seen if "body" in m)
        assert [m["id"] for m in seen if "body" in m] == sorted(m["id"] for m in seen if "body" in m)
    history = await b.request({"action": "history"})
    assert [m["body"] for m in history["messages"]] == [0, 1, 2, 3, 4]
    replies = [await a.next() for _ in range(7)]
    assert [r["message"] for r in replies] == ["Message sent"] * 3 + ["Nick set to 'ann'"] + ["Message sent"] * 2 + [
        "Left room"
    ]
    assert room_id in [r["room_id"] for r in (await b.request({"action": "list"}))["rooms"]]


@pytest_twisted.ensureDeferred
async def test_bad_input_gets_errors_and_the_connection_carries_on(server: InProcessServer) -> None:
    _, [(a, _), (b, _)] = await room_of(server, 2)
    cases = [
        (b'{"action": "join", "body": "a1b2c3d4"}', "Join body must be an object"),
        (b"[1, 2, 3]", "Message must be a JSON object, not an array"),
        (b"null", "Message must be a JSON object, not null"),
        (b'{"body": 1}', "Missing 'action'"),
        (b'{"action": 1}', "'action' must be a string"),
        (b'{"action": "fly"}', "Invalid action"),
        (b"{not json", "Invalid JSON format"),
        (b'{"action": "message", "body": 1e999999}', "Numbers must be finite"),
        (b'{"action": "create", "body": "\\ud800"}', "Strings must be valid Unicode text"),
        (b'{"action": "message", "body": ' + b"[" * 3000 + b"]" * 3000 + b"}", "JSON nested too deeply"),
        (b'{"action": "create", "body": ""}', "Room name must be a non-empty string"),
        (b'{"action": "message"}', "Message body is required"),
    ]
    for raw, message in cases:
        a.send_raw(raw)
        reply = await a.next()
        assert reply["status"] == "error"
        assert reply["message"].startswith(message), (raw[:40], reply)
    a.send_raw(b"\x00\x01binary", binary=True)
    assert (await a.next())["message"].startswith("Binary frames are not supported")
    await a.request({"action": "message", "body": "still fine"})
    assert (await b.next())["body"] == "still fine"


@pytest_twisted.ensureDeferred
async def test_oversized_message_closes_1009_and_others_are_unaffected(
    server: InProcessServer,
) -> None:
    _, [(a, _), (b, _), (c, _)] = await room_of(server, 3)
    limit = server.factory.settings.max_message_size
    a.send({"action": "message", "body": "x" * limit})
    code, _ = await a.wait_closed()
    assert code == 1009
    await b.request({"action": "message", "body": "after"})
    assert (await c.next())["body"] == "after"
    # Exactly at the limit is fine.
    body = "y" * (limit - len('{"action": "message", "body": ""}'))
    b.send({"action": "message", "body": body})
    assert (await b.next())["status"] == "success"
    assert (await c.next())["body"] == body


@pytest_twisted.ensureDeferred
async def test_invalid_utf8_closes_1007(server: InProcessServer) -> None:
    _, [(a, _), (b, _)] = await room_of(server, 2)
    a.send_raw(b'{"action": "message", "body": "\xff\xfe"}')
    code, _ = await a.wait_closed()
    assert code == 1007
    assert (await b.request({"action": "leave"}))["status"] == "success"


@pytest_twisted.ensureDeferred
async def test_plain_http_gets_the_web_client_and_the_websocket_still_works(server: InProcessServer) -> None:
    def fetch(port: int, path: str) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            response = b""
            while chunk := sock.recv(65536):
                response += chunk
            return response

    # A blocking client must not run on the reactor thread the server uses.
    page = await deferToThread(fetch, server.port_number, "/")
    head, _, body = page.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Type: text/html; charset=utf-8\r\n" in head
    assert f"\r\nContent-Length: {len(body)}\r\n".encode() in head
    assert b'<script type="module" src="/app.js">' in body
    script = await deferToThread(fetch, server.port_number, "/app.js")
    assert b"Content-Type: text/javascript" in script and b"textContent" in script
    missing = await deferToThread(fetch, server.port_number, "/etc/passwd")
    assert missing.startswith(b"HTTP/1.1 404 Not Found\r\n")
    # The same port and path still upgrade to the WebSocket.
    client, _ = await server.welcomed()
    assert (await client.request({"action": "list"}))["status"] == "success"


def _deflate_offering_client(port: int) -> tuple[Any, Any, Any]:
    from websockets.sync.client import connect

    # Offers permessage-deflate, as every browser does.
    with connect(f"ws://127.0.0.1:{port}", compression="deflate", open_timeout=10) as ws:
        welcome = json.loads(ws.recv(timeout=10))
        ws.send(json.dumps({"action": "create", "body": "deflate"}))
        reply = json.loads(ws.recv(timeout=10))
        return welcome, reply, ws.response.headers.get("Sec-WebSocket-Extensions")


@pytest_twisted.ensureDeferred
async def test_a_client_offering_compression_connects_without_it(server: InProcessServer) -> None:
    # A function-valued Autobahn option once became a method on chatd's
    # protocol class and every such handshake hung.
    welcome, reply, extensions = await deferToThread(_deflate_offering_client, server.port_number)
    assert welcome["status"] == "connected"
    assert reply["status"] == "success"
    assert extensions is None  # not negotiated: chatd frames broadcasts once for all


@pytest_twisted.ensureDeferred
async def test_permessage_deflate_when_asked_for(server_factory: Any) -> None:
    from websockets.sync.client import connect

    from chatd.settings import Settings

    server = await server_factory(Settings(ping_interval=0, ping_timeout=0, permessage_deflate=True))
    sender, _ = await server.welcomed()
    room_id = (await sender.request({"action": "create", "body": "zip"}))["room_id"]
    body = "compress me " * 500

    def members() -> list[Any]:
        results = []
        with connect(f"ws://127.0.0.1:{server.port_number}", compression="deflate", open_timeout=10) as deflating, \
                connect(f"ws://127.0.0.1:{server.port_number}", compression=None, open_timeout=10) as plain:
            for ws in (deflating, plain):
                json.loads(ws.recv(timeout=10))
                ws.send(json.dumps({"action": "join", "body": {"room_id": room_id}}))
                assert json.loads(ws.recv(timeout=10))["status"] == "success"
            results.append(deflating.response.headers.get("Sec-WebSocket-Extensions"))
            results.append(plain.response.headers.get("Sec-WebSocket-Extensions"))
            ready.callback(None) if not ready.called else None
            for ws in (deflating, plain):
                for _ in range(3):
                    results.append(json.loads(ws.recv(timeout=10))["body"])
            # A compressed message from the client is read too.
            deflating.send(json.dumps({"action": "message", "body": body}))
            results.append(json.loads(deflating.recv(timeout=10))["status"])
        return results

    ready: Deferred = Deferred()
    d = deferToThread(members)
    await ready
    for i in range(3):
        await sender.request({"action": "message", "body": f"{i}: {body}"})
    results = await d
    assert results[0].startswith("permessage-deflate")
    assert results[1] is None
    assert results[2:5] == results[5:8] == [f"{i}: {body}" for i in range(3)]
    assert results[8] == "success"
    assert (await sender.next())["body"] == body
