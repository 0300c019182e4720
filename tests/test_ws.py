"""
The Autobahn adapter on an in-memory transport: framing, errors, the slow
client cap, and shutdown, driven by a fake clock.
"""

from __future__ import annotations

import json

import pytest
import struct
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.internet.error import ConnectionDone

from chatd.settings import Settings
from chatd.delivery.frames import text_frame
from chatd.ws import ChatFactory, ChatProtocol
from tests.fakes import HANDSHAKE, ProducerTransport, client_frame, server_frames

# Autobahn's timers run on txaio's global loop, not the injected clock: the
# adapter tests switch them off and test timeouts end to end instead.
SETTINGS = Settings(
    ping_interval=0, ping_timeout=0, handshake_timeout=0, close_timeout=0,
    max_outgoing_buffer=10_000,
)


class Peer:
    """One in-memory client connection to the factory."""

    def __init__(self, factory: ChatFactory, port: int = 40000) -> None:
        self.factory = factory
        self.transport = ProducerTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.protocol: ChatProtocol = factory.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)
        self._seen = 0

    def open(self) -> dict[str, Any]:
        self.protocol.dataReceived(HANDSHAKE)
        self.factory.clock.advance(0)
        response = self.transport.value()
        head, _, rest = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        self._seen = len(head) + 4
        [welcome] = self.messages()
        return welcome

    def frames(self) -> list[tuple[int, bytes]]:
        self.factory.clock.advance(0)  # frames are sent right after the iteration
        data = self.transport.value()
        new, self._seen = data[self._seen :], len(data)
        return server_frames(new)

    def messages(self) -> list[Any]:
        return [json.loads(payload) for opcode, payload in self.frames() if opcode == 1]

    def send(self, obj: Any) -> list[Any]:
        return self.send_raw(json.dumps(obj).encode())

    def send_raw(self, payload: bytes, opcode: int = 1) -> list[Any]:
        self.protocol.dataReceived(client_frame(payload, opcode))
        return self.messages()

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


def make_factory(
    settings: Settings = SETTINGS, chat: Any = None, portal: Any = None, moderators: Any = None,
) -> ChatFactory:
    """A factory on a memory reactor; ``chat``: another chat than this
    process's, ``portal``: one that checks tokens, ``moderators``: its
    moderation chain."""
    from chatd.compose import compose

    reactor = MemoryReactorClock()
    server = compose(settings, reactor, reactor, moderators=moderators, portal=portal, cluster=False)
    if chat is not None:
        server.chat = chat
    return ChatFactory(settings, clock=reactor, reactor=reactor, server=server)


def peers_in_room(factory: ChatFactory, n: int) -> tuple[str, list[Peer]]:
    """n open peers, the first of which created a room the others joined."""
    peers = [Peer(factory, 40000 + i) for i in range(n)]
    for peer in peers:
        peer.open()
    room_id = peers[0].send({"action": "create", "body": "r"})[0]["room_id"]
    for peer in peers[1:]:
        peer.send({"action": "join", "body": {"room_id": room_id}})
    return room_id, peers


def test_welcome_then_the_client_is_known_and_is_its_transports_producer() -> None:
    factory = make_factory()
    peer = Peer(factory)
    welcome = peer.open()
    assert welcome["status"] == "connected" and welcome["message"] == "Welcome!"
    assert list(factory.core.clients) == [welcome["client_id"]]
    assert peer.transport.producer is peer.protocol
    assert peer.transport.streaming


def test_commands_get_replies_and_broadcasts_are_framed() -> None:
    factory = make_factory()
    a, b = Peer(factory), Peer(factory, 40001)
    a_id = a.open()["client_id"]
    b.open()
    [created] = a.send({"action": "create", "body": "Game Night"})
    room_id = created["room_id"]
    assert b.send({"action": "join", "body": {"room_id": room_id}}) == [
        {"status": "success", "message": "Joined room 'Game Night'", "room_id": room_id}
    ]
    assert a.send({"action": "message", "body": "hi"}) == [
        {"status": "success", "message": "Message sent"}
    ]
    [event] = b.messages()
    assert (event["from"], event["body"]) == (a_id, "hi")


def test_errors_keep_the_connection_working() -> None:
    factory = make_factory()
    peer = Peer(factory)
    peer.open()
    assert peer.send_raw(b"{") == [{"status": "error", "message": "Invalid JSON format"}]
    assert peer.send_raw(b"\x01\x02", opcode=2) == [
        {"status": "error", "message": "Binary frames are not supported; send JSON as text frames"}
    ]
    assert peer.send({"action": "leave"}) == [{"status": "error", "message": "Not in any room"}]
    assert peer.send({"action": "create", "body": "still here"})[0]["status"] == "success"


def test_an_internal_error_is_logged_and_never_shown(caplog: Any) -> None:
    factory = make_factory()
    peer = Peer(factory)
    peer.open()

    def broken(*args: Any) -> Any:
        raise KeyError("secret internal detail")

    factory.core.handle = broken  # type: ignore[method-assign]
    [reply] = peer.send({"action": "leave"})
    assert reply == {"status": "error", "message": "Internal server error"}
    assert "secret" not in json.dumps(reply)
    factory.core.handle = type(factory.core).handle.__get__(factory.core)  # type: ignore[method-assign]
    assert peer.send({"action": "leave"}) == [{"status": "error", "message": "Not in any room"}]


def test_frames_read_by_chatd_and_by_autobahn_keep_their_order() -> None:
    # One read: two messages chatd's reader takes, a ping it leaves to
    # Autobahn, and a message after the ping (Autobahn's too).
    factory = make_factory()
    peer = Peer(factory)
    peer.open()
    data = (
        client_frame(b'{"action": "leave"}')
        + client_frame(b'{"action": "members"}')
        + client_frame(b"are you there", opcode=9)
        + client_frame(b'{"action": "nick", "body": "ann"}')
    )
    peer.protocol.dataReceived(data)
    frames = peer.frames()
    assert [opcode for opcode, _ in frames] == [1, 1, 10, 1]
    assert frames[2][1] == b"are you there"
    assert [json.loads(p)["message"] for o, p in frames if o == 1] == [
        "Not in any room", "You must join a room first", "Nick set to 'ann'",
    ]


def test_a_message_split_across_reads_is_read_whole() -> None:
    factory = make_factory()
    peer = Peer(factory)
    peer.open()
    data = client_frame(b'{"action": "create", "body": "split"' + b" " * 300 + b"}")
    for i in range(0, len(data), 7):
        peer.protocol.dataReceived(data[i : i + 7])
    assert [m["status"] for m in peer.messages()] == ["success"]


def test_a_message_on_its_own_is_sent_at_once_and_a_busy_iteration_gathers(fast_path_on: object) -> None:
    factory = make_factory()
    _, [a, b, c] = peers_in_room(factory, 3)
    for peer in (a, b, c):
        peer.frames()

    def sent_to_b() -> list[str]:
        return [json.loads(p)["body"] for _, p in server_frames(b.transport.value()[b._seen:])]

    # Alone in its read and its reactor iteration: each member gets it
    # during the fan-out, before the iteration ends.
    a.protocol.dataReceived(client_frame(b'{"action": "message", "body": "one"}'))
    assert sent_to_b() == ["one"]
    b.frames(), c.frames(), a.frames()
    # Two in one read, then one from another connection in the same
    # iteration: all gathered, and sent in order when the iteration ends.
    a.protocol.dataReceived(
        client_frame(b'{"action": "message", "body": "two"}')
        + client_frame(b'{"action": "message", "body": "three"}')
    )
    c.protocol.dataReceived(client_frame(b'{"action": "message", "body": "four"}'))
    assert sent_to_b() == []
    assert [m["body"] for m in b.messages()] == ["two", "three", "four"]


def test_a_reads_messages_reach_each_member_in_one_delivery_and_before_what_follows(fast_path_on: object) -> None:
    factory = make_factory()
    _, [a, b] = peers_in_room(factory, 2)
    b.send({"action": "events", "body": True})
    a.frames(), b.frames()
    deliveries: list[Any] = []
    original = b.protocol.deliver
    b.protocol.deliver = lambda frame: (deliveries.append(frame), original(frame))[1]  # type: ignore[method-assign]
    a.protocol.dataReceived(
        client_frame(b'{"action": "message", "body": "one"}')
        + client_frame(b'{"action": "message", "body": "two"}')
        + client_frame(b'{"action": "nick", "body": "ann"}')
        + client_frame(b'{"action": "message", "body": "three"}')
    )
    assert [m.get("body", m.get("event")) for m in b.messages()] == ["one", "two", "nick", "three"]
    # "one" and "two" in one delivery; the nick event and "three" after it.
    assert len(deliveries) == 3
    assert [m["message"] for m in a.messages()] == ["Message sent", "Message sent", "Nick set to 'ann'", "Message sent"]
    assert factory.metrics.registry.get_sample_value("chatd_deliveries_total") == 3
    # Timed as two fan-outs: "one" and "two" together, then "three".
    assert factory.metrics.registry.get_sample_value("chatd_fanout_seconds_count") == 2


def test_a_read_past_its_rate_limit_broadcasts_what_was_allowed() -> None:
    from dataclasses import replace

    factory = make_factory(replace(SETTINGS, rate_messages=1.0, rate_messages_burst=2))
    _, [a, b] = peers_in_room(factory, 2)
    a.frames(), b.frames()
    a.protocol.dataReceived(b"".join(
        client_frame(b'{"action": "message", "body": "%d"}' % n) for n in range(4)
    ))
    assert [m["body"] for m in b.messages()] == ["0", "1"]
    replies = a.messages()
    assert [r["status"] for r in replies] == ["success", "success", "error", "error"]
    assert replies[2]["message"].startswith("Rate limit exceeded")


def close_code(frames: list[tuple[int, bytes]]) -> tuple[int, str] | None:
    for opcode, payload in frames:
        if opcode == 8:
            return struct.unpack("!H", payload[:2])[0], payload[2:].decode()
    return None


def test_a_client_that_stops_reading_is_dropped_and_the_room_carries_on() -> None:
    factory = make_factory()
    room_id, [sender, fast, slow] = peers_in_room(factory, 3)
    slow_id = slow.protocol._client.client_id

    slow.transport.fill_buffer()  # its socket is full: it stopped reading
    body = "x" * 1000
    for _ in range(30):  # ~31 KB for a 10,000-byte cap
        sender.send({"action": "message", "body": body})

    assert len(fast.messages()) == 30
    assert close_code(slow.frames()) == (1008, "Outgoing buffer limit exceeded: client too slow")
    assert slow_id not in factory.core.rooms[room_id].members
    assert slow_id not in factory.core.clients
    assert factory.metrics.registry.get_sample_value("chatd_slow_client_drops_total") == 1
    # Closing, not sending: what it would have received was never queued.
    before = len(slow.transport.value())
    sender.send({"action": "message", "body": body})
    assert len(slow.transport.value()) == before
    assert len(fast.messages()) == 1


def test_a_client_whose_buffer_is_full_is_not_read_and_its_pongs_count() -> None:
    factory = make_factory()
    [peer] = [Peer(factory)]
    peer.open()
    peer.transport.fill_buffer()
    # Nothing more is read from it while it does not read (the kernel's
    # buffers hold it back) ...
    assert peer.transport.producerState == "paused"
    # ... and what was read already cannot make the server write past the
    # limit: pongs count like every other byte.
    for _ in range(100):  # 100 pongs of 125 bytes for a 10,000-byte cap
        peer.protocol.dataReceived(client_frame(b"p" * 125, opcode=9))
    assert close_code(peer.frames()) == (1008, "Outgoing buffer limit exceeded: client too slow")
    assert factory.metrics.registry.get_sample_value("chatd_slow_client_drops_total") == 1


def test_a_client_that_reads_again_is_read_again() -> None:
    factory = make_factory()
    [peer] = [Peer(factory)]
    peer.open()
    peer.transport.fill_buffer()
    peer.transport.drain_buffer()
    peer._seen = 0  # what it had was read
    assert peer.transport.producerState == "producing"
    assert peer.send({"action": "leave"}) == [{"status": "error", "message": "Not in any room"}]


def test_a_client_whose_buffer_drains_in_time_is_kept() -> None:
    factory = make_factory()
    room_id, [sender, reader] = peers_in_room(factory, 2)
    body = "x" * 1000
    for _ in range(5):
        reader.transport.fill_buffer()
        for _ in range(8):  # ~8 KB per stretch, under the 10,000-byte cap
            sender.send({"action": "message", "body": body})
        reader.transport.drain_buffer()
        reader._seen = 0
    assert reader.protocol._client is not None
    assert reader.protocol._client.client_id in factory.core.rooms[room_id].members


@pytest.mark.parametrize("path, status", [
    ("/", b"HTTP/1.1 200 OK"), ("/style.css", b"HTTP/1.1 200 OK"), ("/nope", b"HTTP/1.1 404 Not Found"),
])
def test_plain_http_gets_the_page_or_a_complete_404(path: str, status: bytes) -> None:
    factory = make_factory()
    peer = Peer(factory)
    peer.protocol.dataReceived(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    response = peer.transport.value()
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == status
    assert f"Content-Length: {len(body)}".encode() in lines
    assert b"Connection: close" in lines
    assert body
    peer.lose()  # onClose without onOpen is harmless
    assert factory.core.clients == {}
    assert factory.connections == set()


def test_disconnect_cleans_up_and_is_idempotent() -> None:
    factory = make_factory()
    room_id, [a, b] = peers_in_room(factory, 2)
    a.lose()
    assert len(factory.core.clients) == 1
    b.lose()
    assert factory.core.clients == {} and factory.core.rooms == {}
    assert factory.connections == set()


def test_shutdown_sends_going_away_and_aborts_stragglers() -> None:
    factory = make_factory()
    polite, straggler = Peer(factory), Peer(factory, 40001)
    polite.open()
    straggler.open()
    d = factory.shutdown(timeout=10)
    assert close_code(polite.frames()) == (1001, "Server shutting down")
    assert close_code(straggler.frames()) == (1001, "Server shutting down")
    polite.lose()  # it answered and went away
    assert not d.called
    factory.clock.advance(10)
    assert straggler.transport.aborted
    straggler.lose()
    assert d.called
    assert factory.core.clients == {}


def test_shutdown_with_no_connections_is_immediate() -> None:
    assert make_factory().shutdown(timeout=10).called


def test_nothing_follows_our_close_frame() -> None:
    factory = make_factory()
    room_id, [sender, closing] = peers_in_room(factory, 2)
    closing.protocol.go_away()
    assert close_code(closing.frames()) == (1001, "Server shutting down")
    # A command still in flight from the client gets no reply (and raises
    # nothing), and a broadcast is not framed after the close frame.
    assert closing.send({"action": "leave"}) == []
    sender.send({"action": "message", "body": "late"})
    assert closing.frames() == []
    assert closing.protocol._client is not None
    assert closing.protocol._client.client_id not in factory.core.rooms[room_id].members


def test_autobahn_timeouts_never_fire_before_the_configured_time() -> None:
    # txaio's batched timer truncates deadlines to whole seconds, so chatd
    # asks for one second more than configured; 0 stays "off".
    factory = make_factory(Settings(handshake_timeout=10, close_timeout=5, ping_interval=30, ping_timeout=30))
    assert factory.closeHandshakeTimeout == 6
    assert (factory.autoPingInterval, factory.autoPingTimeout) == (30, 31)
    assert make_factory().autoPingTimeout == 0
    # The opening handshake is timed by chatd (HandshakeTimer), not by Autobahn.
    assert factory.openHandshakeTimeout == 0


def test_the_handshake_timer_drops_late_handshakes_never_early() -> None:
    from chatd.handshake import HandshakeTimer

    class Shaking:
        timed_out = 0

        def onOpenHandshakeTimeout(self) -> None:
            self.timed_out += 1

    clock = Clock()
    timer = HandshakeTimer(clock, 10)
    timer.start()
    slow, quick = Shaking(), Shaking()
    clock.advance(0.5)
    timer.begin(slow)  # type: ignore[arg-type]
    timer.begin(quick)  # type: ignore[arg-type]
    clock.advance(5)
    timer.done(quick)  # type: ignore[arg-type]
    clock.pump([1] * 4)  # 9.5 s after its start
    assert slow.timed_out == 0
    clock.pump([1] * 2)  # within a second after its 10 s
    assert (slow.timed_out, quick.timed_out) == (1, 0)
    clock.pump([1] * 20)
    assert slow.timed_out == 1  # once
    timer.stop()


def test_autobahn_debug_helpers_format_only_when_debugging(fast_path_on: object) -> None:
    import autobahn.websocket.protocol as autobahn_protocol
    import txaio

    make_factory()  # a server's factory quiets them (never an import)

    before = txaio.get_global_log_level()
    try:
        txaio.set_global_log_level("info")
        assert autobahn_protocol.pformat({"a": 1}) == "-"
        assert autobahn_protocol.hltype(ChatProtocol) == "-"
        txaio.set_global_log_level("debug")
        assert autobahn_protocol.pformat({"a": 1}) == "{'a': 1}"
        assert "ChatProtocol" in autobahn_protocol.hltype(ChatProtocol)
    finally:
        txaio.set_global_log_level(before)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_chatds_framer_matches_autobahns(size: int) -> None:
    # chatd frames broadcasts and replies itself (once per broadcast); the
    # bytes must be exactly those of Autobahn's own framer.
    from autobahn.twisted.websocket import WebSocketServerFactory

    from chatd.delivery.frames import text_frame

    payload = bytes(range(97, 123)) * (size // 26) + b"x" * (size % 26)
    assert text_frame(payload) == WebSocketServerFactory().prepareMessage(payload).payloadHybi
    assert server_frames(text_frame(payload)) == [(1, payload)]


def test_every_autobahn_option_reaches_the_protocol_from_its_class() -> None:
    # The options are class attributes of the factory's own protocol class,
    # so Autobahn's per-connection copying loop is skipped; each connection
    # must still see the factory's value of every option.
    factory = make_factory()
    peer = Peer(factory)
    peer.open()
    for attr in ChatProtocol.CONFIG_ATTRS:
        assert getattr(peer.protocol, attr) == getattr(factory, attr), attr
    assert "openHandshakeTimeout" not in vars(peer.protocol)
    assert peer.protocol.openHandshakeTimeout >= SETTINGS.handshake_timeout


def test_a_compressed_broadcast_inflates_to_the_payload() -> None:
    import zlib

    from chatd.delivery.frames import Broadcast

    for payload in (b'{"body": "x"}', b'{"body": "' + b"abc" * 30000 + b'"}'):
        frame = Broadcast(payload)
        assert frame.plain == text_frame(payload)
        data = frame.deflated
        assert data[0] == 0xC1  # FIN, RSV1 (compressed), text
        length = data[1] & 0x7F
        start = 2 if length < 126 else 4 if length == 126 else 10
        inflater = zlib.decompressobj(-15)
        assert inflater.decompress(data[start:] + b"\x00\x00\xff\xff") == payload
        assert frame.deflated is data  # made once, for every member


def test_a_batch_of_broadcasts_is_their_frames_in_order_plain_or_compressed() -> None:
    from chatd.delivery.frames import Broadcast, Broadcasts

    parts = [Broadcast(b'{"body": "one"}'), Broadcast(b'{"body": "two"}')]
    batch = Broadcasts(parts)
    assert batch.plain == parts[0].plain + parts[1].plain
    assert server_frames(batch.plain) == [(1, b'{"body": "one"}'), (1, b'{"body": "two"}')]
    assert batch.deflated == parts[0].deflated + parts[1].deflated
