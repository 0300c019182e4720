"""
Wire JSON to commands, and events to wire JSON.

Every rule about what a valid client message is lives here; the core only ever
sees well-formed commands.  Output is encoded exactly as the seed server's
``json.dumps`` does (default separators, ASCII escapes, key order as written),
so existing clients see the same bytes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any, Union

from chatd.errors import ProtocolError

#: The longest room name ``create`` accepts, in characters.
MAX_ROOM_NAME = 100
#: The longest ``room_id`` ``join`` accepts; real IDs are 8 characters.
MAX_ROOM_ID = 64
#: How deeply arrays and objects may nest in one message (the message object
#: itself is level 1).
MAX_DEPTH = 32

INVALID_JSON = "Invalid JSON format"
INVALID_ACTION = "Invalid action"


@dataclass(frozen=True, slots=True)
class Create:
    name: str


@dataclass(frozen=True, slots=True)
class Join:
    room_id: str


@dataclass(frozen=True, slots=True)
class Leave:
    pass


@dataclass(frozen=True, slots=True)
class Message:
    body: Any


Command = Union[Create, Join, Leave, Message]

_LEAVE = Leave()


class _NotFinite(Exception):
    pass


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotFinite(text)
    return value


def _reject_constant(text: str) -> Any:
    raise _NotFinite(text)


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_value(value: Any, check_depth: bool, check_text: bool) -> None:
    """
    Walk a parsed value without recursion, enforcing MAX_DEPTH and the absence
    of lone surrogates in every string (keys included).
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if check_text and _has_lone_surrogate(item):
                raise ProtocolError(
                    "Strings must be valid Unicode text (lone surrogate escape "
                    "such as \\ud800 found)",
                    "surrogate",
                )
            continue
        if isinstance(item, dict):
            children: Any = item.items()
        elif isinstance(item, list):
            children = ((None, v) for v in item)
        else:
            continue
        if check_depth and depth > MAX_DEPTH:
            raise ProtocolError(
                f"JSON nested too deeply (at most {MAX_DEPTH} levels)", "depth"
            )
        for key, child in children:
            if key is not None:
                stack.append((key, depth))
            stack.append((child, depth + 1))


def parse(payload: bytes) -> Any:
    """
    Parse one text frame into a JSON value, or raise :class:`ProtocolError`.
    """
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        # Autobahn validates incoming UTF-8 already; this guards other callers.
        raise ProtocolError("Message must be UTF-8 text", "utf8") from None
    try:
        value = json.loads(
            text, parse_float=_finite_float, parse_constant=_reject_constant
        )
    except _NotFinite:
        raise ProtocolError(
            "Numbers must be finite (NaN, Infinity and out-of-range values such "
            "as 1e999999 are not allowed)",
            "number",
        ) from None
    except RecursionError:
        raise ProtocolError(
            f"JSON nested too deeply (at most {MAX_DEPTH} levels)", "depth"
        ) from None
    except json.JSONDecodeError:
        raise ProtocolError(INVALID_JSON, "json") from None
    except ValueError:
        # int() refuses integer literals over sys.get_int_max_str_digits().
        raise ProtocolError("Number too large", "number") from None
    # Cheap byte scans decide whether the full walk is needed at all, so
    # ordinary messages pay nothing for these two rules.
    check_depth = text.count("[") + text.count("{") > MAX_DEPTH
    check_text = "\\ud" in text or "\\uD" in text
    if check_depth or check_text:
        _check_value(value, check_depth, check_text)
    return value


def _text_field(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{what} must be a string", "shape")
    return value


def decode(payload: bytes) -> Command:
    """
    Turn one client text frame into a command, or raise ProtocolError with a
    message that says exactly what is wrong.
    """
    data = parse(payload)
    if not isinstance(data, dict):
        raise ProtocolError(
            f"Message must be a JSON object, not {_json_type(data)}", "shape"
        )
    if "action" not in data:
        raise ProtocolError("Missing 'action'", "shape")
    action = data["action"]
    if not isinstance(action, str):
        raise ProtocolError("'action' must be a string", "shape")

    if action == "message":
        body = data.get("body")
        if body is None:
            raise ProtocolError("Message body is required", "shape")
        return Message(body)
    if action == "join":
        body = data.get("body")
        if not isinstance(body, dict) or not isinstance(body.get("room_id"), str):
            raise ProtocolError(
                "Join body must be an object with a string 'room_id', "
                'like {"room_id": "a1b2c3d4"}',
                "shape",
            )
        room_id = body["room_id"]
        if len(room_id) > MAX_ROOM_ID:
            raise ProtocolError(
                f"'room_id' must be at most {MAX_ROOM_ID} characters", "shape"
            )
        return Join(room_id)
    if action == "create":
        name = data.get("body")
        if not isinstance(name, str) or not name.strip():
            raise ProtocolError("Room name must be a non-empty string", "shape")
        if len(name) > MAX_ROOM_NAME:
            raise ProtocolError(
                f"Room name must be at most {MAX_ROOM_NAME} characters", "shape"
            )
        if not name.isprintable():
            raise ProtocolError(
                "Room name must not contain control characters", "shape"
            )
        return Create(name)
    if action == "leave":
        return _LEAVE
    raise ProtocolError(INVALID_ACTION, "action")


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


# -- output -----------------------------------------------------------------

_dumps = json.JSONEncoder().encode  # the seed's json.dumps defaults, no per-call setup


def encode(obj: dict[str, Any]) -> bytes:
    """Encode one server message exactly as the seed server does."""
    # ensure_ascii (the default) makes the output pure ASCII.
    return _dumps(obj).encode("ascii")


def timestamp(now: float) -> str:
    """ISO 8601 UTC with milliseconds: ``2026-11-26T07:24:15.123Z``."""
    whole = math.floor(now)
    millis = int((now - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def welcome(client_id: str) -> dict[str, Any]:
    return {"status": "connected", "client_id": client_id, "message": "Welcome!"}


def error(message: str) -> dict[str, Any]:
    return {"status": "error", "message": message}


def broadcast(sender_id: str, body: Any, ts: str) -> dict[str, Any]:
    return {"from": sender_id, "body": body, "timestamp": ts}
