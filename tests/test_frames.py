"""
chatd.delivery.frames: the client frames chatd reads itself, and every frame it
leaves to Autobahn.
"""

from __future__ import annotations

import os

import pytest

from chatd.delivery.frames import client_text_messages, unmask
from tests.fakes import client_frame

LIMIT = 65535


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 127, 1000, 65535])
def test_unmask_is_the_xor_of_the_repeated_mask(size: int) -> None:
    data, mask = os.urandom(size), os.urandom(4)
    assert unmask(mask, data) == bytes(b ^ mask[i % 4] for i, b in enumerate(data))


@pytest.mark.parametrize("size", [0, 1, 125, 126, 1000, 65535])
def test_whole_text_frames_are_read_with_their_lengths(size: int) -> None:
    payload = ("é" * (size // 2) + "x" * (size % 2)).encode()  # size bytes of UTF-8
    assert len(payload) == size
    data = client_frame(payload) + client_frame(b'{"action": "leave"}')
    assert client_text_messages(data, LIMIT) == ([payload, b'{"action": "leave"}'], len(data))


@pytest.mark.parametrize("other", [
    client_frame(b"", opcode=9),                      # ping
    client_frame(b"\x03\xe8", opcode=8),              # close
    client_frame(b"\x01", opcode=2),                  # binary
    client_frame(b"part", fin=False),                 # a fragment
    client_frame(b"\xff\xfe"),                        # invalid UTF-8
    client_frame(b"x" * 65536),                       # 64-bit length
    client_frame(b"x" * 101),                         # over the limit
    b"\x81\x05hello",                                 # not masked
    b"\x81\xfe\x00\x05" + b"\x00" * 4 + b"hello",     # length not in its shortest form
    bytes([0xC1]) + client_frame(b"x")[1:],           # compressed (RSV1)
])
def test_anything_else_stops_the_reading_and_is_left_with_what_follows(other: bytes) -> None:
    first = client_frame(b"first")
    data = first + other + client_frame(b"after")
    assert client_text_messages(data, 100) == ([b"first"], len(first))


@pytest.mark.parametrize("cut", [1, 2, 5, 6, 10])
def test_a_frame_not_yet_complete_is_left_for_later(cut: int) -> None:
    first, second = client_frame(b"first"), client_frame(b"x" * 200)
    data = first + second[:cut]
    assert client_text_messages(data, LIMIT) == ([b"first"], len(first))
