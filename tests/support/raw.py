"""
Raw sockets: handshakes and HTTP from a chosen loopback address, and a client that never reads.
Every wait is on an event, bounded by a timeout that fails with a reason.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any, Optional

from twisted.internet import reactor

from tests.fakes import HANDSHAKE, client_frame
from tests.support.clients import WAIT, within


def handshake_from(port: int, source: str = "127.0.0.1", headers: bytes = b"") -> bytes:
    """A raw handshake from a given loopback address, with extra header
    lines: the response's first bytes."""
    with socket.socket() as sock:
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(HANDSHAKE[:-2] + headers + b"\r\n")
        data = b""
        while b"\r\n\r\n" not in data and (chunk := sock.recv(4096)):
            data += chunk
        return data


async def http_get(url: str) -> tuple[int, bytes]:
    """GET a URL with Twisted's own HTTP client: (status, body)."""
    from twisted.web.client import Agent, readBody

    response = await within(Agent(reactor).request(b"GET", url.encode()), f"GET {url}")
    body = await within(readBody(response), f"the body of {url}")
    return response.code, body


async def http_request(
    method: str, url: str, headers: Optional[dict[str, str]] = None, body: Optional[bytes] = None,
) -> tuple[int, dict[str, str], bytes]:
    """Any request with Twisted's own HTTP client: (status, headers, body)."""
    import io

    from twisted.web.client import Agent, FileBodyProducer, readBody
    from twisted.web.http_headers import Headers

    sent = Headers({k.encode(): [v.encode()] for k, v in (headers or {}).items()})
    producer = FileBodyProducer(io.BytesIO(body)) if body is not None else None
    response = await within(Agent(reactor).request(method.encode(), url.encode(), sent, producer), f"{method} {url}")
    got = await within(readBody(response), f"the body of {url}")
    named = {k.decode().lower(): v[-1].decode() for k, v in response.headers.getAllRawHeaders()}
    return response.code, named, got


def read_until_eof(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes or aborts the connection."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass  # an abort (RST) is as much a drop as a FIN
    return data


class StalledClient:
    """
    A blocking-socket WebSocket client with a tiny receive buffer.  It does
    the handshake and a few commands, then never reads again.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(WAIT)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(HANDSHAKE)
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        return data

    def frame(self) -> tuple[int, bytes]:
        """The next frame from the server: (opcode, payload)."""
        while True:
            if len(self.buffer) >= 2:
                opcode, n, start = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F, 2
                if n == 126:
                    (n,) = struct.unpack("!H", self.buffer[2:4])
                    start = 4
                elif n == 127:
                    (n,) = struct.unpack("!Q", self.buffer[2:10])
                    start = 10
                if len(self.buffer) >= start + n:
                    payload = self.buffer[start : start + n]
                    self.buffer = self.buffer[start + n :]
                    return opcode, payload
            self.buffer += self._recv()

    def next(self) -> Any:
        """The next JSON message (pings and other frames are skipped)."""
        while True:
            opcode, payload = self.frame()
            if opcode == 1:
                return json.loads(payload)

    def request(self, obj: Any) -> Any:
        self.sock.sendall(client_frame(json.dumps(obj).encode()))
        return self.next()

    def read_close(self) -> tuple[int, str]:
        """Read (and skip) frames until a close frame; its code and reason."""
        while True:
            opcode, payload = self.frame()
            if opcode == 8:
                return struct.unpack("!H", payload[:2])[0], payload[2:].decode()

    def read_until_eof(self) -> bytes:
        """Everything until the server closes or aborts the connection."""
        return self.buffer + read_until_eof(self.sock)

    def close(self) -> None:
        self.sock.close()

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
