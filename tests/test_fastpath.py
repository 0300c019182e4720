"""
The fast paths: checked at start-up, each with a public fallback, and all
switched off by CHATD_FASTPATH=0, under which the real-socket suites pass.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.base import ReactorBase
from twisted.logger import capturedLogs

from chatd import fastpath

ROOT = Path(__file__).resolve().parent.parent

#: The suites that run chatd on real sockets (in process, or the real twistd).
REAL_SOCKET_SUITES = [
    "tests/test_e2e.py",
    "tests/test_features_e2e.py",
    "tests/test_moderation_e2e.py",
    "tests/test_limits.py",
    "tests/test_timeouts.py",
    "tests/test_tls.py",
    "tests/test_operations.py",
    "tests/test_workers.py",
    "tests/test_proxies.py",
    "tests/test_cluster.py",
    "tests/test_cluster_e2e.py",
    "tests/test_web.py",
]


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Shortcuts checked again inside the test, and again after it."""
    monkeypatch.delenv(fastpath.SWITCH, raising=False)
    fastpath.reset()
    yield monkeypatch
    monkeypatch.undo()
    fastpath.reset()


def test_every_shortcut_is_found_on_the_libraries_chatd_installs(fresh: pytest.MonkeyPatch) -> None:
    # A release that moves one of these makes this fail here, not silently
    # slow chatd down in production.
    assert fastpath.shortcuts() == fastpath.Shortcuts(
        send=True, frames=True, quiet_debug=True, redis_alone=True, forget_sigterm=True,
        tcp_address=True, handshake=True, options_on_class=True, clean_drops=True, redis_send=True,
        sentinel_timeout=True)


def test_the_switch_turns_every_shortcut_off_with_one_log_line(fresh: pytest.MonkeyPatch) -> None:
    fresh.setenv(fastpath.SWITCH, "0")
    with capturedLogs() as events:
        assert fastpath.shortcuts() == fastpath.Shortcuts()
        fastpath.shortcuts()  # checked once
    assert [e["log_format"] for e in events] == [
        "Fast paths off ({switch}=0): using the public APIs only"]


def test_a_missing_internal_turns_only_its_shortcut_off(fresh: pytest.MonkeyPatch) -> None:
    fresh.delattr(ReactorBase, "_exitSignal")
    fresh.delattr(WebSocketProtocol, "_cancelAutoPingTimeoutCall")
    with capturedLogs() as events:
        found = fastpath.shortcuts()
    assert (found.forget_sigterm, found.frames) == (False, False)
    assert (found.send, found.quiet_debug, found.redis_alone, found.tcp_address) == (True, True, True, True)
    assert sorted(e["name"] for e in events if e.get("event") == "fastpath_off") == [
        "forget_sigterm", "frames"]


@pytest.mark.parametrize("switch", ["1", "0"])
def test_frames_are_read_by_chatd_only_with_the_shortcut(fresh: pytest.MonkeyPatch, switch: str) -> None:
    from tests.test_ws import Peer, make_factory

    from autobahn.twisted.websocket import WebSocketServerProtocol

    fresh.setenv(fastpath.SWITCH, switch)
    public = WebSocketServerProtocol.dataReceived
    calls: list[bytes] = []

    def counted(protocol: WebSocketServerProtocol, data: bytes) -> None:
        calls.append(data)
        public(protocol, data)

    fresh.setattr(WebSocketServerProtocol, "dataReceived", counted)
    factory = make_factory()
    peer = Peer(factory)
    peer.open()
    assert peer.protocol._quick is (switch == "1")
    # The handshake reaches Autobahn's parser directly with the shortcut,
    # through its public dataReceived without it.
    assert len(calls) == (0 if switch == "1" else 1)
    assert peer.send({"action": "create", "body": "r"})[0]["status"] == "success"
    assert peer.send({"action": "message", "body": "hi"}) == [{"status": "success", "message": "Message sent"}]


def test_a_connection_without_autobahns_parser_state_reads_through_autobahn(fresh: pytest.MonkeyPatch) -> None:
    class Bare:
        pass

    assert fastpath.shortcuts().frames
    with capturedLogs() as events:
        assert fastpath.parser_state_known(Bare()) is False  # type: ignore[arg-type]
    assert fastpath.shortcuts().frames is False
    assert [e["name"] for e in events] == ["frames"]


def test_without_the_redis_shortcut_no_message_counts_as_alone(fresh: pytest.MonkeyPatch) -> None:
    fresh.setenv(fastpath.SWITCH, "0")

    class Empty:
        class _reader:
            @staticmethod
            def has_data() -> bool:
                return False

    assert fastpath.more_buffered(Empty()) is True


@pytest.mark.timeout(900)
def test_the_real_socket_suites_pass_with_every_fast_path_off() -> None:
    # The public paths stay correct: the end-to-end suites, the real twistd
    # (its SIGTERM drain exits 0 through chatd's own signal handler) and the
    # cluster, with every shortcut off.
    env = dict(os.environ, **{fastpath.SWITCH: "0"})
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *REAL_SOCKET_SUITES],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    tail = "\n".join(result.stdout.splitlines()[-25:])
    assert result.returncode == 0, tail
    assert " passed" in tail and " failed" not in tail


def _handshake(request: bytes) -> tuple[bytes, dict, Any]:
    """What a server protocol answers to ``request``, and its handshake state."""
    from tests.test_ws import Peer, make_factory

    factory = make_factory()
    peer = Peer(factory)
    taken = []
    original = fastpath.handshake

    def watched(protocol: Any, data: bytes) -> bool:
        taken.append(original(protocol, data))
        return taken[-1]

    fastpath.handshake = watched  # type: ignore[assignment]
    try:
        peer.protocol.dataReceived(request)
        factory.clock.advance(0)
    finally:
        fastpath.handshake = original  # type: ignore[assignment]
    p = peer.protocol
    state = {name: getattr(p, name, None) for name in (
        "state", "http_status_line", "http_headers", "http_request_uri", "http_request_path",
        "http_request_params", "http_request_host", "websocket_version", "websocket_protocols",
        "websocket_origin", "websocket_extensions", "websocket_protocol_in_use", "data")}
    # The welcome's client ID is random: the rest must be the same bytes.
    return re.sub(rb'"client_id": "[0-9a-f]{8}"', b"ID", peer.transport.value()), state, taken[:1]


PLAIN = (b"GET / HTTP/1.1\r\nHost: chat.example.org:8765\r\nUpgrade: websocket\r\n"
         b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
         b"Origin: https://chat.example.org\r\nSec-WebSocket-Version: 13\r\n\r\n")


@pytest.mark.parametrize("request_", [
    PLAIN,
    PLAIN.replace(b"GET / ", b"GET /chat?room=1 "),  # a query: Autobahn's
    PLAIN.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Protocol: chat\r\n\r\n"),  # a subprotocol: Autobahn's
    PLAIN.replace(b"Origin: ", b"X-A: 1\r\nX-A: 2\r\nOrigin: "),  # a header twice: Autobahn's
    PLAIN.replace(b"Origin: https://chat.example.org", b"Origin: not an origin"),  # refused by Autobahn
    PLAIN.replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"),
    PLAIN.replace(b"Upgrade: websocket", b"Upgrade: h2c"),
    PLAIN.replace(b"Host: chat", b"Host:\x85chat"),  # obs-text: Autobahn's
    PLAIN.replace(b"Host: chat", b"Host : chat"),  # not a header line
    PLAIN.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"dGhlIHNhbXBsZSBub25jZQ"),  # a bad key
])
def test_the_quick_handshake_answers_exactly_as_autobahn(fresh: pytest.MonkeyPatch, request_: bytes) -> None:
    quick_response, quick_state, taken = _handshake(request_)
    fresh.setenv(fastpath.SWITCH, "0")
    fastpath.reset()
    response, state, _ = _handshake(request_)
    assert quick_response == response
    assert quick_state == state
    # The plain request is chatd's; the others are left to Autobahn, as is
    # any request it would refuse.
    assert taken == [request_ == PLAIN]


def test_without_the_shortcuts_a_factorys_protocol_class_and_clean_drops_use_the_public_api(
    fresh: pytest.MonkeyPatch,
) -> None:
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

    fresh.setenv(fastpath.SWITCH, "0")
    factory = WebSocketServerFactory()
    factory.setProtocolOptions(tcpNoDelay=True)
    made = fastpath.options_on_class(factory, WebSocketServerProtocol, "Made", extra=1)
    assert made.CONFIG_ATTRS == WebSocketServerProtocol.CONFIG_ATTRS  # Autobahn copies them itself
    assert (made.tcpNoDelay, made.extra) == (True, 1)

    class Dropped:
        dropped = None

        def dropConnection(self, abort: bool = False) -> None:
            self.dropped = abort

    protocol = Dropped()
    fastpath.drop_answered(protocol)
    assert protocol.dropped is False and not hasattr(protocol, "wasClean")
