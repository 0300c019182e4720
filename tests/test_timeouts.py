"""
Half-open and dead connections do not pile up: the opening-handshake timeout
and the ping timeout, end to end with short settings.  Every wait is for the
server's own action (an EOF, a ping), never a sleep.
"""

from __future__ import annotations

import socket
from typing import AsyncIterator

import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.threads import deferToThread

from chatd.settings import Settings
from tests.fakes import client_frame
from tests.support.clients import _ClientProtocol, within, WSClient
from tests.support.raw import read_until_eof, StalledClient
from tests.support.servers import InProcessServer


@pytest_twisted.async_yield_fixture
async def quick_server() -> AsyncIterator[InProcessServer]:
    # 1 s is the shortest timeout chatd accepts; each fires within 1-2 s.
    settings = Settings(handshake_timeout=1, ping_interval=1, ping_timeout=1, close_timeout=1)
    running = await InProcessServer(settings).start()
    yield running
    await running.stop()


@pytest_twisted.ensureDeferred
async def test_a_peer_that_never_answers_our_close_frame_is_aborted(
    quick_server: InProcessServer,
) -> None:
    peer = await deferToThread(StalledClient, quick_server.port_number)
    try:
        await deferToThread(peer.next)
        # Over the size limit: the server sends close 1009 and waits for the
        # peer's close frame, which never comes.
        limit = quick_server.factory.settings.max_message_size
        peer.sock.sendall(client_frame(b"x" * (limit + 1)))
        code, _ = await deferToThread(peer.read_close)
        assert code == 1009
        await deferToThread(peer.read_until_eof)
    finally:
        peer.close()
    assert quick_server.factory.connections == set()
    assert quick_server.factory.core.clients == {}


@pytest_twisted.ensureDeferred
async def test_an_unfinished_handshake_is_dropped(quick_server: InProcessServer) -> None:
    sock = socket.create_connection(("127.0.0.1", quick_server.port_number), timeout=20)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n")  # and never the rest
    try:
        assert await deferToThread(read_until_eof, sock) == b""
    finally:
        sock.close()
    assert quick_server.factory.connections == set()


@pytest_twisted.ensureDeferred
async def test_a_peer_that_never_answers_pings_is_dropped_and_leaves_its_room(
    quick_server: InProcessServer,
) -> None:
    owner, _ = await quick_server.welcomed()
    room_id = (await owner.request({"action": "create", "body": "r"}))["room_id"]
    # A raw client: it completes the handshake and joins, but never pongs.
    dead = await deferToThread(StalledClient, quick_server.port_number)
    await deferToThread(dead.next)
    await deferToThread(dead.request, {"action": "join", "body": {"room_id": room_id}})
    assert len(quick_server.factory.core.rooms[room_id].members) == 2
    try:
        rest = dead.buffer + await deferToThread(read_until_eof, dead.sock)
    finally:
        dead.close()
    assert rest[:1] == b"\x89"  # it was pinged before it was dropped
    assert list(quick_server.factory.core.rooms[room_id].members) == [
        c.client_id for c in quick_server.factory.core.clients.values()
    ]
    assert len(quick_server.factory.core.clients) == 1


class _CountingPings(_ClientProtocol):
    def onPing(self, payload: bytes) -> None:
        super().onPing(payload)  # answers with a pong
        self.factory.pinged(self)


@pytest_twisted.ensureDeferred
async def test_a_peer_that_answers_pings_stays(quick_server: InProcessServer) -> None:
    pings: list[int] = []
    enough: Deferred = Deferred()

    def pinged(protocol: _ClientProtocol) -> None:
        pings.append(1)
        if len(pings) == 3 and not enough.called:
            enough.callback(None)

    client = WSClient()
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{quick_server.port_number}")
    factory.setProtocolOptions(autoPingInterval=0)
    factory.protocol = _CountingPings
    factory.client = client
    factory.pinged = pinged
    await TCP4ClientEndpoint(reactor, "127.0.0.1", quick_server.port_number).connect(factory)
    quick_server.clients.append(client)
    await client.next()
    # Three pings about a second apart span more than the pong timeout.
    await within(enough, "three pings")
    assert not client.closed.called
    assert (await client.request({"action": "leave"}))["message"] == "Not in any room"
