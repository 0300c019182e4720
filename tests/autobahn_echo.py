"""
chatd's WebSocket layer as an echo server, for the Autobahn|Testsuite
(tests/test_conformance.py): chatd's own protocol class, frame reader,
writer and factory options, with each message echoed instead of chatted
and nothing sent on open.  Prints the port it listens on.

    python -m tests.autobahn_echo
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import endpoints, reactor

from chatd.settings import Settings
from chatd.ws import ChatFactory


class Echo:
    """Mixed in before chatd's protocol: the WebSocket layer, no chat."""

    def onOpen(self: Any) -> None:
        self.opened()

    def onMessage(self: Any, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


def main() -> None:
    # The suite's largest messages (cases 9.*, not run) need more than the
    # default 64 KiB; its pings and closes need no timers of chatd's.
    # The suite opens a connection per case from one address: no per-address limits.
    settings = Settings(
        ping_interval=0, ping_timeout=0, max_message_size=16 * 1024 * 1024,
        rate_connections_per_ip=0, max_connections_per_ip=0,
    )
    factory = ChatFactory(settings, clock=reactor, reactor=reactor)
    factory.protocol = type("EchoProtocol", (Echo, factory.protocol), {})
    endpoint = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1")

    def listening(port: Any) -> None:
        sys.stdout.write(f"{port.getHost().port}\n")
        sys.stdout.flush()

    endpoint.listen(factory).addCallback(listening)
    reactor.run()


if __name__ == "__main__":
    main()
