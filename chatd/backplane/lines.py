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
class Entered:
    """ENTER's answer: "ok" or "same" (already in it) with the room's
    fields (its last id first, then those asked for), the reads asked for,
    the room left on the way and the payloads after ``since``; else "nf",
    "stale" (decide again) or "gone"."""

    outcome: str
    last_id: int = 0
    fields: list[str] = field(default_factory=list)
    reads: list[Any] = field(default_factory=list)
    left: Left = Left("", False)
    missed: list[Any] = field(default_factory=list)  # decoded messages after ``since``, oldest first

    @classmethod
    def decode(cls, reply: list[Any]) -> "Entered":
        outcome = text(reply[0])
        if outcome not in ("ok", "same"):
            return cls(outcome)
        fields = [text(value) for value in reply[1]]
        return cls(outcome, int(fields[0] or 0), fields[1:], list(reply[2]), Left.decode(reply[3:5]),
                   [json.loads(payload) for payload in reply[5]])


@dataclass(frozen=True)
class ListedRoom:
    """One room of LIST's answer: its ID, creation sequence, member count,
    the fields asked for, and whether each key asked for is in its set."""

    room_id: str
    seq: int
    members: int
    fields: list[str]
    flags: list[bool]

    @classmethod
    def decode_all(cls, rows: list[Any]) -> list["ListedRoom"]:
        return [
            cls(text(room_id), int(float(text(seq))), int(members), [text(f) for f in fields],
                [int(flag) == 1 for flag in flags])
            for room_id, seq, members, fields, flags in rows
        ]


@dataclass(frozen=True)
class Read:
    """A read of a room (LOOK, HISTORY) that Redis may refuse: "notin"
    (the reader is not a member there), "gone" (no record of it); None when
    it is answered."""

    refusal: Optional[str]

    @classmethod
    def of(cls, reply: Any) -> "Read":
        if isinstance(reply, list):
            return cls(None)
        return cls(text(reply))


def unwho(value: Any) -> tuple[Optional[str], Optional[str]]:
    """(nick, user) from what a client's events carry after its ID
    (``<length> <user><nick>``)."""
    data = value if isinstance(value, bytes) else text(value).encode("utf-8")
    length, _, rest = data.partition(b" ")
    size = int(length or 0)
    user, nick = rest[:size].decode("utf-8"), rest[size:].decode("utf-8")
    return nick or None, user or None


@dataclass(frozen=True)
class Members:
    """A room's members as read: (client ID, nick, user) in join order,
    who holds it, and its moderators; for a persistent room, its owner and
    moderators as users."""

    members: list[tuple[str, Optional[str], Optional[str]]]
    owners: frozenset[str]
    moderators: frozenset[str]
    persistent: bool = False
    owner_user: Optional[str] = None
    moderator_users: frozenset[str] = frozenset()

    #: How many reads :meth:`reads` makes.
    READS = 6

    @staticmethod
    def reads(room_id: str, at: int = 1) -> list[list[Any]]:
        """The reads, the first being the ``at``-th of the request."""
        return [["ZRANGE", f"members:{room_id}", 0, -1], ["EACH", at, "client:", "who"],
                ["SMEMBERS", f"owner:{room_id}"], ["SMEMBERS", f"mods:{room_id}"],
                ["HMGET", f"room:{room_id}", "persistent", "owner_user"], ["SMEMBERS", f"umods:{room_id}"]]

    @classmethod
    def decode(cls, answers: list[Any]) -> "Members":
        ids, whos, owners, moderators, lasting, users = answers[:6]
        persistent, owner_user = (text(x) for x in lasting) if isinstance(lasting, list) else ("", "")
        return cls(
            [(text(client_id), *unwho(w)) for client_id, w in zip(ids, whos, strict=True)],
            frozenset(text(x) for x in owners), frozenset(text(x) for x in moderators),
            persistent == "1", owner_user or None, frozenset(text(x) for x in users))

    @property
    def owner(self) -> Optional[str]:
        """The room's owner if it is a member ("" for a room a user owns,
        whoever is in it); None: one is due."""
        ids = {client_id for client_id, _, _ in self.members}
        held = [owner for owner in self.owners if owner in ids]
        if held:
            return held[0]
        return "" if self.owner_user else None


@dataclass(frozen=True)
class RoomState:
    """What the room rules read of a room for an owner's or a moderator's
    action, and the room's version, which the change's guard checks."""

    room_id: str
    version: str
    name: str
    private: bool
    members: Members
    invited: frozenset[str]
    banned: frozenset[str]
    target_user: Optional[str]
    target_room: Optional[str]

    @staticmethod
    def reads(room_id: str, target: Optional[str]) -> list[list[Any]]:
        reads: list[list[Any]] = [
            ["HMGET", f"room:{room_id}", "name", "private", "v"],
            ["SMEMBERS", f"invited:{room_id}"], ["SMEMBERS", f"banned:{room_id}"],
            *Members.reads(room_id, 4),
        ]
        if target:
            # Its user, and whether it is in this room (the one the rules ask of).
            reads += [["HGET", f"client:{target}", "user"], ["SISMEMBER", f"client-rooms:{target}", room_id]]
        return reads

    @classmethod
    def decode(cls, room_id: str, answers: list[Any]) -> "RoomState":
        name, private, version = (text(x) for x in answers[0])
        end = 3 + Members.READS
        user, here = (text(answers[end]), int(answers[end + 1] or 0)) if len(answers) > end else ("", 0)
        return cls(
            room_id, version or "0", name, private == "1", Members.decode(answers[3:end]),
            frozenset(text(x) for x in answers[1]), frozenset(text(x) for x in answers[2]),
            user or None, room_id if here == 1 else None,
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
