"""
WebSocket framing for chat's common case, without I/O (RFC 6455, 5.2).

Autobahn frames and parses everything; chatd frames its own replies and
broadcasts (one frame for every member of a room), and reads the frames
nearly every client sends, a whole masked text message in one frame, here,
in a few operations instead of Autobahn's twenty-odd calls per frame.
Anything else (control frames, fragments, binary or compressed messages,
invalid UTF-8, oversized or malformed frames, a frame not yet complete) is
left to Autobahn, which owns every rule and every error for them.
With ``--permessage-deflate``, a broadcast is also compressed once for
every member that negotiated it.
"""

from __future__ import annotations

import zlib
from typing import Optional

#: Byte 0 of an unfragmented text frame (FIN, no RSV bits, opcode 1).
FIN_TEXT = 0x81
#: Byte 0 of one compressed with permessage-deflate (RSV1 as well).
FIN_TEXT_DEFLATED = 0xC1


def text_frame(payload: bytes, first: int = FIN_TEXT) -> bytes:
    """An unmasked, unfragmented WebSocket text frame, as a server sends it."""
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return bytes((first, 0x7E)) + n.to_bytes(2, "big") + payload
    return bytes((first, 0x7F)) + n.to_bytes(8, "big") + payload


def unmask(mask: bytes, data: bytes) -> bytes:
    """``data`` XOR the repeated 4-byte ``mask``, as one integer operation."""
    n = len(data)
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def client_text_messages(data: bytes, limit: int) -> tuple[list[bytes], int]:
    """
    The payloads of the whole text messages at the start of ``data``, each
    in one masked, unfragmented, uncompressed frame of at most ``limit``
    (and 65,535) bytes of valid UTF-8, and how many bytes of ``data`` they
    took.  Parsing stops at the first frame that is anything else or is
    not complete; it and all that follows are for Autobahn.
    """
    messages: list[bytes] = []
    at = 0
    end = len(data)
    while end - at >= 6 and data[at] == FIN_TEXT:
        length = data[at + 1]
        if length < 0x80:
            break  # unmasked: a protocol error, Autobahn's to report
        length &= 0x7F
        if length < 126:
            start = at + 6
        elif length == 126 and end - at >= 8:
            length = int.from_bytes(data[at + 2 : at + 4], "big")
            if length < 126:
                break  # not the shortest encoding: an error
            start = at + 8
        else:
            break  # a 64-bit length, or a header not complete
        stop = start + length
        if length > limit or stop > end:
            break
        payload = unmask(data[start - 4 : start], data[start:stop])
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            break  # Autobahn closes with 1007 and says where
        messages.append(payload)
        at = stop
    return messages, at


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
