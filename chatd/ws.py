"""
The Autobahn adapter: one WebSocket connection per client.

A connection's jobs are mixed into :class:`ChatProtocol`: its conversation
(:mod:`chatd.conversation`: commands in, replies out, in order) and its
outbox (:mod:`chatd.delivery.outbox`: the frames out, gathered or at once).  What
is left here is what only a WebSocket server does: admission at accept
time, the origin check, the page and the error bodies for plain HTTP, the
quick frame reader, and the factory that wires a chat to its connections.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IProtocolNegotiationFactory,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatd import __version__, fastpath, web
from chatd.admission import Address, UntrustedProxy, address_of, parse_ip
from chatd.auth import IChatUser, Token
from chatd.chat import Chat
from chatd.codec import INVALID_TOKEN, MAX_TOKEN
from chatd.config import normalise_origin
from chatd.conversation import Conversation, token_refused
from chatd.errors import CLOSE_GOING_AWAY, CLOSE_POLICY_VIOLATION
from chatd.delivery.frames import Broadcast, Broadcasts, client_text_messages
from chatd.metrics import Metrics
from chatd.delivery.outbox import Outbox
from chatd.compose import Server, compose
from chatd.settings import Settings

TOO_SLOW = "Outgoing buffer limit exceeded: client too slow"
#: The most a client may send before its opening handshake is answered: the
#: request head (an 8 KiB token and a browser's headers fit several times),
#: and anything it sends early behind it.
MAX_REQUEST_HEAD = 16 * 1024
HEAD_TOO_LARGE = "Request Header Fields Too Large"
UNTRUSTED_PROXY = "PROXY protocol header from an address that is not a trusted proxy"
# Handshake failures by HTTP status, for the metrics.
_HANDSHAKE_REASONS = {426: "no_upgrade", 403: "origin", 503: "limit", 431: "too_large"}


@implementer(IPushProducer)
class ChatProtocol(Outbox, Conversation, WebSocketServerProtocol):
    """
    One client: its conversation with the chat, and its outbox, which is the
    core's sink for it and the transport's push producer.
    """

    _log = Logger()
    factory: "ChatFactory"

    # The peer's IP address when the connection was accepted, and the
    # address it is counted under for the per-address limits.
    accepted_from: Optional[Address] = None
    counted_ip: Optional[str] = None
    # The largest message read without Autobahn's frame parser (see
    # dataReceived); set on each factory's protocol class (0: none).
    _quick_limit = 0
    # Whether this connection reads frames without Autobahn's parser.
    _quick = False
    # Whether the transport is a plain socket that _write may send() on.
    _direct = False
    # Bytes read before the handshake was answered (an instance attribute
    # only until then).
    _head_size = 0

    # -- Twisted / Autobahn callbacks -------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.handshakes.begin(self)
        self._direct = fastpath.sends_directly(self.transport)
        # Limits are checked at accept time, so connections that never send
        # a request (a handshake flood) cost at most their per-IP quota.
        refusal = self.factory.admit(self)
        if refusal is not None:
            self._refuse(refusal)

    def _head_too_large(self) -> None:
        """HTTP 431 for a request head (or what follows it before the
        answer) over MAX_REQUEST_HEAD; nothing more of it is read."""
        self.factory.metrics.handshake_failures.labels("too_large").inc()
        self.sendHttpErrorResponse(431, HEAD_TOO_LARGE)
        fastpath.drop_answered(self)

    def _refuse(self, reason: str) -> None:
        """HTTP 503 for a connection over a limit."""
        self.factory.metrics.handshake_failures.labels("limit").inc()
        self.sendHttpErrorResponse(503, reason, [("Retry-After", "5")])
        # A refusal chatd chose: counted, not logged per connection (a flood
        # must not become a flood of log lines), so Autobahn's failHandshake,
        # which logs twice, is not used here.
        fastpath.drop_answered(self)

    def connectionLost(self, reason: Any = None) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.factory.connection_gone(self)

    def dataReceived(self, data: bytes) -> None:
        # Nearly every client message is one masked text frame, and most
        # reads hold whole ones: those are read here (chatd.delivery.frames), and
        # anything else, or whatever follows it, goes to Autobahn's parser.
        # Latency at a low rate is mostly the Python run per message before
        # the first send, and Autobahn's parser is a good share of it.
        if self.state == WebSocketProtocol.STATE_CONNECTING:
            # Autobahn buffers a request head until it ends, searching all of
            # it again on every read: refused as soon as it is too large.
            self._head_size += len(data)
            if self._head_size > MAX_REQUEST_HEAD:
                self._head_too_large()
                return
            if fastpath.handshake(self, data):
                return
        if self._quick and self.state == WebSocketProtocol.STATE_OPEN and fastpath.parser_idle(self):
            messages, used = client_text_messages(data, self._quick_limit)
            if messages:
                fastpath.traffic_seen(self)
                if used == len(data) and len(messages) == 1:
                    # A read that holds one message (the usual case at chat
                    # rates): what it broadcasts goes to each member as it
                    # is fanned out, unless something is gathered already.
                    self.flusher.send_now(self.onMessage, messages[0], False)
                    return
                # Several messages: each room's broadcasts of the read reach
                # each member in one delivery.
                self.factory.chat.reading(self._received_all, messages)
                if used == len(data):
                    return
                data = data[used:]
        fastpath.parse(self, data)

    def _received_all(self, messages: list[bytes]) -> None:
        for payload in messages:
            self.onMessage(payload, False)

    def onConnect(self, request: ConnectionRequest) -> None:
        # Autobahn answers any exception but ConnectionDeny with its text in
        # the HTTP response, so nothing else may escape from here.
        try:
            refusal = self.factory.identify(self, request.headers)
            if refusal is not None:
                raise ConnectionDeny(503, refusal)
            allowed = self.factory.allowed_origins
            origin = request.origin
            # Autobahn reports a missing Origin header as "": not a browser.
            if allowed and origin and normalise_origin(origin) not in allowed and not self._same_origin(origin):
                raise ConnectionDeny(403, "Origin not allowed")
            token = self._bearer_token(request.headers)
            if token is not None:
                return self._check_token(token)
        except ConnectionDeny:
            raise
        except Exception:
            self._log.failure("Unexpected error checking a handshake")
            raise ConnectionDeny(500, "Internal server error") from None
        return None

    def _bearer_token(self, headers: dict[str, str]) -> Optional[str]:
        """The token of an ``Authorization: Bearer`` header, when chatd checks
        tokens (another scheme is not chatd's: a proxy's, say)."""
        if self.factory.portal is None:
            return None
        scheme, _, token = headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        token = token.strip()
        if not token or len(token) > MAX_TOKEN:
            raise ConnectionDeny(401, INVALID_TOKEN)
        return token

    def _check_token(self, token: str) -> "Deferred[None]":
        """The handshake goes on once the token is good; 401 otherwise."""

        def good(result: Any) -> None:
            self._identity = result[1]

        def bad(failure: Failure) -> None:
            why = token_refused(failure, self.factory.metrics)
            if why is not None:
                raise ConnectionDeny(401, why)
            self._log.failure("Checking a token failed", failure)
            raise ConnectionDeny(500, "Internal server error")

        d = self.factory.portal.login(Token(token), None, IChatUser)
        return d.addCallbacks(good, bad)

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
        if code == 503:
            self._refuse(reason)  # a limit, as at accept time
            return
        if code == 405 and self._answer_head():
            return
        if code == 401:
            # A bad token: said once, with the scheme to use (RFC 6750).
            self.factory.metrics.handshake_failures.labels("auth").inc()
            self.sendHttpErrorResponse(401, reason, [("WWW-Authenticate", 'Bearer error="invalid_token"')])
            fastpath.drop_answered(self)
            return
        kind = "untrusted_proxy" if reason == UNTRUSTED_PROXY else _HANDSHAKE_REASONS.get(code, "bad_request")
        self.factory.metrics.handshake_failures.labels(kind).inc()
        super().failHandshake(reason, code, responseHeaders)

    def _answer_head(self) -> bool:
        """A HEAD request (an uptime monitor's): the page's headers, as a GET
        of the same path would have them, and no body.  False: not a HEAD."""
        method, _, rest = self.http_status_line.partition(" ")
        if method != "HEAD":
            return False
        page = self.factory.pages.get(rest.partition(" ")[0].partition("?")[0])
        response = page if page is not None else _http_error(404, "Not Found")
        self.sendData(response[:response.index(b"\r\n\r\n") + 4])
        fastpath.drop_answered(self)
        return True

    def _serve_page(self) -> None:
        page = self.factory.pages.get(self.http_request_path)
        if page is None:
            self.factory.metrics.handshake_failures.labels("no_upgrade").inc()
            self.sendHttpErrorResponse(404, "Not Found")
        else:
            self.sendData(page)
        fastpath.drop_answered(self)

    def onOpenHandshakeTimeout(self) -> None:
        self.factory.metrics.handshake_failures.labels("timeout").inc()
        super().onOpenHandshakeTimeout()

    def sendHttpErrorResponse(
        self, code: int, reason: str, responseHeaders: Optional[list[tuple[str, str]]] = None
    ) -> None:
        # Autobahn's own error response has a status line only; give plain
        # HTTP clients (curl, a browser, a health checker) a complete one.
        self.sendData(_http_error(code, reason, responseHeaders))

    def onOpen(self) -> None:
        self.opened()
        self.begin()

    def opened(self) -> None:
        """The handshake is done: learn when the client stops reading, and
        read its frames quickly where that is safe."""
        self.factory.handshakes.done(self)
        self.__dict__.pop("_head_size", None)
        self.transport.registerProducer(self, True)
        self._quick = self._quick_limit > 0 and fastpath.parser_state_known(self)

    # Autobahn's name for a message: the conversation's, without a call between.
    onMessage = Conversation.received

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        # Runs for every connection, including those whose handshake never
        # completed (then there is no client), and only once per connection.
        self.end(code, reason, wasClean)

    # -- what the conversation and the outbox need ----------------------------

    def chatting(self) -> bool:
        return not self._gone and self.state == WebSocketProtocol.STATE_OPEN

    def close(self, code: int, reason: str) -> None:
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123])
        elif self.state != WebSocketProtocol.STATE_CLOSED:
            self.dropConnection(abort=True)

    def too_slow(self, queued: int) -> None:
        self.factory.metrics.slow_client_drops.inc()
        client_id = self._client.client_id if self._client else None
        self._log.info(
            "Dropping slow client {client_id}: {queued} bytes queued while it was "
            "not reading (limit {limit})",
            event="slow_client_drop", client_id=client_id, queued=queued, limit=self.outbox_limit,
        )
        # The close frame waits behind what is already queued: a client that
        # is merely slow reads it; one that never reads is aborted when the
        # close handshake times out.  Either way nothing more is queued.
        self.close(CLOSE_POLICY_VIOLATION, TOO_SLOW)

    # -- backpressure: a client that does not read is not read either ----------

    def pauseProducing(self) -> None:
        # The transport holds more than its high-water mark for this client:
        # stop reading from it too, so that nothing it sends (pings, whose
        # pongs Autobahn writes at once; commands, whose replies queue) can
        # make the server write more.  The kernel's buffers then hold the
        # client back, and a pending ping timeout is no longer cancelled by
        # its traffic.
        super().pauseProducing()
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        super().resumeProducing()
        self.transport.resumeProducing()

    def _write(self, data: bytes) -> None:
        if self._direct:
            fastpath.write(self.transport, data)
        else:
            self.transport.write(data)

    def go_away(self) -> None:
        """Close for server shutdown."""
        self.close(CLOSE_GOING_AWAY, "Server shutting down")

    # -- Autobahn's own writes, in order with the outbox's -------------------

    def sendData(self, data: bytes, sync: bool = False, chopsize: Optional[int] = None) -> None:
        # Everything Autobahn writes (handshake, close, ping, pong) goes after
        # the frames already gathered, never before them, and counts against
        # the outgoing limit like every other byte for this client.
        if self._out:
            self.flush()
        if self._paused and not self._gone and not self._account(len(data)):
            return  # over the limit: too_slow has started the close instead
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


def _http_error(code: int, reason: str, extra: Optional[list[tuple[str, str]]] = None) -> bytes:
    """A complete HTTP error response, with a short text body."""
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
    headers.extend(extra or ())
    head = f"HTTP/1.1 {code} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode("utf-8") + b"\r\n" + body


class HandshakeTimer:
    """
    Drops connections that have not finished the opening handshake within
    ``timeout`` seconds (never sooner; at most a second later): one sweep a
    second over those still shaking hands, instead of a timer set and
    cancelled for each.
    """

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout
        self._deadlines: dict[ChatProtocol, float] = {}
        self._sweep = LoopingCall(self.sweep)
        self._sweep.clock = clock

    def begin(self, protocol: ChatProtocol) -> None:
        if self.timeout > 0:
            self._deadlines[protocol] = self.clock.seconds() + self.timeout

    def done(self, protocol: ChatProtocol) -> None:
        self._deadlines.pop(protocol, None)

    def sweep(self) -> None:
        now = self.clock.seconds()
        late = [protocol for protocol, deadline in self._deadlines.items() if deadline <= now]
        for protocol in late:
            del self._deadlines[protocol]
            protocol.onOpenHandshakeTimeout()  # drops it if it is still shaking hands

    def start(self) -> None:
        if self.timeout > 0 and not self._sweep.running:
            self._sweep.start(1.0, now=False)

    def stop(self) -> None:
        if self._sweep.running:
            self._sweep.stop()


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


@implementer(IProtocolNegotiationFactory)
class ChatFactory(WebSocketServerFactory):
    """
    Every WebSocket connection of the process, to the chat it is handed
    (a :class:`chatd.compose.Server`, built by :func:`chatd.compose.compose`).
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
        portal: Optional[Any] = None,
        server: Optional[Server] = None,
    ) -> None:
        super().__init__(server=f"chatd/{__version__}", reactor=reactor)
        fastpath.quiet_autobahn_debug()
        if server is None:  # a factory on its own (tests): this process's chat
            server = compose(settings, clock, reactor, metrics, message_log, moderators, portal, cluster=False)
        self.settings = settings
        self.clock = clock
        self.metrics = server.metrics
        self.events = server.events
        self.core = server.core
        self.chat: Chat = server.chat  # what the connections talk to
        self.flusher = server.flusher
        self.admission = server.admission
        self.moderation = server.moderation
        self.portal = server.portal  # checks tokens; None: no authentication
        self.metrics.watch(self._gauges)
        self.connections: set[ChatProtocol] = set()
        self.handshakes = HandshakeTimer(clock, settings.handshake_timeout)
        # Whether clients without a token may chat.
        self.guests_allowed = settings.guests == "allow"
        self.pages = web.pages(sign_in=self.portal is not None)
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
            # chatd times handshakes itself (HandshakeTimer): Autobahn's
            # timer would be set and cancelled for every connection.
            openHandshakeTimeout=0,
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
        base = DeflateChatProtocol if settings.permessage_deflate else ChatProtocol
        # Messages larger than this go through Autobahn's parser and limits.
        quick_limit = min(settings.max_message_size, 0xFFFF) if fastpath.shortcuts().frames else 0
        self.protocol = fastpath.options_on_class(
            self, base, "ChatProtocol",
            _quick_limit=quick_limit,
            flusher=self.flusher,
            _to_flush=self.flusher.to_flush,
            outbox_limit=settings.max_outgoing_buffer,
            _count_sent=staticmethod(self.metrics.bytes_sent.inc),
        )

    def acceptableProtocols(self) -> list[bytes]:
        """
        What chatd speaks when TLS negotiates it (ALPN): HTTP/1.1, whose
        Upgrade is the WebSocket handshake.  Browsers and curl offer ALPN,
        and a TLS listener that has no answer fails their handshake.
        """
        return [b"http/1.1"]

    def _gauges(self) -> dict[str, float]:
        return {"connections": len(self.connections), **self.chat.counts()}

    def admit(self, protocol: ChatProtocol) -> Optional[str]:
        """
        Count a new connection; if it is over a limit, why (it is then not
        counted, and is refused).
        """
        # Autobahn's peer string: already made, and cheaper than another getPeer().
        peer = protocol.accepted_from = address_of(protocol.peer or "")
        ip = self.admission.counted_at_accept(peer)
        refusal = self.admission.admit(ip, self.clock.seconds())
        if refusal is None:
            protocol.counted_ip = ip
            self.connections.add(protocol)
        return refusal

    def identify(self, protocol: ChatProtocol, headers: dict[str, str]) -> Optional[str]:
        """
        At the handshake: the client's address (a trusted proxy's forwarding
        header, or the PROXY protocol, may name it), counted under it if it
        is not yet; if that is over a limit, why.  ConnectionDeny (403) for
        a PROXY header from a peer that is no trusted proxy.
        """
        accepted = protocol.accepted_from
        if accepted is None:
            return None
        protocol.accepted_from = None  # not needed after the handshake: one object less per connection
        # A haproxy: listener's transport reports the PROXY header's source
        # from here on; before the header came, it reported the proxy.
        host = getattr(protocol.transport.getPeer(), "host", None)
        peer = (parse_ip(host) if isinstance(host, str) else None) or accepted
        admission = self.admission
        try:
            client, proxied, key = admission.counted_at_handshake(accepted, peer, headers)
        except UntrustedProxy:
            raise ConnectionDeny(403, UNTRUSTED_PROXY) from None
        protocol.client_address, protocol.proxied = str(client), proxied
        if key == protocol.counted_ip:
            return None
        if protocol.counted_ip is not None:
            admission.address_gone(protocol.counted_ip)
            protocol.counted_ip = None
        if key is None:
            return None
        refusal = admission.admit_address(key, self.clock.seconds())
        if refusal is None:
            protocol.counted_ip = key
        return refusal

    def startFactory(self) -> None:
        super().startFactory()
        self.handshakes.start()

    def stopFactory(self) -> None:
        self.handshakes.stop()
        super().stopFactory()

    def connection_gone(self, protocol: ChatProtocol) -> None:
        self.handshakes.done(protocol)
        if protocol in self.connections:
            self.connections.discard(protocol)
            self.admission.gone(protocol.counted_ip)
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
