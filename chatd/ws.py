"""
The Autobahn adapter: one WebSocket connection per client, translating frames
to core calls and core deliveries to frames.
"""

from __future__ import annotations

import inspect
import itertools
import zlib
from collections import deque
from typing import Any, Callable, Optional, Sequence

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer, IReactorTime, ISSLTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatd import __version__, codec, fastpath, web
from chatd.config import normalise_origin
from chatd.core import ChatCore, Client, CoreEvents, Limits, Room
from chatd.errors import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TRY_AGAIN_LATER,
    ChatError,
    NotInRoom,
    Rejected,
    SinkGone,
    Unavailable,
)
from chatd.frames import FIN_TEXT_DEFLATED, client_text_messages, text_frame
from chatd.logs import HotPathLogger
from chatd.metrics import Metrics
from chatd.moderation import (
    PASS,
    Moderation,
    Reject,
    Rewrite,
    Submission,
    Verdict,
    build,
)
from chatd.ratelimit import TokenBucket
from chatd.settings import Settings

BINARY_NOT_SUPPORTED = "Binary frames are not supported; send JSON as text frames"
INTERNAL_ERROR = "Internal server error"
TOO_SLOW = "Outgoing buffer limit exceeded: client too slow"
AWAITING_MODERATION = "Too many messages awaiting moderation"
TOO_MANY_WAITING = "Too many messages awaiting replies"
#: Commands a connection may send while one of its messages is reviewed.
MAX_WAITING = 100
#: Addresses whose new-connection rate is tracked at once (see _prune_buckets).
MAX_TRACKED_ADDRESSES = 10_000
# Handshake failures by HTTP status, for the metrics.
_HANDSHAKE_REASONS = {426: "no_upgrade", 403: "origin", 503: "limit"}


# One logger for the per-connection events: a class-level Logger makes a new
# bound Logger on every access.
_connections_log = HotPathLogger(namespace="chatd.ws.ChatProtocol")


@implementer(IPushProducer)
class ChatProtocol(WebSocketServerProtocol):
    """
    One client.  It is the core's sink for this client, and the transport's
    push producer, which is how it learns that the client stopped reading.
    """

    _log = Logger()
    factory: "ChatFactory"

    _client: Optional[Client] = None
    # True once this connection is being closed for being too slow: nothing
    # more is queued for it and the core no longer knows it.
    _gone = False
    # Whether the transport's buffer is over its high-water mark, and how many
    # bytes were queued since it went over.
    _paused = False
    _queued = 0
    # The address this connection is counted under for the per-IP limit.
    counted_ip: Optional[str] = None
    # While a message of this client's is with a moderator: what the client
    # sent since, to be handled in order afterwards.
    _waiting: Optional[deque[tuple[bytes, bool]]] = None
    # A reply that comes later (a moderator, Redis) is awaited before the
    # client's next command is handled...
    _awaiting_reply = False
    # ...except chat messages to a cluster, which are pipelined: Redis runs
    # one node's scripts in order, so order holds without waiting.  How many
    # are in flight:
    _outstanding = 0
    # Frames for this client gathered during the current reactor iteration
    # (one, or a list of them), sent together right after it (see flush)...
    _out: "bytes | list[bytes] | None" = None
    # ...by the factory, which flushes the connections in this list (its
    # own, set on each factory's protocol class).
    _to_flush: list["ChatProtocol"] = []
    # Whether the transport is a plain socket that flush may send() on.
    _direct = False
    # The largest message read without Autobahn's frame parser (see
    # dataReceived); set on each factory's protocol class (0: none).
    _quick_limit = 0
    # Whether this connection reads frames without Autobahn's parser.
    _quick = False

    # -- Twisted / Autobahn callbacks -------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self._direct = fastpath.sends_directly(self.transport)
        # Limits are checked at accept time, so connections that never send
        # a request (a handshake flood) cost at most their per-IP quota.
        refusal = self.factory.admit(self)
        if refusal is not None:
            self.factory.metrics.handshake_failures.labels("limit").inc()
            self.sendHttpErrorResponse(503, refusal, [("Retry-After", "5")])
            # A refusal chatd chose: counted, not logged per connection (a
            # flood must not become a flood of log lines), so Autobahn's
            # failHandshake, which logs twice, is not used here.
            self.wasClean = True
            self.dropConnection(abort=False)

    def connectionLost(self, reason: Any = None) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.factory.connection_gone(self)

    def dataReceived(self, data: bytes) -> None:
        # Nearly every client message is one masked text frame, and most
        # reads hold whole ones: those are read here (chatd.frames), and
        # anything else, or whatever follows it, goes to Autobahn's parser.
        # Latency at a low rate is mostly the Python run per message before
        # the first send, and Autobahn's parser is a good share of it.
        if self._quick and self.state == WebSocketProtocol.STATE_OPEN and fastpath.parser_idle(self):
            messages, used = client_text_messages(data, self._quick_limit)
            if messages:
                fastpath.traffic_seen(self)
                if used == len(data) and len(messages) == 1:
                    # A read that holds one message (the usual case at chat
                    # rates): what it broadcasts goes to each member as it
                    # is fanned out, without waiting for the end of the
                    # iteration, unless something is gathered already.
                    self.factory.send_now(self.onMessage, messages[0], False)
                    return
                # Several messages: each room's broadcasts of the read reach
                # each member in one delivery (ChatCore.gather).
                core = self.factory.core
                core.gather()
                try:
                    for payload in messages:
                        self.onMessage(payload, False)
                finally:
                    self._release(core)
                if used == len(data):
                    return
                data = data[used:]
        fastpath.parse(self, data)

    def onConnect(self, request: ConnectionRequest) -> None:
        # Autobahn answers any exception but ConnectionDeny with its text in
        # the HTTP response, so nothing else may escape from here.
        try:
            allowed = self.factory.allowed_origins
            origin = request.origin
            # Autobahn reports a missing Origin header as "": not a browser.
            if allowed and origin and normalise_origin(origin) not in allowed and not self._same_origin(origin):
                raise ConnectionDeny(403, "Origin not allowed")
        except ConnectionDeny:
            raise
        except Exception:
            self._log.failure("Unexpected error checking a handshake")
            raise ConnectionDeny(500, "Internal server error") from None
        return None

    def _same_origin(self, origin: str) -> bool:
        """A page chatd served itself (the web client) may always connect back."""
        host = self.http_headers.get("host", "")
        scheme = "https" if ISSLTransport.providedBy(self.transport) else "http"
        return bool(host) and normalise_origin(origin) == normalise_origin(f"{scheme}://{host}")

    def failHandshake(
        self, reason: str, code: int = 400, responseHeaders: Optional[list[tuple[str, str]]] = None
    ) -> None:
        if code == 426:
            # A plain GET (no Upgrade): the web client, on the same port and
            # path as the WebSocket (Autobahn refuses other methods first).
            self._serve_page()
            return
        self.factory.metrics.handshake_failures.labels(_HANDSHAKE_REASONS.get(code, "bad_request")).inc()
        super().failHandshake(reason, code, responseHeaders)

    def _serve_page(self) -> None:
        page = web.PAGES.get(self.http_request_path)
        if page is None:
            self.factory.metrics.handshake_failures.labels("no_upgrade").inc()
            self.sendHttpErrorResponse(404, "Not Found")
        else:
            self.sendData(page)
        self.wasClean = True
        self.dropConnection(abort=False)

    def onOpenHandshakeTimeout(self) -> None:
        self.factory.metrics.handshake_failures.labels("timeout").inc()
        super().onOpenHandshakeTimeout()

    def sendHttpErrorResponse(
        self, code: int, reason: str, responseHeaders: Optional[list[tuple[str, str]]] = None
    ) -> None:
        # Autobahn's own error response has a status line only; give plain
        # HTTP clients (curl, a browser, a health checker) a complete one.
        body = (
            f"{code} {reason}\n\nThis is a chatd WebSocket endpoint: connect with a "
            "WebSocket client (ws://...).\n"
        ).encode("utf-8")
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
        if code == 426:
            headers.append(("Upgrade", "websocket"))
        headers.extend(responseHeaders or ())
        head = f"HTTP/1.1 {code} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
        self.sendData(head.encode("utf-8") + b"\r\n" + body)

    def onOpen(self) -> None:
        self.opened()
        registered = self.factory.chat.connect(self)
        if not isinstance(registered, Deferred):
            self._welcome(registered)
            return
        # In a cluster the ID is checked in Redis first; anything the client
        # sends meanwhile waits its turn.
        self._wait_for(registered.addCallbacks(self._welcome, self._not_registered))

    def opened(self) -> None:
        """The handshake is done: learn when the client stops reading, and
        read its frames quickly where that is safe."""
        self.transport.registerProducer(self, True)
        self._quick = self._quick_limit > 0 and fastpath.parser_state_known(self)

    def _welcome(self, client: Client) -> None:
        if self.state != WebSocketProtocol.STATE_OPEN:
            self.factory.chat.disconnect(client, self.factory.clock.seconds())
            return
        self._client = client
        _connections_log.info(
            "{client_id} connected from {peer}",
            event="connect", client_id=client.client_id, peer=self.peer,
        )
        self._send_reply(codec.encode(codec.welcome(client.client_id)))

    def _not_registered(self, failure: Failure) -> None:
        if not failure.check(Unavailable):
            self._log.failure("Registering a client failed", failure)
        self.close(CLOSE_TRY_AGAIN_LATER, Unavailable().message)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        # Nothing more is done for a connection that is closing.
        if self._gone or self.state != WebSocketProtocol.STATE_OPEN:
            return
        self.factory.metrics.bytes_received.inc(len(payload))
        if self._waiting is not None:
            # An earlier message is with a moderator, or with Redis: keep the
            # client's order.
            if len(self._waiting) >= MAX_WAITING:
                reason = AWAITING_MODERATION if self.factory.moderation else TOO_MANY_WAITING
                self.close(CLOSE_POLICY_VIOLATION, reason)
                return
            self._waiting.append((payload, isBinary))
            return
        client = self._client
        if client is not None:
            self._process(client, payload, isBinary)

    def _process(self, client: Client, payload: bytes, isBinary: bool) -> None:
        metrics = self.factory.metrics
        if isBinary:
            metrics.errors.labels("binary").inc()
            self._send_reply(codec.encode(codec.error(BINARY_NOT_SUPPORTED)))
            return
        try:
            command = codec.decode(payload)
            if isinstance(command, codec.Message):
                later = self._review(client, command.body)
                if later is not None and not self.factory.moderation:
                    self._pipeline(later)
                    return
            elif self._outstanding:
                # Any other command waits for the messages before it.
                self._waiting = deque([(payload, isBinary)])
                return
            else:
                self._release(self.factory.core, stop=False)  # what this read broadcast goes first
                later = self._reply(
                    client, self.factory.chat.handle(client, command, self.factory.clock.seconds()))
        except ChatError as e:
            self._send_reply(codec.encode(self._rejected(client, e)))
            return
        except Exception:
            self._send_reply(codec.encode(self._internal_error(client)))
            return
        if later is not None:
            self._wait_for(later)

    def _release(self, core: ChatCore, stop: bool = True) -> None:
        """Fan out the broadcasts gathered from this read (and, with
        ``stop``, gather no more).  Their replies are sent already: a
        failure here is logged, not answered."""
        if not core.gathering:
            return
        metrics = self.factory.metrics
        started = metrics.timer()
        try:
            if stop:
                fanned_out = core.release(self.factory.clock.seconds())
            else:
                fanned_out = core.flush(self.factory.clock.seconds())
        except Exception:
            self._log.failure("Unexpected error fanning out a read's messages")
            return
        if fanned_out:
            metrics.fanout_seconds.observe(metrics.timer() - started)

    def _wait_for(self, later: "Deferred[Any]") -> None:
        """The answer comes later: what the client sends meanwhile waits."""
        self._waiting = deque()
        self._awaiting_reply = True
        later.addBoth(self._replied)

    def _replied(self, _: Any) -> None:
        self._awaiting_reply = False
        self._resume()

    def _pipeline(self, published: "Deferred[None]") -> None:
        """A chat message on its way through Redis; the next may follow at once."""
        self._outstanding += 1
        if self._outstanding >= MAX_WAITING and self._waiting is None:
            self._waiting = deque()  # enough in flight: the rest waits its turn
        published.addBoth(self._published)

    def _published(self, _: Any) -> None:
        self._outstanding -= 1
        if self._waiting is not None and not self._awaiting_reply and self._outstanding < MAX_WAITING:
            self._resume()

    def _reply(self, client: Client, result: Any) -> "Optional[Deferred[None]]":
        """Send ``result`` (a reply, or a Deferred of one) once it is there."""
        if not isinstance(result, Deferred):
            self._send_reply(codec.encode(result))
            return None
        return result.addBoth(self._answer, client)

    def _answer(self, result: Any, client: Client) -> None:
        """A reply that came later (or the failure in its place)."""
        if isinstance(result, Failure):
            if result.check(ChatError):
                result = self._rejected(client, result.value)
            else:
                result = self._internal_error(client, result)
        if self._client is client:
            self._send_reply(codec.encode(result))
            self.factory.chat.replied(client)

    def _rejected(self, client: Client, error: ChatError) -> dict[str, Any]:
        self.factory.metrics.errors.labels(error.kind).inc()
        # The kind of mistake, never the content.
        self._log.info(
            "{client_id} sent a rejected command: {kind}",
            event="rejected", client_id=client.client_id, kind=error.kind,
        )
        return codec.error(error.message, **error.extra)

    def _internal_error(self, client: Client, failure: Optional[Failure] = None) -> dict[str, Any]:
        self._log.failure(
            "Unexpected error handling a message from {client_id}", failure, client_id=client.client_id
        )
        self.factory.metrics.errors.labels("internal").inc()
        return codec.error(INTERNAL_ERROR)

    # -- moderation ----------------------------------------------------------

    def _review(self, client: Client, body: Any) -> "Optional[Deferred[None]]":
        """
        A chat message: rate-limit it now, then broadcast it (or not) once the
        moderators, if any, have spoken.  A Deferred if the reply comes later.
        """
        if client.room is None:
            raise NotInRoom("You must join a room first")
        self.factory.chat.check_message_rate(client, self.factory.clock.seconds())
        moderation = self.factory.moderation
        if not moderation:
            return self._publish(client, body, PASS)
        submission = Submission(client.client_id, client.nick, client.room.room_id, body)
        d = moderation.review(submission)
        if d.called:
            # Every moderator answered at once: no waiting, no reordering.
            verdicts: list[Verdict] = []
            d.addCallback(verdicts.append)
            return self._publish(client, body, verdicts[0])
        d.addCallback(lambda verdict: self._publish(client, body, verdict))
        d.addErrback(lambda failure: self._log.failure("Moderation broke", failure))
        return d

    def _publish(self, client: Client, body: Any, verdict: Verdict) -> "Optional[Deferred[None]]":
        if self._client is not client or self.state != WebSocketProtocol.STATE_OPEN:
            return None  # gone while its message was reviewed
        try:
            if isinstance(verdict, Reject):
                raise Rejected()
            if isinstance(verdict, Rewrite):
                body = verdict.body
            metrics = self.factory.metrics
            started = metrics.timer()
            reply = self.factory.chat.publish(client, body, self.factory.clock.seconds())
            # In a cluster the fan-out comes later; a read's messages are
            # fanned out together, and timed so (_release).
            if not isinstance(reply, Deferred) and not self.factory.core.gathering:
                metrics.fanout_seconds.observe(metrics.timer() - started)
        except ChatError as e:
            reply = self._rejected(client, e)
        except Exception:
            reply = self._internal_error(client)
        return self._reply(client, reply)

    def _resume(self) -> None:
        """Handle, in order, what the client sent while it waited."""
        waiting, self._waiting = self._waiting, None
        while waiting:
            client = self._client
            if client is None or self.state != WebSocketProtocol.STATE_OPEN:
                return
            payload, isBinary = waiting.popleft()
            self._process(client, payload, isBinary)
            if self._waiting is not None:
                # Another message went to review: the rest waits behind it.
                self._waiting.extend(waiting)
                return

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        # Runs for every connection, including those whose handshake never
        # completed (then there is no client), and only once per connection.
        client, self._client = self._client, None
        if client is not None:
            self.factory.chat.disconnect(client, self.factory.clock.seconds())
            _connections_log.info(
                "{client_id} disconnected (code {code}, {reason})",
                event="disconnect", client_id=client.client_id, code=code,
                reason=reason, clean=wasClean,
            )

    # -- the core's sink ---------------------------------------------------

    def deliver(self, frame: bytes) -> None:
        # Once a close frame is out, nothing may follow it on the wire.
        if self._gone or self.state != WebSocketProtocol.STATE_OPEN:
            raise SinkGone()
        if self._paused and not self._account(len(frame)):
            raise SinkGone()
        if self.factory.sending_now and self._out is None:
            # A lone message (ChatFactory.send_now) goes out to each member
            # as it is fanned out.  Otherwise (under load: several messages in
            # a read, or in an iteration; from Redis) frames wait for the end
            # of the iteration and leave together, several to a send().
            self._write(frame)
            return
        self._queue(frame)

    def close(self, code: int, reason: str) -> None:
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123])
        elif self.state != WebSocketProtocol.STATE_CLOSED:
            self.dropConnection(abort=True)

    # -- the transport's push producer ------------------------------------

    def pauseProducing(self) -> None:
        # Called when the transport's buffer passes its high-water mark, and
        # again on every write while it stays there.
        self._paused = True

    def resumeProducing(self) -> None:
        # Called once the buffer has drained completely.
        self._paused = False
        self._queued = 0

    def stopProducing(self) -> None:
        self._paused = True

    # -- internals ---------------------------------------------------------

    def _send_reply(self, payload: bytes) -> None:
        if self._gone or self.state != WebSocketProtocol.STATE_OPEN:
            return
        if self._paused and not self._account(len(payload)):
            return
        self.factory.metrics.bytes_sent.inc(len(payload))
        self._queue(text_frame(payload))

    def _queue(self, data: bytes) -> None:
        # Once per member of a room per broadcast: kept to a few operations,
        # and no list until a second frame comes in the same iteration.
        out = self._out
        if out is None:
            self._out = data
            to_flush = self._to_flush
            if not to_flush:
                self.factory.flush_soon()
            to_flush.append(self)
        elif out.__class__ is list:
            out.append(data)
        else:
            self._out = [out, data]

    def flush(self) -> None:
        """Send the frames gathered for this client, in one write."""
        out = self._out
        if out is None:
            return
        self._out = None
        self._write(out if out.__class__ is bytes else b"".join(out))

    def _write(self, data: bytes) -> None:
        """Write now (only when nothing of this client's is gathered)."""
        if self._direct:
            fastpath.write(self.transport, data)
        else:
            self.transport.write(data)

    def sendData(self, data: bytes, sync: bool = False, chopsize: Optional[int] = None) -> None:
        # Everything Autobahn writes (handshake, close, ping, pong) goes after
        # the frames already gathered, never before them.
        if self._out:
            self.flush()
        if self._direct and self.state == WebSocketProtocol.STATE_CONNECTING and not (sync or chopsize):
            # The handshake response: gathered, so that it and the welcome
            # that follows leave in one send() at the end of this iteration.
            self._queue(data)
            return
        super().sendData(data, sync, chopsize)

    def dropConnection(self, abort: bool = False) -> None:
        # A response still gathered (a refused handshake) goes out first.
        if self._out and not abort:
            self.flush()
        super().dropConnection(abort)

    def _account(self, size: int) -> bool:
        """
        Count bytes queued while the client is not reading; past the limit,
        start closing it and answer False.
        """
        self._queued += size
        if self._queued <= self.factory.settings.max_outgoing_buffer:
            return True
        self._gone = True
        self.factory.metrics.slow_client_drops.inc()
        client_id = self._client.client_id if self._client else None
        self._log.info(
            "Dropping slow client {client_id}: {queued} bytes queued while it was "
            "not reading (limit {limit})",
            event="slow_client_drop", client_id=client_id,
            queued=self._queued,
            limit=self.factory.settings.max_outgoing_buffer,
        )
        # The close frame waits behind what is already queued: a client that
        # is merely slow reads it; one that never reads is aborted when the
        # close handshake times out.  Either way nothing more is queued.
        self.close(CLOSE_POLICY_VIOLATION, TOO_SLOW)
        return False

    def go_away(self) -> None:
        """Close for server shutdown."""
        self.close(CLOSE_GOING_AWAY, "Server shutting down")


class Broadcast:
    """
    One broadcast's frames with ``--permessage-deflate``: plain, and (made
    on first use, once for every member that negotiated permessage-deflate)
    compressed.  Each broadcast is compressed on its own, with a fresh
    compressor and the default window, so it refers to nothing sent before:
    the same bytes are right for every such member, whether or not its
    decompressor keeps its window between messages (RFC 7692, 7.2.3).
    """

    __slots__ = ("payload", "plain", "_deflated")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.plain = text_frame(payload)
        self._deflated: Optional[bytes] = None

    @property
    def deflated(self) -> bytes:
        if self._deflated is None:
            compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
            data = compressor.compress(self.payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
            # RFC 7692: the empty block the sync flush ends with is left off,
            # and RSV1 (0x40) marks the message as compressed.
            self._deflated = text_frame(
                data[:-4] if data.endswith(b"\x00\x00\xff\xff") else data, FIN_TEXT_DEFLATED)
        return self._deflated


class Broadcasts:
    """Several broadcasts that go together (a batch from Redis), with
    ``--permessage-deflate``: their plain frames, and compressed ones."""

    __slots__ = ("parts", "plain", "_deflated")

    def __init__(self, parts: list[Broadcast]) -> None:
        self.parts = parts
        self.plain = b"".join(part.plain for part in parts)
        self._deflated: Optional[bytes] = None

    @property
    def deflated(self) -> bytes:
        if self._deflated is None:
            self._deflated = b"".join(part.deflated for part in self.parts)
        return self._deflated


class DeflateChatProtocol(ChatProtocol):
    """A connection of a factory with ``--permessage-deflate``: broadcasts
    go compressed to those that negotiated it."""

    def deliver(self, frame: "Broadcast | Broadcasts") -> None:  # type: ignore[override]
        super().deliver(frame.deflated if self.websocket_extensions_in_use else frame.plain)


def accept_deflate(max_message_size: int) -> Any:
    """Autobahn's perMessageCompressionAccept for ``--permessage-deflate``."""

    def accept(offers: list[Any]) -> Any:
        for offer in offers:
            # A client that limits the server's window below the default
            # could not read the shared compressed frames: no compression.
            if isinstance(offer, PerMessageDeflateOffer) and offer.request_max_window_bits in (0, 15):
                return PerMessageDeflateOfferAccept(
                    offer, no_context_takeover=True, max_message_size=max_message_size)
        return None

    return accept


def _at_least(seconds: float) -> float:
    """
    The value to give Autobahn for a timeout of at least ``seconds``.

    Autobahn runs its timeouts on txaio's batched timer, which truncates the
    deadline to a whole second, so a timeout of N fires after anywhere
    between N-1 and N seconds (0.5 may fire at once).  Asking for N+1 makes
    it fire between N and N+1: never before the configured time.
    """
    return seconds + 1 if seconds > 0 else 0


class _Events(CoreEvents):
    """What the core reports, as structured log events and metrics."""

    _log = Logger(namespace="chatd.rooms")

    def __init__(self, settings: Settings, metrics: Metrics, message_log: Optional[Any]) -> None:
        self._log_messages = settings.log_messages
        self._metrics = metrics
        self._message_log = message_log  # a chatd.messagelog.SQLiteLog, or None

    def room_created(self, room: Room, client: Client) -> None:
        self._log.info(
            "{client_id} created room {room_id}",
            event="room_created", room_id=room.room_id, client_id=client.client_id,
        )

    def room_deleted(self, room: Room) -> None:
        self._log.info("room {room_id} deleted", event="room_deleted", room_id=room.room_id)

    def delivered(self, copies: int, size: int) -> None:
        self._metrics.deliveries.inc(copies)
        self._metrics.bytes_sent.inc(size)

    def message_sent(
        self, room: Room, sender: Client, message: dict[str, Any], recipients: int, size: int
    ) -> None:
        metrics = self._metrics
        metrics.messages_received.inc()
        if recipients:
            self.delivered(recipients, size * recipients)
        if self._message_log is not None:
            self._message_log.record(room.room_id, room.name, message)
        if self._log_messages:
            self._log.info(
                "{client_id} in {room_id}: {body!r}",
                event="message", client_id=sender.client_id, room_id=room.room_id,
                body=message["body"], message_id=message["id"], recipients=recipients,
            )


class ChatFactory(WebSocketServerFactory):
    """
    Owns the chat state (a :class:`ChatCore`) and every connection to it.
    """

    protocol = ChatProtocol
    _log = Logger()

    def __init__(
        self,
        settings: Settings,
        clock: IReactorTime,
        reactor: Any = None,
        metrics: Optional[Metrics] = None,
        message_log: Optional[Any] = None,
        moderators: Optional[Sequence[Any]] = None,
    ) -> None:
        super().__init__(server=f"chatd/{__version__}", reactor=reactor)
        fastpath.quiet_autobahn_debug()
        self.settings = settings
        self.clock = clock
        self.metrics = metrics if metrics is not None else Metrics()
        self.events = _Events(settings, self.metrics, message_log)
        self.core = ChatCore(
            # Each broadcast is framed once, whatever the number of recipients,
            # by the same framer as replies (with --permessage-deflate, once
            # plain and once compressed); a batch from Redis is joined into
            # one delivery per member.
            prepare=Broadcast if settings.permessage_deflate else text_frame,
            join=Broadcasts if settings.permessage_deflate else b"".join,
            on_sink_error=self._sink_error,
            events=self.events,
            limits=Limits(
                messages_per_second=settings.rate_messages,
                messages_burst=settings.rate_messages_burst,
                creates_per_minute=settings.rate_creates,
                creates_burst=settings.rate_creates_burst,
                history_size=settings.history_size,
                history_bytes=settings.history_bytes,
            ),
        )
        # What the connections talk to: the core itself, or in a cluster a
        # chatd.backplane.cluster.ClusterChat over it (use_cluster).
        self.chat: Any = self.core
        # New connections per IP address, as token buckets; a full bucket is
        # the same as none, so those are forgotten (see _prune_buckets).
        self._connect_buckets: dict[str, TokenBucket] = {}
        self.metrics.watch(self._gauges)
        # Made already by twistd chatd (tap), or here for a factory on its own.
        self.use_moderators(
            list(moderators) if moderators is not None else [build(spec) for spec in settings.moderators])
        self.connections: set[ChatProtocol] = set()
        self._to_flush: list[ChatProtocol] = []
        # True while a lone message is handled: its broadcast is sent as it
        # is fanned out instead of gathered (ChatProtocol.deliver).
        self.sending_now = False
        self._per_ip: dict[str, int] = {}
        self.allowed_origins = frozenset(settings.allowed_origins)
        self._drained: Optional[Deferred[None]] = None
        # Autobahn leaves every limit unlimited; each is set here on purpose.
        self.setProtocolOptions(
            webStatus=False,  # a plain HTTP GET gets "426 Upgrade Required"
            utf8validateIncoming=True,  # invalid UTF-8: close 1007
            requireMaskedClientFrames=True,
            maskServerFrames=False,
            maxFramePayloadSize=settings.max_message_size,
            maxMessagePayloadSize=settings.max_message_size,  # over it: close 1009
            autoFragmentSize=0,
            failByDrop=False,  # protocol errors get a close frame with a code
            echoCloseCodeReason=False,
            openHandshakeTimeout=_at_least(settings.handshake_timeout),
            closeHandshakeTimeout=_at_least(settings.close_timeout),
            tcpNoDelay=True,
            autoPingInterval=settings.ping_interval,
            autoPingTimeout=_at_least(settings.ping_timeout),
            autoPingSize=12,  # the minimum Autobahn allows
            serveFlashSocketPolicy=False,
            maxConnections=0,  # chatd counts connections itself (admit)
            # chatd checks origins itself (onConnect); Autobahn's default of
            # refusing "null" would apply even with no --allowed-origin.
            allowedOrigins=["*"],
            allowNullOrigin=True,
            trustXForwardedFor=0,
        )
        if settings.permessage_deflate:
            self.setProtocolOptions(perMessageCompressionAccept=accept_deflate(settings.max_message_size))
        # Autobahn copies every option from the factory onto each protocol
        # instance that lacks it, and class attributes count: a protocol class
        # of this factory's own carries them once, not once per connection.
        # It also makes tcpNoDelay take effect: Autobahn's connectionMade reads
        # it before that copy, and without it no socket had Nagle off (small
        # broadcasts waited for delayed ACKs).
        # With every option on the class, the copying loop (which also builds
        # a debug listing of them all, per connection) has nothing to do.
        # Function-valued options (perMessageCompressionAccept) are wrapped
        # so that they stay plain functions instead of becoming methods.
        options = {
            attr: staticmethod(value) if inspect.isfunction(value) else value
            for attr in ChatProtocol.CONFIG_ATTRS
            for value in (getattr(self, attr),)
        }
        base = DeflateChatProtocol if settings.permessage_deflate else ChatProtocol
        # Messages larger than this go through Autobahn's parser and limits.
        quick_limit = min(settings.max_message_size, 0xFFFF) if fastpath.shortcuts().frames else 0
        self.protocol = type("ChatProtocol", (base,), {
            **options,
            "CONFIG_ATTRS": (),
            "_quick_limit": quick_limit,
            "_to_flush": self._to_flush,
        })

    def flush_soon(self) -> None:
        """Flush the connections in ``_to_flush`` right after this reactor
        iteration (called when the first one is added)."""
        self.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        batch = list(self._to_flush)
        # Cleared before sending: a connection queued meanwhile schedules
        # another flush.
        self._to_flush.clear()
        for protocol in batch:
            try:
                protocol.flush()
            except Exception:
                self._log.failure("Sending to a client failed")

    def use_moderators(self, moderators: list[Any]) -> None:
        """Review every chat message with these moderators, in order."""
        self.moderation = Moderation(
            moderators,
            self.clock,
            on_failure=self.settings.moderation_failure,
            timeout=self.settings.moderation_timeout,
            counted=lambda outcome: self.metrics.moderation.labels(outcome).inc(),
        )

    def use_cluster(self, chat: Any) -> None:
        """Serve a cluster node's chat (chatd.backplane.cluster) instead of the core alone."""
        self.chat = chat
        chat.send_now = self.send_now

    def send_now(self, function: Callable[..., Any], *args: Any) -> Any:
        """
        Run ``function``, sending what it delivers to each member at once
        instead of gathering it for the end of the reactor iteration (see
        ChatProtocol.deliver): for a lone message, when nothing else is
        gathered yet.
        """
        if self._to_flush:
            return function(*args)
        self.sending_now = True
        try:
            return function(*args)
        finally:
            self.sending_now = False

    def _gauges(self) -> dict[str, float]:
        rooms = self.core.rooms
        return {
            "connections": len(self.connections),
            "clients": len(self.core.clients),
            "rooms": len(rooms),
            "members": sum(len(room.members) for room in rooms.values()),
        }

    def _sink_error(self, client: Client, error: BaseException) -> None:
        self._log.failure(
            "Delivery to {client_id} failed; removed it",
            client_id=client.client_id,
        )

    def admit(self, protocol: ChatProtocol) -> Optional[str]:
        """
        Count a new connection; if it is over a limit, why (it is then not
        counted, and is refused).
        """
        limits = self.settings
        if limits.max_connections and len(self.connections) >= limits.max_connections:
            return "Too many connections"
        # Autobahn's peer string ("tcp4:1.2.3.4:5678", "tcp6:::1:5678", "unix:..."):
        # already made, and cheaper than another getPeer().
        kind, _, rest = (protocol.peer or "").partition(":")
        ip = rest.rpartition(":")[0] if kind in ("tcp4", "tcp6") else None
        if ip is not None:
            if ip.startswith("::ffff:") and "." in ip:
                ip = ip[7:]  # IPv4 through a dual-stack socket: one address, one count
            count = self._per_ip.get(ip, 0)
            if limits.max_connections_per_ip and count >= limits.max_connections_per_ip:
                return "Too many connections from your address"
            if limits.rate_connections_per_ip and not self._connect_allowed(ip):
                return "Too many new connections from your address"
            self._per_ip[ip] = count + 1
            protocol.counted_ip = ip
        self.connections.add(protocol)
        return None

    def _connect_allowed(self, ip: str) -> bool:
        now = self.clock.seconds()
        bucket = self._connect_buckets.get(ip)
        if bucket is None:
            if len(self._connect_buckets) >= MAX_TRACKED_ADDRESSES:
                self._prune_buckets(now)
            per_minute = self.settings.rate_connections_per_ip
            bucket = self._connect_buckets[ip] = TokenBucket(
                per_minute / 60, max(1.0, per_minute), now)
        return bucket.take(now) == 0.0

    def _prune_buckets(self, now: float) -> None:
        """
        Forget the addresses whose buckets have refilled (they are idle). If
        that is not enough (many addresses at once), forget the oldest tenth
        too, so that the scan runs at most once per that many new addresses
        rather than for every one.
        """
        buckets = self._connect_buckets
        for ip in [ip for ip, bucket in buckets.items() if bucket.full(now)]:
            del buckets[ip]
        excess = len(buckets) - MAX_TRACKED_ADDRESSES * 9 // 10
        for ip in list(itertools.islice(buckets, max(0, excess))):
            del buckets[ip]

    def connection_gone(self, protocol: ChatProtocol) -> None:
        ip = protocol.counted_ip
        if ip is not None and protocol in self.connections:
            remaining = self._per_ip[ip] - 1
            if remaining:
                self._per_ip[ip] = remaining
            else:
                del self._per_ip[ip]
        self.connections.discard(protocol)
        if not self.connections and self._drained is not None:
            drained, self._drained = self._drained, None
            drained.callback(None)

    def shutdown(self, timeout: float) -> "Deferred[None]":
        """
        Close every connection with 1001 (going away); the result fires once
        all are gone, aborting any still open after ``timeout`` seconds.
        """
        if not self.connections:
            return succeed(None)
        drained: Deferred[None] = Deferred()
        self._drained = drained
        for protocol in list(self.connections):
            protocol.go_away()
        straggle = self.clock.callLater(timeout, self._abort_all)

        def cancel(result: None) -> None:
            if straggle.active():
                straggle.cancel()
            return result

        drained.addBoth(cancel)
        return drained

    def _abort_all(self) -> None:
        for protocol in list(self.connections):
            self._log.info("Aborting a connection that did not close in time")
            protocol.transport.abortConnection()
