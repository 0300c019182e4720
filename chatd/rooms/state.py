"""
The state the room rules read: clients, rooms, the limits, and where a
client's frames go (its :class:`Sink`).  Free of I/O, as the rules are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Container, Optional, Protocol

from chatd.names import fold
from chatd.ratelimit import TokenBucket


class Sink(Protocol):
    """
    One member's connection, as the core sees it.

    ``deliver`` must not call back into the core; it may raise
    :class:`~chatd.errors.SinkGone` (the connection is closing itself) or any
    other exception (a bug), and the core then removes the member.
    """

    def deliver(self, frame: Any) -> None:
        """Queue one prepared frame for sending; never block."""

    def close(self, code: int, reason: str) -> None:
        """Begin closing the connection with a WebSocket close code."""


def member_entry(client_id: str, nick: Optional[str], user: Optional[str], role: str) -> dict[str, Any]:
    """One entry of a "members" reply; "user" for an authenticated member."""
    entry: dict[str, Any] = {"client_id": client_id, "nick": nick}
    if user is not None:
        entry["user"] = user
    entry["role"] = role
    return entry


#: Random bytes drawn from the system at a time for IDs (a system call per
#: ID is a noticeable part of what a connection costs), and what is left.
_RANDOM_CHUNK = 4096


_random: list[Any] = [b"", 0]  # the bytes, and the offset of the next ID's


def _forget_random() -> None:
    # A forked worker must not hand out the same IDs as its parent.
    _random[0], _random[1] = b"", 0


os.register_at_fork(after_in_child=_forget_random)


def random_id() -> str:
    """
    8 random hex characters, like the seed server's IDs (the first 8 of a
    random UUID's hex, which are 32 random bits): 4 bytes of ``os.urandom``,
    read 4 KiB at a time.
    """
    chunk: bytes = _random[0]
    at: int = _random[1]
    if at >= len(chunk):
        chunk = _random[0] = os.urandom(_RANDOM_CHUNK)
        at = 0
    _random[1] = at + 4
    return chunk[at:at + 4].hex()


@dataclass(frozen=True)
class Limits:
    """Per-client rate limits (0 turns one off) and the history size."""

    messages_per_second: float = 20.0
    messages_burst: int = 40
    creates_per_minute: float = 10.0
    creates_burst: int = 10
    # Every other command (history, members, list, room actions, ...): one
    # token each, and one more for each REPLY_UNIT bytes of its reply.
    commands_per_second: float = 10.0
    commands_burst: int = 20
    history_size: int = 100
    history_bytes: int = 512 * 1024
    history_memory: int = 64 * 1024 * 1024  # over all rooms (0: no limit but the rooms')
    rooms_per_connection: int = 100  # rooms one connection may be in at once ("keep")


class Client:
    """One connected client."""

    __slots__ = (
        "client_id", "sink", "room", "nick", "user", "events",
        "message_bucket", "create_bucket", "command_bucket", "strikes", "receiving", "blocked", "tagged",
        "others",
    )

    def __init__(self, client_id: str, sink: Sink) -> None:
        self.client_id = client_id
        self.sink = sink
        self.room: Optional[Room] = None
        self.nick: Optional[str] = None
        self.user: Optional[str] = None  # the authenticated user, if any
        self.events = False  # opted in to room events
        self.message_bucket: Optional[TokenBucket] = None  # made on first use
        self.create_bucket: Optional[TokenBucket] = None
        self.command_bucket: Optional[TokenBucket] = None
        self.strikes = 0  # messages refused in a row by the rate limit
        # A cluster node's local view only: the rooms whose broadcasts reach
        # this client here, by ID (they can differ from its rooms while a
        # join is on its way; see chatd.backplane.membership).
        self.receiving: Optional[dict[str, Room]] = None
        # Whose direct messages it does not receive: c:ID and u:NAME keys.
        self.blocked: Optional[set[str]] = None
        # It has named a room with "room_id": the broadcasts it receives
        # name theirs (a client that never has gets the seed's bytes).
        self.tagged = False
        # The rooms it is in besides ``room`` (its current one), in the
        # order entered: a client that asked to keep rooms (chatd.rooms.many).
        self.others: Optional[dict[str, Room]] = None

    def __repr__(self) -> str:
        return f"<Client {self.client_id}>"


def tag(client: Client) -> None:
    """``client`` has named a room: from now on the broadcasts it receives
    name theirs, in whichever room it is."""
    if client.tagged:
        return
    client.tagged = True
    # Its rooms, and on a cluster node the rooms it receives in here (the
    # same, but while a join is on its way).
    rooms = {id(room): room for room in (client.room, *(client.others or {}).values(),
                                         *(client.receiving or {}).values()) if room is not None}
    for room in rooms.values():
        if room.members.get(client.client_id) is client:
            room.tagged += 1


class Room:
    """
    One room and its members, in the order they joined (so the longest
    present first), and who may do what in it: its owner (a client ID),
    its moderators, and for a private room who is invited; who is banned.
    Invitations and bans name a client (``c:ID``) or a user (``u:NAME``).
    """

    __slots__ = (
        "room_id", "name", "created_at", "created_by", "members", "seq", "last_id",
        "owner", "private", "moderators", "invited", "banned",
        "persistent", "owner_user", "moderator_users", "assigned", "tagged",
    )

    def __init__(self, room_id: str, name: str, created_at: str, created_by: str, seq: int) -> None:
        self.room_id = room_id
        self.name = name
        self.created_at = created_at
        self.created_by = created_by
        self.members: dict[str, Client] = {}
        self.seq = seq  # creation order, the cursor of "list"
        self.last_id = 0  # the id of the room's latest message
        self.owner = created_by
        self.private = False
        # Made on first use: most rooms never have any.
        self.moderators: Optional[set[str]] = None
        self.invited: Optional[set[str]] = None
        self.banned: Optional[set[str]] = None
        # A lasting room (chatd.rooms.lasting): kept by the durable store,
        # its owner and moderators users rather than connections, and the
        # id of its latest message handed out (``last_id`` is the latest
        # stored and delivered).
        self.persistent = False
        self.owner_user: Optional[str] = None
        self.moderator_users: Optional[set[str]] = None
        self.assigned = 0
        # How many of ``members`` are tagged clients: while none is, a
        # broadcast has one frame, the seed's.
        self.tagged = 0

    def add_member(self, client: Client) -> None:
        """``client`` receives what the room gets."""
        if self.members.get(client.client_id) is not client:
            self.members[client.client_id] = client
            if client.tagged:
                self.tagged += 1

    def remove_member(self, client_id: str) -> None:
        """The client no longer receives what the room gets."""
        member = self.members.pop(client_id, None)
        if member is not None and member.tagged:
            self.tagged -= 1

    def role(self, client_id: str) -> str:
        """"owner", "moderator" or "member"."""
        if self.persistent:
            member = self.members.get(client_id)
            if member is not None and member.user is not None:
                role = self.user_role(member.user)
                if role != "member":
                    return role
        if client_id == self.owner:
            return "owner"
        if self.moderators and client_id in self.moderators:
            return "moderator"
        return "member"

    def user_role(self, user: str) -> str:
        """A user's role in a lasting room: "owner", "moderator" or "member"."""
        if user == self.owner_user:
            return "owner"
        if self.moderator_users and user in self.moderator_users:
            return "moderator"
        return "member"

    def owner_keys(self) -> list[str]:
        """The keys that name the room's owner on an invitation or ban list."""
        if self.persistent:
            return [f"u:{self.owner_user}"] + [
                f"c:{m.client_id}" for m in self.members.values() if m.user == self.owner_user]
        owner = self.members.get(self.owner)
        return names_of(self.owner, owner.user if owner is not None else None)

    # What the rules read of a room (chatd.rooms.rules.RoomView).

    def listed(self, which: str, keys: list[str]) -> bool:
        """Whether any of ``keys`` is on the "invited" or "banned" list."""
        return listed(self.invited if which == "invited" else self.banned, keys)

    def nick_holders(self, folded: str) -> list[tuple[str, Optional[str]]]:
        """The members whose nick folds to ``folded``: (client ID, folded user)."""
        return [
            (m.client_id, fold(m.user) if m.user is not None else None)
            for m in self.members.values() if m.nick is not None and fold(m.nick) == folded
        ]

    def has_user(self, folded: str) -> bool:
        """Whether a member is the user whose name folds to ``folded``."""
        return any(m.user is not None and fold(m.user) == folded for m in self.members.values())


def blocks(recipient: Client, sender_id: str, sender_user: Optional[str]) -> bool:
    """Whether ``recipient`` blocked direct messages from this sender."""
    blocked = recipient.blocked
    return blocked is not None and (
        f"c:{sender_id}" in blocked or (sender_user is not None and f"u:{sender_user}" in blocked))


def names_of(client_id: str, user: Optional[str]) -> list[str]:
    """The keys a client's invitations and bans are found under."""
    return [f"c:{client_id}"] if user is None else [f"c:{client_id}", f"u:{user}"]


def listed(entries: Optional[Container[str]], keys: list[str]) -> bool:
    """Whether any of ``keys`` is among ``entries`` (None: there are none)."""
    return entries is not None and any(key in entries for key in keys)
