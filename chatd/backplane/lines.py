"""
What the Redis scripts answer, and what a room's channel carries, as small
typed values: one class per kind, each decoding its own shape, so that no
caller reads a reply by position.  The scripts' side of each shape is
documented beside the script (``chatd.backplane.scripts``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from chatd import codec


def text(value: Any) -> str:
    """A reply's bytes as text ("" for none)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return "" if value is None else str(value)


@dataclass(frozen=True)
class Left:
    """LEAVE's and UNREGISTER's answer: the room left ("": none), and
    whether it went with its last member."""

    room_id: str
    deleted: bool

    @classmethod
    def decode(cls, reply: list[Any]) -> "Left":
        return cls(text(reply[0]), int(reply[1]) == 1)


@dataclass(frozen=True)
class Created:
    """CREATE's answer: "ok" (with the room's creation sequence and the room
    left on the way), "taken" (the ID is in use) or "gone"."""

    outcome: str
    seq: int = 0
    left: Left = Left("", False)

    @classmethod
    def decode(cls, reply: list[Any]) -> "Created":
        outcome = text(reply[0])
        if outcome != "ok":
            return cls(outcome)
        return cls(outcome, int(reply[2]), Left.decode(reply[3:5]))


@dataclass(frozen=True)
class Joined:
    """JOIN's answer: "ok" or "same" (already in it) with what the client
    learns of the room; else "nf", "banned", "nick" or "gone"."""

    outcome: str
    name: str = ""
    created_at: str = ""
    created_by: str = ""
    seq: int = 0
    last_id: int = 0
    left: Left = Left("", False)
    recovered: Optional[bool] = None  # None: no ``since`` was asked for
    messages: list[Any] = field(default_factory=list)  # what came after ``since``
    owner: str = ""
    private: bool = False

    @classmethod
    def decode(cls, reply: list[Any]) -> "Joined":
        outcome = text(reply[0])
        if outcome not in ("ok", "same"):
            return cls(outcome)
        recovered = int(reply[8])
        return cls(
            outcome, text(reply[1]), text(reply[2]), text(reply[3]), int(reply[4]), int(reply[5]),
            Left.decode(reply[6:8]), None if recovered < 0 else recovered == 1,
            [json.loads(payload) for payload in reply[9]], text(reply[10]), text(reply[11]) == "1",
        )


@dataclass(frozen=True)
class ListedRoom:
    """One room of LIST's answer (a flat list, six values a room)."""

    seq: int
    entry: dict[str, Any]

    @classmethod
    def decode_all(cls, flat: list[Any]) -> list["ListedRoom"]:
        return [
            cls(int(float(seq)), codec.room_entry(
                text(room_id), text(name), int(members), text(created_at), text(private) == "1"))
            for room_id, name, members, created_at, seq, private in (flat[i:i + 6] for i in range(0, len(flat), 6))
        ]


@dataclass(frozen=True)
class Read:
    """A read of a room (MEMBERS, HISTORY, ROOM) that Redis may refuse:
    "notin" (the reader is not a member there), "gone" (no record of it),
    "noroom" (in no room); None when it is answered."""

    refusal: Optional[str]

    @classmethod
    def of(cls, reply: Any) -> "Read":
        if isinstance(reply, list):
            return cls(None)
        return cls(text(reply))


def members_of(flat: list[Any]) -> list[dict[str, Any]]:
    """MEMBERS' answer (four values a member) as the members reply has them."""
    from chatd.rooms.state import member_entry

    return [
        member_entry(text(client), text(nick) or None, text(user) or None, text(role))
        for client, nick, user, role in (flat[i:i + 4] for i in range(0, len(flat), 4))
    ]


@dataclass(frozen=True)
class RoomState:
    """ROOM's answer: what the room rules read of the client's room, and
    the room's version, which APPLY checks."""

    room_id: str
    version: str
    name: str
    owner: str
    private: bool
    moderators: frozenset[str]
    invited: frozenset[str]
    banned: frozenset[str]
    members: list[tuple[str, Optional[str]]]  # (client, user), in join order
    target_user: Optional[str]
    target_room: Optional[str]

    @classmethod
    def decode(cls, reply: list[Any]) -> "RoomState":
        flat = reply[9]

        def names(i: int) -> frozenset[str]:
            return frozenset(text(x) for x in reply[i])

        return cls(
            text(reply[1]), text(reply[2]), text(reply[3]), text(reply[4]), text(reply[5]) == "1",
            names(6), names(7), names(8),
            [(text(flat[i]), text(flat[i + 1]) or None) for i in range(0, len(flat), 2)],
            text(reply[10]) or None, text(reply[11]) or None,
        )


@dataclass(frozen=True)
class RoomEvent:
    """A room channel's event line: ``e<kind> <client> <length> <user><nick>``
    (the user is ``length`` bytes)."""

    kind: str
    subject: str
    user: Optional[str]
    nick: Optional[str]

    @classmethod
    def decode(cls, data: bytes) -> "RoomEvent":
        kind, subject, length, rest = data[1:].split(b" ", 3)
        size = int(length)
        user, nick = rest[:size].decode("utf-8"), rest[size:].decode("utf-8")
        return cls(kind.decode(), subject.decode(), user or None, nick or None)


@dataclass(frozen=True)
class Kick:
    """A room channel's kick line: ``k<client> <by> <reason>``."""

    subject: str
    by: str
    reason: str

    @classmethod
    def decode(cls, data: bytes) -> "Kick":
        subject, by, reason = data[1:].split(b" ", 2)
        return cls(subject.decode(), by.decode(), reason.decode("utf-8"))


def batch(data: bytes) -> tuple[list[tuple[str, bytes]], int]:
    """A room channel's batch of messages, ``M<id> <sender> <payload>`` a
    line with ids rising: (sender, payload) each, and the last id.  The hot
    path of a cluster node: each line is split once."""
    messages: list[tuple[str, bytes]] = []
    add = messages.append
    last = b"0"
    for line in data[1:].split(b"\n"):
        last, sender, payload = line.split(b" ", 2)
        add((sender.decode(), payload))
    return messages, int(last)
