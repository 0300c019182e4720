"""
What one connection costs chatd in Python, in process: accepting it, the
opening handshake, the welcome, the connect and disconnect log events (JSON,
to a null stream) and the close, over an in-memory transport, so that the
figure leaves out the system calls and varies little from run to run.

    taskset -c 0 .venv/bin/python bench/connection_cost.py [CONNECTIONS]

Prints the best of five runs, in microseconds per connection.
"""

from __future__ import annotations

import io
import sys
import time

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogBeginner
from twisted.python.failure import Failure

from chatd.logs import JSONLogObserver
from chatd.settings import Settings
from chatd.ws import ChatFactory

HANDSHAKE = (b"GET / HTTP/1.1\r\nHost: localhost:8765\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


class _Transport(StringTransport):
    def write(self, data: bytes) -> None:
        pass

    def loseConnection(self) -> None:
        pass


class _Null(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        return len(data)


def main() -> None:
    connections = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    clock = Clock()
    # As twistd does: the observer replaces the start-up buffer and its
    # filter, which would otherwise see every event too.
    globalLogBeginner.beginLoggingTo([JSONLogObserver(_Null(), clock)], redirectStandardIO=False)
    factory = ChatFactory(Settings(rate_connections_per_ip=0, max_connections=0, max_connections_per_ip=0),
                          clock=clock, reactor=clock)
    factory.doStart()
    lost = Failure(ConnectionLost())
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for i in range(connections):
            address = IPv4Address("TCP", "127.0.0.1", 30000 + i % 20000)
            protocol = factory.buildProtocol(address)
            protocol.makeConnection(_Transport(peerAddress=address))
            protocol.dataReceived(HANDSHAKE)
            clock.advance(0)
            protocol.connectionLost(lost)
        best = min(best, time.process_time() - started)
    print(f"{best / connections * 1e6:.1f} us per connection")  # noqa: T201 - a script's output


if __name__ == "__main__":
    main()
