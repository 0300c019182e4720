"""
Connection limits and allowed origins, end to end on real sockets.
"""

from __future__ import annotations

import socket
from typing import Optional

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.threads import deferToThread

from chatd.config import normalise_origin
from chatd.settings import Settings
from tests.support.clients import _ClientProtocol, two_in_a_room, within, WSClient
from tests.support.raw import handshake_from
from tests.support.servers import InProcessServer


@pytest_twisted.ensureDeferred
async def test_over_max_connections_gets_503_and_a_free_slot_is_reused(server_factory) -> None:
    server = await server_factory(Settings(ping_interval=0, max_connections=2))
    a, _ = await server.welcomed()
    b, _ = await server.welcomed()
    response = await deferToThread(handshake_from, server.port_number)
    assert response.startswith(b"HTTP/1.1 503 Too many connections\r\n")
    assert b"\r\nRetry-After: 5\r\n" in response
    # The others are untouched, and a freed slot can be taken again.
    await a.request({"action": "create", "body": "still fine"})
    await b.close()
    c, _ = await server.welcomed()
    assert (await c.request({"action": "leave"}))["message"] == "Not in any room"
    values = server.factory.metrics.registry.get_sample_value
    assert values("chatd_handshake_failures_total", {"reason": "limit"}) == 1


@pytest_twisted.ensureDeferred
async def test_max_connections_per_ip_counts_each_address_separately(server_factory) -> None:
    server = await server_factory(Settings(ping_interval=0, max_connections_per_ip=2, limit_loopback=True))
    await server.welcomed()
    await server.welcomed()
    refused = await deferToThread(handshake_from, server.port_number, "127.0.0.1")
    assert refused.startswith(b"HTTP/1.1 503 Too many connections from your address\r\n")
    other = await deferToThread(handshake_from, server.port_number, "127.0.0.2")
    assert other.startswith(b"HTTP/1.1 101 ")


@pytest.mark.parametrize(
    "given, normal",
    [
        ("https://chat.example.org", "https://chat.example.org:443"),
        ("https://chat.example.org:443", "https://chat.example.org:443"),
        ("HTTPS://Chat.Example.ORG/", "https://chat.example.org:443"),
        ("http://localhost:8000", "http://localhost:8000"),
        ("http://[::1]:8000", "http://::1:8000"),
        ("null", None),
        ("file://", None),
        ("https://x.org/path", None),
        ("https://x.org:99999", None),
        ("chat.example.org", None),
    ],
)
def test_origins_are_compared_with_their_default_ports(given: str, normal: Optional[str]) -> None:
    assert normalise_origin(given) == normal


async def connect_with_origin(port: int, origin: Optional[str]) -> WSClient:
    client = WSClient()
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}", origin=origin)
    factory.setProtocolOptions(autoPingInterval=0)
    factory.protocol = _ClientProtocol
    factory.client = client
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    await within(client._open, "the handshake")
    return client


@pytest_twisted.ensureDeferred
async def test_allowed_origins(server_factory) -> None:
    server = await server_factory(Settings(
        ping_interval=0, allowed_origins=("https://chat.example.org:443",)))
    port = server.port_number
    # The browser's spelling (no port) matches the configured origin.
    ok = await connect_with_origin(port, "https://chat.example.org")
    assert (await ok.next())["status"] == "connected"
    with pytest.raises(ConnectionError, match="Origin not allowed"):
        await connect_with_origin(port, "https://evil.example.org")
    with pytest.raises(ConnectionError, match="Origin not allowed"):
        await connect_with_origin(port, "null")
    # chatd's own web page (same scheme, host and port as the request) may
    # always connect back.
    own = await connect_with_origin(port, f"http://127.0.0.1:{port}")
    assert (await own.next())["status"] == "connected"
    await own.close()
    with pytest.raises(ConnectionError, match="Origin not allowed"):
        await connect_with_origin(port, f"http://127.0.0.1:{port + 1}")
    # Clients that send no Origin at all (not browsers) are not affected.
    plain = await connect_with_origin(port, None)
    assert (await plain.next())["status"] == "connected"
    await ok.close()
    await plain.close()
    values = server.factory.metrics.registry.get_sample_value
    assert values("chatd_handshake_failures_total", {"reason": "origin"}) == 3


@pytest_twisted.ensureDeferred
async def test_without_allowed_origins_any_origin_connects(server: InProcessServer) -> None:
    for origin in ("https://anywhere.example", "null", None):
        client = await connect_with_origin(server.port_number, origin)
        assert (await client.next())["status"] == "connected"
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_handshake_flood_does_not_stop_normal_clients(daemon_factory) -> None:
    flood_size = 2000
    chatd = daemon_factory(
        "--listen", "tcp:0:interface=127.0.0.1", "--max-connections-per-ip", "100",
        "--handshake-timeout", "60", "--rate-connections-per-ip", "0",
        # The flood comes from 127.0.0.2: neither a proxy nor exempt.
        "--trusted-proxy", "127.0.0.1", "--limit-loopback",
    )
    flood: list[socket.socket] = []
    try:
        port = await chatd.wait_listening()

        def open_flood() -> int:
            """Connect from 127.0.0.2 and never send a byte; count the refused."""
            for _ in range(flood_size):
                sock = socket.socket()
                sock.settimeout(10)
                sock.bind(("127.0.0.2", 0))
                sock.connect(("127.0.0.1", port))
                flood.append(sock)
            refused = 0
            for sock in flood[100:]:
                if sock.recv(100).startswith(b"HTTP/1.1 503 "):
                    refused += 1
            return refused

        assert await deferToThread(open_flood) == flood_size - 100
        # The first 100 are still waiting to send a request; nobody else cares.
        a, a_id, b = await two_in_a_room(port, "calm")
        await a.request({"action": "message", "body": "through the flood"})
        event = await b.next()
        assert (event["from"], event["body"]) == (a_id, "through the flood")
        await a.close()
        await b.close()
    finally:
        for sock in flood:
            sock.close()
