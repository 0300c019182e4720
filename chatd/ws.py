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

from typing import Any, Optional

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IProtocolNegotiationFactory,
    IPushProducer,
    IReactorTime,
)
from twisted.logger import Logger
from zope.interface import implementer

from chatd import __version__, fastpath, web
from chatd.admission import Address, UntrustedProxy, address_of, parse_ip
from chatd.chat import Chat
from chatd.conversation import Conversation
from chatd.errors import CLOSE_GOING_AWAY, CLOSE_POLICY_VIOLATION
from chatd.delivery.frames import Broadcast, Broadcasts, client_text_messages
from chatd.delivery.outbox import Outbox
from chatd.compose import Server, compose
from chatd.handshake import UNTRUSTED_PROXY, Handshake, HandshakeTimer
from chatd.settings import Settings

TOO_SLOW = "Outgoing buffer limit exceeded: client too slow"
#: The most a client may send before its opening handshake is answered: the
#: request head (an 8 KiB token and a browser's headers fit several times),
#: and anything it sends early behind it.
MAX_REQUEST_HEAD = 16 * 1024
@implementer(IPushProducer)
class ChatProtocol(Outbox, Conversation, Handshake, WebSocketServerProtocol):
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
        self, settings: Settings, clock: IReactorTime, reactor: Any = None, server: Optional[Server] = None,
        **parts: Any,
    ) -> None:
        """``server``: what :func:`chatd.compose.compose` built; without it
        (a factory on its own, as tests make one), it is composed here from
        ``parts`` (compose's keyword arguments), with this process's chat."""
        super().__init__(server=f"chatd/{__version__}", reactor=reactor)
        fastpath.quiet_autobahn_debug()
        if server is None:
            server = compose(settings, clock, reactor, cluster=False, **parts)
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
        self.gzipped_pages = web.pages(sign_in=self.portal is not None, compressed=True)
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
