"""
What chatd sends, encoded exactly as the seed server's ``json.dumps`` does
(default separators, ASCII escapes, key order as written), so that existing
clients see the same bytes: replies, broadcasts, events, and the time
stamps they carry.  :mod:`chatd.codec` reads what clients send.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Callable, Optional

def _make_dumps() -> Callable[[Any], str]:
    """
    ``json.dumps`` with the seed's defaults, byte for byte, without its
    per-call setup: ``JSONEncoder.encode`` builds a new C encoder for every
    call; this one is built once.  No circular-reference check: what is
    encoded is parsed JSON or chatd's own dicts, never cyclic.
    """
    encoder = json.JSONEncoder()
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator (not CPython)
        return encoder.encode
    chunks = make(
        None, encoder.default, json.encoder.encode_basestring_ascii, None,
        encoder.key_separator, encoder.item_separator, False, False, True,
    )

    def dumps(obj: Any) -> str:
        return "".join(chunks(obj, 0))

    return dumps


_dumps: Callable[[Any], str] = _make_dumps()


def encode(obj: dict[str, Any]) -> bytes:
    """Encode one server message exactly as the seed server does."""
    # ensure_ascii (the default) makes the output pure ASCII.
    return _dumps(obj).encode("ascii")


#: The reply to every chat message that was sent (shared: never modified),
#: and its encoding, made once: the commonest reply of all.
MESSAGE_SENT: dict[str, Any] = {"status": "success", "message": "Message sent"}
MESSAGE_SENT_ENCODED = encode(MESSAGE_SENT)


_last_second: list[Any] = [None, ""]  # the whole second last formatted, and its text


def timestamp(now: float) -> str:
    """ISO 8601 UTC with milliseconds: ``2026-11-26T07:24:15.123Z``."""
    whole = math.floor(now)
    millis = int((now - whole) * 1000)
    if whole != _last_second[0]:
        _last_second[0], _last_second[1] = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{_last_second[1]}.{millis:03d}Z"


def direct(
    sender_id: str, body: Any, ts: str, to: str, nick: Optional[str] = None, user: Optional[str] = None,
) -> dict[str, Any]:
    """A direct message as its recipient gets it: a broadcast's keys, with
    "direct" and "to" (what the sender addressed) instead of an id."""
    return _signed({"from": sender_id, "body": body, "timestamp": ts, "direct": True, "to": to}, nick, user)


def recovery(
    kept: list[dict[str, Any]], last_id: int, since: int
) -> tuple[bool, list[dict[str, Any]]]:
    """
    What a client that saw a room's messages up to ``since`` missed, from
    the ``kept`` ones (oldest first) of a room whose latest is ``last_id``:
    whether they are all there, and those after ``since`` (all kept ones,
    the most recent, when ``since`` is from another life of the room).
    Ids go up by one per message, so all are there when as many are kept
    after ``since`` as were sent.
    """
    if since > last_id:
        return False, kept
    missed = [message for message in kept if message["id"] > since]
    return len(missed) == last_id - since, missed


def welcome(client_id: str, user: Optional[str] = None) -> dict[str, Any]:
    """The seed's welcome, and the user when the handshake authenticated one."""
    reply = {"status": "connected", "client_id": client_id, "message": "Welcome!"}
    if user is not None:
        reply["user"] = user
    return reply


def error(message: str, **extra: Any) -> dict[str, Any]:
    return {"status": "error", "message": message, **extra}


def broadcast(
    sender_id: str, body: Any, ts: str, message_id: int, nick: Optional[str] = None,
    user: Optional[str] = None,
) -> dict[str, Any]:
    """The seed's broadcast, plus fields a seed client ignores: "id",
    "nick", and "user" (an authenticated sender's)."""
    return _signed({"from": sender_id, "body": body, "timestamp": ts, "id": message_id}, nick, user)


def _signed(message: dict[str, Any], nick: Optional[str], user: Optional[str]) -> dict[str, Any]:
    """A message with its sender's nick and user, when it has them."""
    if nick is not None:
        message["nick"] = nick
    if user is not None:
        message["user"] = user
    return message


def broadcast_parts(
    sender_id: str, body: Any, ts: str, nick: Optional[str] = None, user: Optional[str] = None,
) -> tuple[bytes, bytes]:
    """
    The encoded broadcast around its id: ``head + str(id) + tail`` is
    ``encode(broadcast(sender_id, body, ts, id, nick, user))`` byte for byte,
    so that the id can be filled in where it is given out (Redis, in a
    cluster).
    """
    head = encode({"from": sender_id, "body": body, "timestamp": ts})
    tail = b"}"
    if user is not None:
        tail = b', "user": ' + _dumps(user).encode("ascii") + tail
    if nick is not None:
        tail = b', "nick": ' + _dumps(nick).encode("ascii") + tail
    return head[:-1] + b', "id": ', tail


def joined(room_id: str, name: str) -> dict[str, Any]:
    """The seed's reply to "join"."""
    return {"status": "success", "message": f"Joined room '{name}'", "room_id": room_id}


def created(room_id: str, name: str, private: bool, persistent: bool = False) -> dict[str, Any]:
    """The seed's reply to "create", and "private" for a private room,
    "persistent" for a lasting one."""
    reply: dict[str, Any] = {"status": "success", "room_id": room_id, "message": f"Room '{name}' created"}
    if private:
        reply["private"] = True
    if persistent:
        reply["persistent"] = True
    return reply


def room_entry(
    room_id: str, name: str, members: int, created_at: str, private: bool, persistent: bool = False,
) -> dict[str, Any]:
    """One room of a "list" reply; "private" and "persistent" only where it is."""
    entry: dict[str, Any] = {"room_id": room_id, "name": name, "members": members, "created_at": created_at}
    if private:
        entry["private"] = True
    if persistent:
        entry["persistent"] = True
    return entry


def deleted(room_id: str) -> dict[str, Any]:
    """What every member of a lasting room its owner deletes receives."""
    return {"event": "deleted", "room_id": room_id}


def read_up_to(room_id: str, message_id: int) -> dict[str, Any]:
    """What a user's other connections receive when one moves the read marker."""
    return {"event": "read", "room_id": room_id, "id": message_id}


def kick(room_id: str, by: str, reason: str) -> dict[str, Any]:
    """What a member removed from a room by a kick or a ban receives,
    whether or not it asked for events."""
    return {"event": "kick", "room_id": room_id, "by": by, "reason": reason}


def invited(
    room_id: str, name: str, by_id: str, by_nick: Optional[str], ts: str, by_user: Optional[str] = None,
) -> dict[str, Any]:
    """An invitation, to the connections it names that asked for events:
    the room, and who invited them (the event's subject)."""
    message = {"event": "invite", "room_id": room_id, "name": name, "client_id": by_id, "nick": by_nick,
               "timestamp": ts}
    if by_user is not None:
        message["user"] = by_user
    return message


def event(
    kind: str, room_id: str, client_id: str, nick: Optional[str], ts: str, user: Optional[str] = None,
) -> dict[str, Any]:
    """A room event, sent only to clients that opted in with "events"; with
    "user" when its subject is authenticated."""
    message = {"event": kind, "room_id": room_id, "client_id": client_id, "nick": nick, "timestamp": ts}
    if user is not None:
        message["user"] = user
    return message
