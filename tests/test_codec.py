"""
What is a valid client message, and the exact bytes of what the server sends.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from chatd import codec, replies
from chatd.codec import Create, Join, Leave, Message
from chatd.errors import ProtocolError


def decode_error(raw: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        codec.decode(raw.encode("utf-8") if isinstance(raw, str) else raw)
    return caught.value


def test_the_seed_actions() -> None:
    assert codec.decode(b'{"action": "create", "body": "Game Night"}') == Create("Game Night")
    assert codec.decode(b'{"action": "join", "body": {"room_id": "a1b2c3d4"}}') == Join("a1b2c3d4")
    assert codec.decode(b'{"action": "leave"}') == Leave()
    assert codec.decode(b'{"action": "leave", "body": "ignored"}') == Leave()
    assert codec.decode(b'{"action": "message", "body": "Hello everyone!"}') == Message(
        "Hello everyone!"
    )


@pytest.mark.parametrize(
    "body",
    ["", "text", {"custom": ["format", 1, 2.5, False]}, '{"json": "in a string"}', 0, [], False],
)
def test_any_json_body_passes_through(body: object) -> None:
    raw = json.dumps({"action": "message", "body": body}).encode()
    assert codec.decode(raw) == Message(body)


@pytest.mark.parametrize(
    "raw, message",
    [
        ("{", "Invalid JSON format"),
        ("", "Invalid JSON format"),
        ("{'action': 'leave'}", "Invalid JSON format"),
        ('{"action": "leave"} trailing', "Invalid JSON format"),
        ("[1, 2]", "Message must be a JSON object, not an array"),
        ("42", "Message must be a JSON object, not a number"),
        ('"create"', "Message must be a JSON object, not a string"),
        ("null", "Message must be a JSON object, not null"),
        ("true", "Message must be a JSON object, not a boolean"),
        ("{}", "Missing 'action'"),
        ('{"body": "x"}', "Missing 'action'"),
        ('{"action": 7}', "'action' must be a string"),
        ('{"action": null}', "'action' must be a string"),
        ('{"action": ["join"]}', "'action' must be a string"),
        ('{"action": "dance"}', "Invalid action"),
        ('{"action": "CREATE", "body": "x"}', "Invalid action"),
        ('{"action": "create"}', "Room name must be a non-empty string"),
        ('{"action": "create", "body": ""}', "Room name must be a non-empty string"),
        ('{"action": "create", "body": "   "}', "Room name must be a non-empty string"),
        ('{"action": "create", "body": 5}', "Room name must be a non-empty string"),
        ('{"action": "create", "body": ["x"]}', "Room name must be a non-empty string"),
        ('{"action": "create", "body": "a\\u0000b"}', "Room name must not contain control characters"),
        ('{"action": "message"}', "Message body is required"),
        ('{"action": "message", "body": null}', "Message body is required"),
    ],
)
def test_bad_input_gets_a_specific_error(raw: str, message: str) -> None:
    assert decode_error(raw).message == message


def test_room_name_length_limit() -> None:
    assert codec.decode(json.dumps({"action": "create", "body": "x" * 100}).encode()) == Create(
        "x" * 100
    )
    error = decode_error(json.dumps({"action": "create", "body": "x" * 101}))
    assert error.message == "Room name must be at most 100 characters"


@pytest.mark.parametrize(
    "body",
    ['"a1b2c3d4"', "null", "[]", "{}", '{"room_id": 12345678}', '{"room": "a1b2c3d4"}'],
)
def test_join_body_must_be_an_object_with_a_string_room_id(body: str) -> None:
    # The seed's reference answers "Server error: 'str' object has no
    # attribute 'get'" to a string body; chatd says what is wrong.
    error = decode_error('{"action": "join", "body": %s}' % body)
    assert error.message.startswith("Join body must be an object with a string 'room_id'")


def test_join_room_id_length_limit() -> None:
    error = decode_error(json.dumps({"action": "join", "body": {"room_id": "r" * 65}}))
    assert error.message == "'room_id' must be at most 64 characters"


@pytest.mark.parametrize("number", ["1e999999", "-1e999999", "NaN", "Infinity", "-Infinity"])
def test_numbers_must_be_finite(number: str) -> None:
    error = decode_error('{"action": "message", "body": %s}' % number)
    assert error.message.startswith("Numbers must be finite")
    assert error.kind == "number"


def test_huge_integer_literal() -> None:
    error = decode_error('{"action": "message", "body": %s}' % ("9" * 5000))
    assert error.message == "Number too large"


def test_finite_floats_pass() -> None:
    assert codec.decode(b'{"action": "message", "body": [1e300, -2.5e-300, 0.1]}') == Message(
        [1e300, -2.5e-300, 0.1]
    )


@pytest.mark.parametrize("depth", [33, 100, 5000, 100_000])
def test_nesting_limit(depth: int) -> None:
    # Past ~1000 levels Python's json raises RecursionError, which is not a
    # JSONDecodeError; both depths get the same clear answer.
    raw = '{"action": "message", "body": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"
    error = decode_error(raw)
    assert error.message == "JSON nested too deeply (at most 32 levels)"


def test_nesting_limit_counts_objects_too_and_allows_32_levels() -> None:
    body31 = "[" * 30 + "{}" + "]" * 30  # 31 levels inside the message object
    assert isinstance(codec.decode(('{"action": "message", "body": %s}' % body31).encode()), Message)
    body32 = '{"a": ' * 32 + "1" + "}" * 32  # 33 levels with the message object
    assert decode_error('{"action": "message", "body": %s}' % body32).kind == "depth"


def test_many_brackets_in_strings_do_not_trip_the_depth_limit() -> None:
    raw = json.dumps({"action": "message", "body": "[" * 1000 + "{" * 1000})
    assert codec.decode(raw.encode()) == Message("[" * 1000 + "{" * 1000)


@pytest.mark.parametrize(
    "raw",
    [
        '{"action": "create", "body": "\\ud800"}',
        '{"action": "join", "body": {"room_id": "\\udfff"}}',
        '{"action": "\\ud800"}',
        '{"action": "message", "body": "ok \\uDC00"}',
        '{"action": "message", "body": {"\\ud800": 1}}',
    ],
)
def test_lone_surrogates_are_rejected(raw: str) -> None:
    error = decode_error(raw)
    assert error.message.startswith("Strings must be valid Unicode text")
    assert error.kind == "surrogate"


def test_surrogate_pairs_are_fine() -> None:
    assert codec.decode(b'{"action": "message", "body": "\\ud83d\\ude00"}') == Message("\U0001f600")


def test_invalid_utf8_bytes() -> None:
    assert decode_error(b'{"action": "message", "body": "\xff"}').message == "Message must be UTF-8 text"


def test_output_matches_json_dumps_byte_for_byte() -> None:
    obj = codec.broadcast("abc123", {"t": "caf\u00e9", "n": [1, 2.0]}, "2026-01-01T00:00:00.000Z", 7)
    assert codec.encode(obj) == json.dumps(obj).encode()
    assert codec.encode(codec.welcome("abc12345")) == (
        b'{"status": "connected", "client_id": "abc12345", "message": "Welcome!"}'
    )
    assert codec.encode(codec.error("Invalid action")) == (
        b'{"status": "error", "message": "Invalid action"}'
    )


@pytest.mark.parametrize("value", [
    "plain", "caf\u00e9 \U0001F600 \u2028 \x00 \t \" \\ /", "",
    0, -1, 2**70, 1.5e-7, 1e100, -0.0, 3.0, True, False, None,
    [], {}, [1, [2, [3, {"k": "v"}]]], {"z": 1, "a": {"b": [None, 1.25]}},
])
def test_built_once_encoder_and_decoder_match_json_byte_for_byte(value: Any) -> None:
    # The C encoder and decoder are built once (no per-call setup); their
    # output and parsing must be json.dumps's and json.loads's exactly.
    assert replies._dumps(value) == json.dumps(value)
    if value is not None:  # a null body is refused
        message = {"action": "message", "body": value}
        assert codec.decode(json.dumps(message).encode()) == Message(value)


@pytest.mark.parametrize(
    "now, text",
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1_764_142_000.25, "2025-11-26T07:26:40.250Z"),
        (1_764_142_000.9999, "2025-11-26T07:26:40.999Z"),
    ],
)
def test_timestamp_is_iso8601_utc_with_milliseconds(now: float, text: str) -> None:
    assert codec.timestamp(now) == text
