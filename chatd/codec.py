"""
Wire JSON to commands.

Every rule about what a valid client message is lives here; the core only ever
sees well-formed commands.  What chatd sends back is built and encoded in
:mod:`chatd.replies`, whose names this module offers too, for its callers.
"""

from __future__ import annotations

import json
import math
import dataclasses
from dataclasses import dataclass, field
import re
from typing import Any, Optional, Union

from chatd import names
from chatd.errors import ProtocolError

#: The longest room name ``create`` accepts, in characters.
MAX_ROOM_NAME = 100
#: The longest ``room_id`` ``join`` accepts; real IDs are 8 characters.
MAX_ROOM_ID = 64
#: How deeply arrays and objects may nest in one message (the message object
#: itself is level 1).
MAX_DEPTH = 32
#: The longest nick, in characters.
MAX_NICK = 32
#: The most rooms ``list`` and messages ``history`` return at once, and the default.
MAX_PAGE = 100
DEFAULT_PAGE = 50

INVALID_JSON = "Invalid JSON format"
INVALID_ACTION = "Invalid action"


@dataclass(frozen=True, slots=True)
class Create:
    name: str
    private: bool = False  # seen only by members and whoever is invited
    persistent: bool = False  # outlives its members and restarts
    keep: bool = False  # stay in the rooms the connection is in


@dataclass(frozen=True, slots=True)
class Delete:
    """A lasting room's owner removes it."""

    room_id: str


@dataclass(frozen=True, slots=True)
class Rooms:
    """The user's lasting rooms, and the connection's room."""


@dataclass(frozen=True, slots=True)
class Sync:
    """Enter the user's lasting rooms and the rooms named in ``since`` (each
    with the last message id the client saw there), keeping every room."""

    since: dict[str, int] = field(default_factory=dict)


#: The most rooms one ``sync`` may name in its ``since``.
MAX_SYNC = 1000


@dataclass(frozen=True, slots=True)
class Read:
    """The user has read a lasting room up to message ``message_id``."""

    room_id: str
    message_id: int


@dataclass(frozen=True, slots=True)
class Join:
    room_id: str
    # The id of the last message the client saw in the room: the reply
    # then carries the ones after it (a reconnect without a gap).
    since: Optional[int] = None
    keep: bool = False  # stay in the rooms the connection is in


@dataclass(frozen=True, slots=True)
class Leave:
    scope: Optional[str] = None  # the room named by a top-level "room_id"


@dataclass(frozen=True, slots=True)
class Message:
    body: Any
    scope: Optional[str] = None  # the room named by a top-level "room_id"


@dataclass(frozen=True, slots=True)
class ListRooms:
    limit: int = DEFAULT_PAGE
    after: Optional[str] = None


@dataclass(frozen=True, slots=True)
class Members:
    scope: Optional[str] = None  # the room named by a top-level "room_id"


@dataclass(frozen=True, slots=True)
class Nick:
    nick: str
    scope: Optional[str] = None  # the room named by a top-level "room_id"


@dataclass(frozen=True, slots=True)
class History:
    limit: int = DEFAULT_PAGE
    before: Optional[int] = None
    scope: Optional[str] = None  # the room named by a top-level "room_id"


@dataclass(frozen=True, slots=True)
class Events:
    on: bool


@dataclass(frozen=True, slots=True)
class Auth:
    token: str


@dataclass(frozen=True, slots=True)
class Direct:
    to: str  # a client ID or an authenticated user's name
    body: Any


@dataclass(frozen=True, slots=True)
class Manage:
    """
    A room owner's or moderator's action on someone: ``action`` is one of
    :data:`MANAGE`; the target is a client ID or (for invite, ban and
    unban) a user name.
    """

    action: str
    client_id: Optional[str] = None
    user: Optional[str] = None
    reason: str = ""  # kick and ban: shown to the one removed
    scope: Optional[str] = None  # the room named by a top-level "room_id"

    @property
    def target(self) -> str:
        """The target as the replies name it."""
        return self.client_id if self.client_id is not None else self.user or ""


@dataclass(frozen=True, slots=True)
class Block:
    """This connection receives no direct messages from a user or a client
    (``on``), or does again (``on`` False)."""

    on: bool
    client_id: Optional[str] = None
    user: Optional[str] = None

    @property
    def target(self) -> str:
        """The target as the replies name it."""
        return self.client_id if self.client_id is not None else self.user or ""

    @property
    def key(self) -> str:
        """What the block is kept under: ``c:ID`` or ``u:NAME``."""
        return f"c:{self.client_id}" if self.client_id is not None else f"u:{self.user}"


Command = Union[
    Create, Join, Leave, Message, ListRooms, Members, Nick, History, Events, Auth, Direct, Manage, Block,
    Delete, Rooms, Read, Sync]

#: The room actions, and whether each may name its target by user name.
MANAGE = {"invite": True, "ban": True, "unban": True, "kick": False, "op": False, "deop": False}
#: The longest reason a kick or a ban may give, in characters.
MAX_REASON = 200

#: Tokens longer than this are invalid without being decoded.
MAX_TOKEN = 8 * 1024
INVALID_TOKEN = "Invalid token"
TOKEN_EXPIRED = "Token expired"
EXPIRY_REQUIRED = "This connection's token expires: refresh it with a token that has an expiry (exp)"
AUTH_REQUIRED = "Authentication required"

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


#: json.loads with these options makes a decoder (and a C scanner) per call.
_json_decode = json.JSONDecoder(parse_float=_finite_float, parse_constant=_reject_constant).decode


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
        value = _json_decode(text)
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

    scope = _scope(data.get("room_id")) if "room_id" in data else None
    if action == "message":
        body = data.get("body")
        if body is None:
            raise ProtocolError("Message body is required", "shape")
        return Message(body, scope)
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
        since = body.get("since")
        if since is not None and (not _is_int(since) or since < 0):
            raise ProtocolError(
                "'since' must be a message id (a whole number of at least 0)", "shape"
            )
        return Join(room_id, since, _keep(body))
    if action == "create":
        name = data.get("body")
        private = persistent = keep = False
        if isinstance(name, dict):
            private, persistent, keep = name.get("private", False), name.get("persistent", False), _keep(name)
            for key, value in (("private", private), ("persistent", persistent)):
                if not isinstance(value, bool):
                    raise ProtocolError(f"'{key}' must be true or false", "shape")
            name = name.get("name")
            if not isinstance(name, str):
                raise ProtocolError(
                    'Create body must be a room name, or an object with a string \'name\', '
                    'like {"name": "Game Night", "private": true}', "shape")
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
        return Create(name, private, persistent, keep)
    if action == "leave":
        return _LEAVE if scope is None else Leave(scope)
    if action == "list":
        options = _options(data, "List", '{"limit": 50, "after": "CURSOR"}')
        after = options.get("after")
        # A cursor is a creation sequence: at most 20 digits (one that Redis
        # and int() take without complaint).
        if after is not None and not (
                isinstance(after, str) and after.isdigit() and after.isascii() and len(after) <= 20):
            raise ProtocolError("'after' must be the 'next' string of a previous list reply", "shape")
        return ListRooms(_page_limit(options), after)
    if action == "members":
        return _MEMBERS if scope is None else Members(scope)
    if action == "nick":
        return Nick(_nick(data.get("body")), scope)
    if action == "history":
        options = _options(data, "History", '{"limit": 50, "before": 120}')
        before = options.get("before")
        if before is not None and (not _is_int(before) or before < 1):
            raise ProtocolError(
                "'before' must be a message id (a whole number of at least 1)", "shape"
            )
        return History(_page_limit(options), before, scope)
    if action == "events":
        on = data.get("body")
        if not isinstance(on, bool):
            raise ProtocolError("Events body must be true or false", "shape")
        return Events(on)
    if action == "direct":
        body = data.get("body")
        if (not isinstance(body, dict) or not isinstance(body.get("to"), str) or not body["to"]
                or body.get("body") is None):
            raise ProtocolError(
                'Direct body must be an object with a string \'to\' and a \'body\', '
                'like {"to": "9930240b", "body": "hi"}', "shape")
        if len(body["to"]) > MAX_ROOM_ID:
            raise ProtocolError(f"'to' must be at most {MAX_ROOM_ID} characters", "shape")
        return Direct(body["to"], body["body"])
    if action in MANAGE:
        managed = _manage(action, data.get("body"))
        return managed if scope is None else dataclasses.replace(managed, scope=scope)
    if action in ("block", "unblock"):
        target = _manage(action, data.get("body"))
        return Block(action == "block", target.client_id, target.user)
    if action == "delete":
        return Delete(_room_id(data.get("body"), "Delete", ""))
    if action == "rooms":
        return _ROOMS
    if action == "sync":
        return _sync(data.get("body"))
    if action == "read":
        body = data.get("body")
        room_id = _room_id(body, "Read", ', "id": 42')
        message_id: Any = body.get("id") if isinstance(body, dict) else None
        if not _is_int(message_id) or message_id < 1:
            raise ProtocolError("'id' must be a message id (a whole number of at least 1)", "shape")
        return Read(room_id, int(message_id))
    if action == "auth":
        body = data.get("body")
        if not isinstance(body, dict) or not isinstance(body.get("token"), str):
            raise ProtocolError(
                'Auth body must be an object with a string \'token\', like {"token": "eyJ..."}', "shape")
        if len(body["token"]) > MAX_TOKEN:
            raise ProtocolError(INVALID_TOKEN, "auth")
        return Auth(body["token"])
    raise ProtocolError(INVALID_ACTION, "action")


_MEMBERS = Members()
_ROOMS = Rooms()


def _keep(body: dict[str, Any]) -> bool:
    keep = body.get("keep", False)
    if not isinstance(keep, bool):
        raise ProtocolError("'keep' must be true or false", "shape")
    return keep


def _sync(body: Any) -> Sync:
    """A ``sync``'s body: nothing, or ``{"since": {ROOM_ID: N, ...}}``."""
    if body is None:
        return Sync()
    if not isinstance(body, dict):
        raise ProtocolError('Sync body must be an object, like {"since": {"a1b2c3d4": 42}}', "shape")
    since = body.get("since", {})
    if not isinstance(since, dict):
        raise ProtocolError(
            "'since' must be an object from room IDs to the last message id seen in each, "
            'like {"a1b2c3d4": 42}', "shape")
    if len(since) > MAX_SYNC:
        raise ProtocolError(f"'since' may name at most {MAX_SYNC} rooms", "shape")
    for room_id, last in since.items():
        _scope(room_id)
        if not _is_int(last) or last < 0:
            raise ProtocolError(
                f"'since' of room {room_id} must be a message id (a whole number of at least 0)", "shape")
    return Sync({room_id: int(last) for room_id, last in since.items()})


def _scope(room_id: Any) -> Optional[str]:
    """A room-scoped action's top-level ``room_id`` (None: the current room)."""
    if room_id is None:
        return None
    if not isinstance(room_id, str) or not room_id or len(room_id) > MAX_ROOM_ID:
        raise ProtocolError(f"'room_id' must be a room ID: a string of 1 to {MAX_ROOM_ID} characters", "shape")
    return room_id


def _room_id(body: Any, what: str, more: str) -> str:
    """The ``room_id`` of an action's body."""
    if not isinstance(body, dict) or not isinstance(body.get("room_id"), str) or not body["room_id"]:
        raise ProtocolError(
            f"{what} body must be an object with a string 'room_id', like "
            f'{{"room_id": "a1b2c3d4"{more}}}', "shape")
    if len(body["room_id"]) > MAX_ROOM_ID:
        raise ProtocolError(f"'room_id' must be at most {MAX_ROOM_ID} characters", "shape")
    return str(body["room_id"])
_CLIENT_ID = re.compile(r"[0-9a-f]{8}")


def _manage(action: str, body: Any) -> Manage:
    by_user = MANAGE.get(action, True)
    example = '{"client_id": "9930240b"}'
    if by_user:
        shape = f"{action.capitalize()} body must be an object with a string 'user' or 'client_id', like "
        example = '{"user": "bob"} or ' + example
    else:
        shape = f"{action.capitalize()} body must be an object with a string 'client_id', like "
    if action in ("kick", "ban"):
        example = example[:-1] + ', "reason": "spam"}'
    if not isinstance(body, dict):
        raise ProtocolError(shape + example, "shape")
    client_id, user = body.get("client_id"), body.get("user") if by_user else None
    if (client_id is None) == (user is None) or not isinstance(client_id if user is None else user, str):
        raise ProtocolError(shape + example, "shape")
    target = client_id if user is None else user
    if not target or len(target) > MAX_ROOM_ID:
        name = "'client_id'" if user is None else "'user'"
        raise ProtocolError(f"{name} must be 1 to {MAX_ROOM_ID} characters", "shape")
    reason = body.get("reason", "") if action in ("kick", "ban") else ""
    if not isinstance(reason, str):
        raise ProtocolError("'reason' must be a string", "shape")
    if len(reason) > MAX_REASON:
        raise ProtocolError(f"'reason' must be at most {MAX_REASON} characters", "shape")
    return Manage(action, client_id, user, reason)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _options(data: dict[str, Any], what: str, example: str) -> dict[str, Any]:
    options = data.get("body")
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ProtocolError(f"{what} body must be an object like {example}", "shape")
    return options


def _page_limit(options: dict[str, Any]) -> int:
    limit = options.get("limit", DEFAULT_PAGE)
    if not _is_int(limit) or not 1 <= limit <= MAX_PAGE:
        raise ProtocolError(f"'limit' must be a whole number from 1 to {MAX_PAGE}", "shape")
    return int(limit)


_HEX_DIGITS = "0123456789abcdef"


def _nick(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ProtocolError("Nick must be a non-empty string", "shape")
    nick = value.strip()
    if len(nick) > MAX_NICK:
        raise ProtocolError(f"Nick must be at most {MAX_NICK} characters", "shape")
    if not nick.isprintable():
        raise ProtocolError("Nick must not contain control characters", "shape")
    try:
        # Normalised as people read it: no invisible or filler characters.
        nick = names.enforce_nick(nick)
    except names.BadName as e:
        raise ProtocolError(str(e), "shape") from None
    if names.looks_like(nick, _HEX_DIGITS, 8):
        # Eight hex digits would pass for someone's client ID.
        raise ProtocolError("Nick must not look like a client ID", "shape")
    return nick


def default_nick(user: str, name: Optional[str]) -> Optional[str]:
    """The nick an authenticated client without one takes: its display
    name, else its user name, if that may be a nick as it is."""
    nick = name if name is not None and valid_nick(name) else user
    return nick if valid_nick(nick) else None


def valid_nick(value: str) -> bool:
    """Whether ``value`` may be a nick as it is (a default one, say)."""
    try:
        return _nick(value) == value
    except ProtocolError:
        return False


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


# What chatd sends (chatd.replies), under the names callers have always used.
from chatd.replies import (  # noqa: E402
    encode as encode,
    MESSAGE_SENT as MESSAGE_SENT,
    MESSAGE_SENT_ENCODED as MESSAGE_SENT_ENCODED,
    timestamp as timestamp,
    direct as direct,
    recovery as recovery,
    welcome as welcome,
    error as error,
    broadcast as broadcast,
    broadcast_parts as broadcast_parts,
    joined as joined,
    created as created,
    room_entry as room_entry,
    kick as kick,
    invited as invited,
    event as event,
    deleted as deleted,
    read_up_to as read_up_to,
)
