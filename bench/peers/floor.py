"""
The floor under chatd's cost per connection: servers that accept a
WebSocket connection, send the welcome and forget it, and do nothing else
(no rooms, no IDs, no admission, no logs, no metrics), for the ``connect``
scenario to show how much of a connection's cost is chatd's own.

    python bench/peers/floor.py PORT            # Twisted and Autobahn
    python bench/peers/floor.py PORT --twisted  # Twisted alone

Default: an Autobahn ``WebSocketServerProtocol`` on Twisted's epoll reactor,
with chatd's own shortcuts (its quick parse of a plain opening handshake,
options on the protocol class, Autobahn's debug formatting skipped): the
least any server built on Twisted and Autobahn does per connection.
``--twisted``: a bare Twisted protocol that answers any request with a fixed
101 response and the welcome, without looking at it, and closes the
connection on the next frame (the scenario's close): the least any Twisted
server does.
"""

import sys

from twisted.internet import epollreactor

epollreactor.install()

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol  # noqa: E402
from twisted.internet import protocol, reactor  # noqa: E402

from chatd import fastpath  # noqa: E402
from chatd.fastpath import options_on_class  # noqa: E402

WELCOME = b'{"type": "connected", "client_id": "00000000"}'


class Floor(WebSocketServerProtocol):
    def dataReceived(self, data: bytes) -> None:
        if self.state == self.STATE_CONNECTING and fastpath.handshake(self, data):
            return
        fastpath.parse(self, data)

    def onOpen(self) -> None:
        self.sendMessage(WELCOME)


class Fixed(protocol.Protocol):
    # The key is the loadgen's (RFC 6455's sample), so the accept value is fixed too.
    RESPONSE = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        + bytes((0x81, len(WELCOME))) + WELCOME
    )

    def dataReceived(self, data: bytes) -> None:
        if data.endswith(b"\r\n\r\n"):
            self.transport.write(self.RESPONSE)
        else:  # a frame: only a close frame is ever sent to it
            self.transport.loseConnection()


def autobahn_factory() -> WebSocketServerFactory:
    fastpath.quiet_autobahn_debug()
    factory = WebSocketServerFactory(reactor=reactor)
    factory.setProtocolOptions(
        openHandshakeTimeout=0, allowedOrigins=["*"], maxConnections=0, trustXForwardedFor=0, tcpNoDelay=True)
    # As chatd does: the options on the protocol class, not copied per connection.
    factory.protocol = options_on_class(factory, Floor, "Floor")
    return factory


def main() -> None:
    port = int(sys.argv[1])
    factory = protocol.Factory.forProtocol(Fixed) if "--twisted" in sys.argv else autobahn_factory()
    reactor.listenTCP(port, factory, backlog=4096, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
