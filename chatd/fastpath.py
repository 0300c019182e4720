"""
Every use of another library's internals, in one module.

chatd's hot paths take a few shortcuts around the public APIs of Twisted,
Autobahn and hiredis: a send() straight to the socket when Twisted has
nothing buffered, reading Autobahn's parser state to know that a whole
frame may be read without it, hiredis's read buffer to know that a message
from Redis came alone, and so on.  Each relies on attributes those
libraries do not promise to keep, so each is checked when chatd starts
(:func:`shortcuts`): a shortcut whose attributes are missing is turned off
with one log line, and the public path is used instead.  ``CHATD_FASTPATH=0``
in the environment turns every shortcut off (the tests run both ways).

No other module of chatd touches a private attribute of another library;
``tests/test_house.py`` checks that.
"""

from __future__ import annotations

import inspect
import os
import pprint
import re
import signal
from dataclasses import dataclass
from typing import Any, Callable, Optional

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet import abstract, tcp
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger

_log = Logger(namespace="chatd.fastpath")

#: The environment variable that turns every shortcut off when it is "0".
SWITCH = "CHATD_FASTPATH"


@dataclass
class Shortcuts:
    """Which shortcuts are in force in this process."""

    #: One send() to the socket while Twisted's own buffer is empty.
    send: bool = False
    #: Whole text frames read without Autobahn's parser (chatd.delivery.frames).
    frames: bool = False
    #: Autobahn's debug-log arguments formatted only when debugging.
    quiet_debug: bool = False
    #: A message from Redis known to be alone in its read.
    redis_alone: bool = False
    #: twistd exits 0 after a SIGTERM drain by forgetting the signal.
    forget_sigterm: bool = False
    #: The address Twisted parsed from a tcp: description, for SO_REUSEPORT.
    tcp_address: bool = False
    #: A plain opening handshake parsed here, then Autobahn's succeedHandshake.
    handshake: bool = False
    #: The factory's options set once on a protocol class of its own.
    options_on_class: bool = False
    #: A connection chatd answers and closes itself (a refusal, the page)
    #: is dropped as clean: Autobahn warns of every unclean drop.
    clean_drops: bool = False
    #: A command to Redis written as it was encoded, its reply taken from
    #: txredisapi's queue of them.
    redis_send: bool = False
    #: txredisapi's wait for a sentinel's answer, shortened.
    sentinel_timeout: bool = False


_current: Optional[Shortcuts] = None


def shortcuts() -> Shortcuts:
    """The shortcuts in force, checked (and logged) on first use."""
    global _current
    if _current is None:
        _current = _check()
    return _current


def reset() -> None:
    """Check again on next use (for tests that change the environment)."""
    global _current
    _current = None


def _check() -> Shortcuts:
    if os.environ.get(SWITCH, "1") == "0":
        _log.info("Fast paths off ({switch}=0): using the public APIs only", switch=SWITCH)
        return Shortcuts()
    found = Shortcuts()
    checks: dict[str, Callable[[], bool]] = {
        "send": _has_transport_buffers,
        "frames": lambda: all(
            hasattr(WebSocketProtocol, name)
            for name in ("STATE_OPEN", "_cancelAutoPingTimeoutCall", "_dataReceived")
        ),
        "quiet_debug": _has_debug_helpers,
        "redis_alone": _has_hiredis_reader,
        "forget_sigterm": _reactor_has_exit_signal,
        "tcp_address": _endpoint_keeps_address,
        "handshake": _has_handshake_steps,
        "options_on_class": lambda: hasattr(WebSocketServerProtocol, "CONFIG_ATTRS") and (
            "CONFIG_ATTRS" in WebSocketProtocol._connectionMade.__code__.co_names),
        "clean_drops": lambda: "wasClean" in WebSocketProtocol._connectionMade.__code__.co_names,
        "redis_send": _has_reply_queue,
        "sentinel_timeout": _sentinel_has_discovery_timeout,
    }
    for name, available in checks.items():
        try:
            ok = available()
        except Exception:
            ok = False
        setattr(found, name, ok)
        if not ok:
            _log.warn(
                "Fast path {name} off: the library internals it uses are missing; "
                "using the public API", name=name, event="fastpath_off")
    return found


# -- Twisted's transport: one send() when nothing is buffered ---------------


def _has_transport_buffers() -> bool:
    probe = abstract.FileDescriptor(reactor=object())  # type: ignore[arg-type]
    return all(hasattr(probe, name) for name in ("_tempDataBuffer", "dataBuffer", "offset"))


def sends_directly(transport: Any) -> bool:
    """Whether :func:`write` may send() on this transport's socket: a plain
    TCP connection (not TLS), with the shortcut in force."""
    return (
        shortcuts().send
        and isinstance(transport, tcp.Connection)
        and not ISSLTransport.providedBy(transport)
    )


def write(transport: Any, data: bytes) -> None:
    """
    Write ``data``: with one send() when Twisted's buffer is empty (no
    poller registration, no waiting for the next poll), through the
    transport otherwise, which keeps the order, buffers, and pauses the
    producer when the client stops reading.  Only for transports that
    :func:`sends_directly`.
    """
    if (
        transport.connected
        and not transport.disconnecting
        and not transport._tempDataBuffer
        and len(transport.dataBuffer) == transport.offset
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0  # EAGAIN, or an error the reactor will report
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


# -- Autobahn: reading whole frames without its parser ----------------------


def parser_state_known(protocol: WebSocketProtocol) -> bool:
    """Whether an open connection has the parser state :func:`parser_idle`
    reads; if not, the frames shortcut goes off (once, with a log line)."""
    names = ("data", "current_frame", "inside_message", "autoPingTimeoutCall", "autoPingRestartOnAnyTraffic")
    if all(hasattr(protocol, name) for name in names):
        return True
    current = shortcuts()
    if current.frames:
        current.frames = False
        _log.warn("Fast path frames off: Autobahn's parser state is not where it was; "
                  "using its parser", name="frames", event="fastpath_off")
    return False


def parser_idle(protocol: Any) -> bool:
    """Autobahn holds no part of a frame or message: the next bytes start a frame."""
    return not protocol.data and protocol.current_frame is None and not protocol.inside_message


def parse(protocol: Any, data: bytes) -> None:
    """
    Hand ``data`` to Autobahn's parser.  With the shortcut, straight to it:
    the public ``dataReceived`` first builds a debug log event's arguments
    on every read, the opening handshake included.
    """
    if shortcuts().frames:
        protocol._dataReceived(data)
    else:
        WebSocketServerProtocol.dataReceived(protocol, data)


def traffic_seen(protocol: Any) -> None:
    """What Autobahn does on a data frame: a pending ping timeout is cancelled."""
    if protocol.autoPingTimeoutCall and protocol.autoPingRestartOnAnyTraffic:
        protocol._cancelAutoPingTimeoutCall()


def _has_debug_helpers() -> bool:
    import autobahn.twisted.websocket as twisted_websocket
    import autobahn.websocket.protocol as websocket_protocol

    return all(
        hasattr(module, name)
        for module in (websocket_protocol, twisted_websocket)
        for name in ("hltype", "hlval")
    ) and hasattr(websocket_protocol, "pformat")


_quieted = False


def quiet_autobahn_debug() -> None:
    """
    Autobahn builds the arguments of its debug log messages whether or not
    debug logging is on: it pretty-prints its options on every new
    connection and formats type and value names on every handshake and
    frame, a large share of what a connection costs.  From here on, those
    helpers format only at txaio's debug level.  Called by the server's
    factory, never at import.
    """
    global _quieted
    if _quieted or not shortcuts().quiet_debug:
        return
    import autobahn.twisted.websocket as twisted_websocket
    import autobahn.websocket.protocol as websocket_protocol

    websocket_protocol.pformat = _only_when_debugging(pprint.pformat)
    for module in (websocket_protocol, twisted_websocket):
        module.hltype = _only_when_debugging(module.hltype)  # type: ignore[attr-defined]
        module.hlval = _only_when_debugging(module.hlval)  # type: ignore[attr-defined]
    _quieted = True


def _only_when_debugging(format_: Callable[..., Any]) -> Callable[..., Any]:
    import txaio

    level = txaio.get_global_log_level
    debugging = frozenset({"debug", "trace"})

    def formatted(*args: Any, **kwargs: Any) -> Any:
        # Called about ten times per connection: nothing looked up on the way.
        if level() in debugging:
            return format_(*args, **kwargs)
        return "-"

    return formatted


# -- Autobahn: a protocol class of the factory's own, and clean drops ------------


def options_on_class(factory: Any, base: type, name: str, **attributes: Any) -> type:
    """
    A subclass of ``base`` for ``factory`` that carries the factory's
    options, and ``attributes``, as class attributes.

    Autobahn copies every option from the factory onto each protocol
    instance that lacks it (its ``CONFIG_ATTRS``), and class attributes
    count: a protocol class of the factory's own carries them once, not
    once per connection.  It also makes tcpNoDelay take effect: Autobahn's
    connectionMade reads it before that copy, and without it no socket had
    Nagle off (small broadcasts waited for delayed ACKs).  With every option
    on the class, the copying loop (which also builds a debug listing of them
    all, per connection) has nothing to do.  Function-valued options
    (perMessageCompressionAccept) are wrapped so that they stay plain
    functions instead of becoming methods.  Without the shortcut, the class
    carries ``attributes`` and tcpNoDelay, and Autobahn copies the rest.
    """
    if not shortcuts().options_on_class:
        return type(name, (base,), {"tcpNoDelay": factory.tcpNoDelay, **attributes})
    options = {
        attr: staticmethod(value) if inspect.isfunction(value) else value
        for attr in base.CONFIG_ATTRS  # type: ignore[attr-defined]
        for value in (getattr(factory, attr),)
    }
    return type(name, (base,), {**options, "CONFIG_ATTRS": (), **attributes})


def drop_answered(protocol: Any) -> None:
    """
    Close a connection chatd has answered itself (a refusal, the page): the
    answer goes first.  Marked clean, so that Autobahn does not log a
    warning for each (a flood of refusals must not become a flood of log
    lines); without the shortcut, it may.
    """
    if shortcuts().clean_drops:
        protocol.wasClean = True
    protocol.dropConnection(abort=False)


# -- Autobahn: the opening handshake of a plain request ------------------------
#
# Autobahn's processHandshake parses a request three ways (its strict header
# parser, urlparse, parse_qs), checks it, and runs onConnect through a
# Deferred, a visible share of what a connection costs.  The common
# request (a whole one in one read, no extension, subprotocol, token or
# repeated header, a plain path) is checked here as strictly, and then
# Autobahn's own onConnect and succeedHandshake take over; anything else
# goes to Autobahn's parser untouched.

# A header line as Autobahn's parser accepts it, less obs-text (non-ASCII
# values go to Autobahn): a token, a colon, optional whitespace, VCHARs with
# inner spaces and tabs.
_HEADER = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*((?:[\x21-\x7e](?:[\x20-\x7e\t]*[\x21-\x7e])?)?)[ \t]*")
_KEY = re.compile(r"[A-Za-z0-9+/]{22}==")
#: Headers whose handling is left to Autobahn.
_AUTOBAHNS = frozenset({"sec-websocket-extensions", "sec-websocket-protocol", "authorization"})
_url_to_origin: Any = None


def _has_handshake_steps() -> bool:
    global _url_to_origin
    from autobahn.websocket import protocol as websocket_protocol

    _url_to_origin = websocket_protocol._url_to_origin
    return all(hasattr(WebSocketServerProtocol, name) for name in (
        "succeedHandshake", "failHandshake", "onConnect", "STATE_CONNECTING"))


def handshake(protocol: Any, data: bytes) -> bool:
    """
    Take the opening handshake in ``data`` if it is a plain one: True once
    it is answered (or refused); False, with nothing done, for Autobahn.
    """
    if (not shortcuts().handshake or protocol.data or protocol.logOctets or protocol.maxConnections
            or protocol.factory.externalPort or protocol.trustXForwardedFor
            or protocol.factory.allowedOrigins != ["*"]):
        return False
    end = data.find(b"\r\n\r\n")
    if end < 0 or end + 4 != len(data) or not data.isascii():
        return False
    status, *lines = data[:end].decode("ascii").split("\r\n")
    method, _, rest = status.partition(" ")
    uri, _, version = rest.partition(" ")
    if method != "GET" or version != "HTTP/1.1" or not uri.startswith("/") or any(c in uri for c in "?#; \t"):
        return False
    headers: dict[str, str] = {}
    for line in lines:
        match = _HEADER.fullmatch(line)
        if match is None:
            return False
        name = match.group(1).lower()
        if name in headers or name in _AUTOBAHNS:
            return False
        headers[name] = match.group(2)
    host = headers.get("host")
    key = headers.get("sec-websocket-key", "")
    if (host is None or headers.get("sec-websocket-version") != "13" or not _KEY.fullmatch(key)
            or "websocket" not in (u.strip().lower() for u in headers.get("upgrade", "").split(","))
            or "upgrade" not in (c.strip().lower() for c in headers.get("connection", "").split(","))):
        return False
    if ":" in host and not host.endswith("]"):
        host, _, port = host.rpartition(":")
        if not port.strip().isdigit():
            return False
    origin = headers.get("origin", "")
    if origin:
        try:
            _url_to_origin(origin)  # every origin is allowed ("*"), but it must be one
        except ValueError:
            return False
    protocol.trafficStats.preopenIncomingOctetsWireLevel += len(data)
    protocol.http_request_data = data
    protocol.http_status_line = status
    protocol.http_headers = headers
    protocol.http_request_uri = protocol.http_request_path = uri
    protocol.http_request_params = {}
    protocol.http_request_host = host
    protocol.websocket_version = 13
    protocol.websocket_protocols = []
    protocol.websocket_origin = origin
    protocol.websocket_extensions = []
    protocol._wskey = key
    try:
        accepted = protocol.onConnect(ConnectionRequest(
            protocol.peer, headers, host, uri, {}, 13, origin, [], []))
    except ConnectionDeny as deny:
        protocol.failHandshake(deny.reason, deny.code)
        return True
    protocol.succeedHandshake(accepted)
    return True


# -- hiredis: is more buffered behind this reply? ------------------------------


def _has_hiredis_reader() -> bool:
    import hiredis

    return hasattr(hiredis.Reader(), "has_data")


def more_buffered(protocol: Any) -> bool:
    """
    Whether txredisapi's hiredis reader holds more of what Redis sent after
    the reply being handled.  True when that cannot be known: the caller then
    takes the busy path, which is always correct.
    """
    if not shortcuts().redis_alone:
        return True
    reader = getattr(protocol, "_reader", None)
    return reader is None or bool(reader.has_data())


# -- txredisapi: a command as it was encoded; the sentinels' answer --------------


def _has_reply_queue() -> bool:
    import txredisapi

    protocol = txredisapi.RedisProtocol()
    return hasattr(protocol, "replyQueue") and hasattr(protocol.replyQueue, "get") and hasattr(
        protocol, "handle_reply")


def redis_command(protocol: Any, parts: list[bytes], encode: Callable[[list[bytes]], bytes]) -> Any:
    """
    Send one command (``parts``, its words as bytes) on a txredisapi
    connection: with the shortcut, written as ``encode`` makes it in one go
    and answered from txredisapi's queue of replies (``execute_command``
    encodes every argument again on each call, a measurable share of a
    cluster's cost per message); else through ``execute_command``.
    """
    if shortcuts().redis_send:
        protocol.transport.write(encode(parts))
        return protocol.replyQueue.get().addCallback(protocol.handle_reply)
    return protocol.execute_command(*parts)


def _sentinel_has_discovery_timeout() -> bool:
    import txredisapi

    return isinstance(getattr(txredisapi.Sentinel, "discovery_timeout", None), (int, float))


def sentinel_discovery_timeout(sentinel: Any, seconds: float) -> None:
    """
    While a failover is under way no sentinel names a master, and
    txredisapi waits its discovery timeout for one before it asks again:
    the sentinels themselves answer at once, so ``seconds`` will do.
    """
    if shortcuts().sentinel_timeout:
        sentinel.discovery_timeout = seconds


# -- twistd: exit 0 after a SIGTERM drain ---------------------------------------


def _reactor_has_exit_signal() -> bool:
    from twisted.internet.base import ReactorBase

    return hasattr(ReactorBase, "_exitSignal")


def exit_zero_on_sigterm(reactor: Any) -> None:
    """
    Make a SIGTERM an orderly stop that exits 0 (twistd otherwise re-raises
    the signal once the reactor has stopped, and dies of it: status 143).
    With the shortcut, :func:`forget_sigterm` clears the signal twistd
    remembers; without it, chatd's own SIGTERM handler stops the reactor,
    so twistd remembers no signal.
    """
    if shortcuts().forget_sigterm or not hasattr(reactor, "callWhenRunning"):
        return

    def install() -> None:
        signal.signal(signal.SIGTERM, lambda signum, frame: reactor.callFromThread(reactor.stop))

    reactor.callWhenRunning(install)


def forget_sigterm(reactor: Any) -> None:
    """At the end of a drain: a SIGTERM that caused it is not re-raised."""
    if shortcuts().forget_sigterm and getattr(reactor, "_exitSignal", None) == signal.SIGTERM:
        reactor._exitSignal = None


# -- Twisted's endpoint parser: the address of a tcp: listener -------------------


def _endpoint_keeps_address() -> bool:
    from twisted.internet.endpoints import TCP4ServerEndpoint

    endpoint = TCP4ServerEndpoint(object(), 0, 7, "127.0.0.1")  # type: ignore[arg-type]
    return (endpoint._interface, endpoint._port, endpoint._backlog) == ("127.0.0.1", 0, 7)  # type: ignore[attr-defined]


def tcp_address(endpoint: Any) -> Optional[tuple[str, int, int]]:
    """(interface, port, backlog) of a parsed TCP server endpoint; None
    when they cannot be read (the caller then shares one socket)."""
    if not shortcuts().tcp_address:
        return None
    return endpoint._interface, endpoint._port, endpoint._backlog
