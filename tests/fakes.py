"""
Explicit fakes for the fast tests: sinks for the core, a transport for the
adapter, and a tiny WebSocket framer to talk to the adapter without sockets.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Iterator

from twisted.internet.testing import StringTransport

from chatd.errors import SinkGone


class FakeSink:
    """Records what the core delivers, decoded, and how it was closed."""

    def __init__(self, fail_with: BaseException | None = None) -> None:
        self.frames: list[Any] = []
        self.closed: tuple[int, str] | None = None
        self.fail_with = fail_with

    def deliver(self, frame: Any) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.frames.append(frame)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    @property
    def received(self) -> list[Any]:
        return [json.loads(frame) for frame in self.frames]


class GoneSink(FakeSink):
    def __init__(self) -> None:
        super().__init__(fail_with=SinkGone())


class SequentialIds:
    """An ID source that hands out the given IDs in turn."""

    def __init__(self, *ids: str) -> None:
        self._ids: Iterator[str] = iter(ids)

    def __call__(self) -> str:
        return next(self._ids)


class ProducerTransport(StringTransport):
    """
    A StringTransport that, like a real TCP transport, accepts
    unregisterProducer with or without a producer, can be aborted, and can be
    told that its buffer is full.
    """

    aborted = False

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()

    def fill_buffer(self) -> None:
        self.producer.pauseProducing()

    def drain_buffer(self) -> None:
        self.clear()
        self.producer.resumeProducing()


HANDSHAKE = (
    b"GET / HTTP/1.1\r\n"
    b"Host: localhost:8765\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)


def client_frame(payload: bytes, opcode: int = 1, fin: bool = True) -> bytes:
    """A masked frame, as a client sends it."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split unmasked server frames: [(opcode, payload), ...]."""
    frames = []
    i = 0
    while i < len(data):
        opcode = data[i] & 0x0F
        n = data[i + 1] & 0x7F
        i += 2
        if n == 126:
            (n,) = struct.unpack("!H", data[i : i + 2])
            i += 2
        elif n == 127:
            (n,) = struct.unpack("!Q", data[i : i + 8])
            i += 8
        frames.append((opcode, data[i : i + n]))
        i += n
    return frames
