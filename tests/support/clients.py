"""
A WebSocket client that queues what it receives, and waits that fail with a reason.
Every wait is on an event, bounded by a timeout that fails with a reason.
"""

from __future__ import annotations

import json
import re
from collections import deque
from typing import Any, Optional

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint


WAIT = 20.0  # seconds any single expected event may take before a test fails


def within(d: Deferred, what: str, seconds: float = WAIT) -> Deferred:
    """Fail ``d`` with a readable message if it does not fire in time."""

    def timed_out(failure: Any) -> Any:
        from twisted.internet.defer import TimeoutError

        if failure.check(TimeoutError):
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        return failure

    return d.addTimeout(seconds, reactor).addErrback(timed_out)


class _ClientProtocol(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.factory.client._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.client._received(payload)

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        self.factory.client._closed(code, reason)


class WSClient:
    """A WebSocket client that queues every message it receives."""

    def __init__(self) -> None:
        self.protocol: Optional[_ClientProtocol] = None
        self.inbox: deque[bytes] = deque()
        self._waiters: deque[Deferred] = deque()
        self._open: Deferred = Deferred()
        self.closed: Deferred = Deferred()  # fires with (code, reason)
        self.close_code: Optional[int] = None

    def _opened(self, protocol: _ClientProtocol) -> None:
        self.protocol = protocol
        self._open.callback(self)

    def _received(self, payload: bytes) -> None:
        if self._waiters:
            self._waiters.popleft().callback(payload)
        else:
            self.inbox.append(payload)

    def _closed(self, code: Optional[int], reason: Optional[str]) -> None:
        self.close_code = code
        if not self._open.called:
            self._open.errback(ConnectionError(f"handshake failed: {reason}"))
        for waiter in self._waiters:
            waiter.errback(ConnectionError(f"closed with {code}: {reason}"))
        self._waiters.clear()
        self.closed.callback((code, reason))

    def next_raw(self) -> Deferred:
        if self.inbox:
            d: Deferred = Deferred()
            d.callback(self.inbox.popleft())
            return d
        if self.closed.called:
            raise ConnectionError("connection is closed")
        d = Deferred()
        self._waiters.append(d)
        return within(d, "a message")

    async def next(self) -> Any:
        return json.loads(await self.next_raw())

    def send(self, obj: Any) -> None:
        self.send_raw(json.dumps(obj).encode())

    def send_raw(self, payload: bytes, binary: bool = False) -> None:
        assert self.protocol is not None
        self.protocol.sendMessage(payload, isBinary=binary)

    async def request(self, obj: Any) -> Any:
        """
        Send a command and return its reply.  Broadcasts and events that come
        before the reply stay queued, in order, for later next() calls.
        """
        self.send(obj)
        others = []
        while True:
            raw = await self.next_raw()
            message = json.loads(raw)
            if isinstance(message, dict) and "status" in message:
                break
            others.append(raw)
        self.inbox.extendleft(reversed(others))
        return message

    async def wait_closed(self) -> tuple[Optional[int], Optional[str]]:
        return await within(self.closed, "the connection to close")

    async def close(self) -> None:
        if self.protocol is not None and not self.closed.called:
            self.protocol.sendClose(1000)
            await self.wait_closed()

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake."""
        assert self.protocol is not None
        self.protocol.transport.abortConnection()


async def connect(
    port: int, tls: Any = None, host: str = "127.0.0.1", source: Optional[str] = None,
    headers: Optional[dict[str, str]] = None,
) -> WSClient:
    """
    A connected, opened client; ``tls`` is client TLS options (from
    ``optionsForClientTLS``) for ``wss://``; ``source`` the loopback address
    to connect from (127.0.0.2, ...).
    """
    client = WSClient()
    scheme = "wss" if tls is not None else "ws"
    factory = WebSocketClientFactory(f"{scheme}://{host}:{port}", headers=headers)
    factory.setProtocolOptions(autoPingInterval=0, openHandshakeTimeout=WAIT)
    factory.protocol = _ClientProtocol
    factory.client = client
    endpoint: Any = TCP4ClientEndpoint(
        reactor, "127.0.0.1", port, bindAddress=(source, 0) if source is not None else None)
    if tls is not None:
        from twisted.internet.endpoints import wrapClientTLS

        endpoint = wrapClientTLS(tls, endpoint)
    await endpoint.connect(factory)
    await within(client._open, "the WebSocket handshake")
    return client


ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def seed_example_2(sender: WSClient, sender_id: str, others: list[WSClient]) -> None:
    """
    The seed's second example: the sender's reply, then to every other
    member the seed's broadcast, byte for byte (plus chatd's "id").
    """
    sender.send({"action": "message", "body": "Hello everyone!"})
    assert await sender.next_raw() == b'{"status": "success", "message": "Message sent"}'
    for other in others:
        raw = await other.next_raw()
        event = json.loads(raw)
        # The seed's keys in the seed's order; chatd's "id" is added last.
        assert list(event) == ["from", "body", "timestamp", "id"]
        assert event["id"] == 1
        assert (event["from"], event["body"]) == (sender_id, "Hello everyone!")
        assert ISO_MS.match(event["timestamp"])
        assert raw == json.dumps(event).encode()


async def two_in_a_room(port: int, name: str = "room", **connect_options: Any) -> tuple[WSClient, str, WSClient]:
    """Two welcomed clients; the first created a room the second joined: (a, a's ID, b)."""
    a, b = await connect(port, **connect_options), await connect(port, **connect_options)
    a_id = (await a.next())["client_id"]
    await b.next()
    room_id = (await a.request({"action": "create", "body": name}))["room_id"]
    assert (await b.request({"action": "join", "body": {"room_id": room_id}}))["status"] == "success"
    return a, a_id, b
