"""
A room as a cluster node's rules read it in Redis.

:class:`Facts` answers the room rules (:class:`chatd.rooms.rules.RoomView`)
from what a ``LOOK`` read, or, on a first try, from what is assumed of
most rooms (public, nobody listed, no name claimed), and records every
fact it gave as a guard: the scripts apply a decision only while its
guards still read as the rule read them, else the node reads the room and
decides again.  So a decision made on a node stands only if it is the one
the rule gives on the room as it is when it is applied: the outcome of
some serial order, whatever the other nodes do meanwhile.

Redis keys here are without the prefix (the scripts add it); the scripts
document the reads, guards and changes (``chatd.backplane.scripts``).
"""

from __future__ import annotations

from typing import Any, Optional

from chatd.backplane.lines import text, unwho
from chatd.names import fold
from chatd.rooms.state import Client, names_of

#: One read: [command, key, args...] (see scripts.read).
Probe = list[Any]
#: One guard: [command, key, args..., expected] (see scripts.holds).
Guard = list[Any]


def who(nick: Optional[str], user: Optional[str]) -> str:
    """What a client's events carry after its ID: ``<length> <user><nick>``,
    the user ``length`` bytes long (chatd.backplane.lines.RoomEvent)."""
    user = user or ""
    return f"{len(user.encode('utf-8'))} {user}{nick or ''}"


def event_line(kind: str, client_id: str, nick: Optional[str], user: Optional[str]) -> str:
    """A room event as the channel carries it."""
    return f"e{kind} {client_id} {who(nick, user)}"


def identity(client: Client) -> tuple[str, str, str, str]:
    """A client as the scripts record it: who, claim (its folded nick),
    counted (its folded user), user."""
    nick, user = client.nick, client.user
    return who(nick, user), fold(nick) if nick else "", fold(user) if user else "", user or ""


class Facts:
    """One room as the rules read it (a RoomView), recording guards."""

    def __init__(
        self,
        room_id: str,
        private: bool = False,
        listed: Optional[dict[tuple[str, str], bool]] = None,
        holders: Optional[dict[str, tuple[str, Optional[str]]]] = None,
        users: Optional[set[str]] = None,
        whos: Optional[dict[str, tuple[Optional[str], Optional[str]]]] = None,
    ) -> None:
        self._room_id = room_id
        self._private = private
        self._listed = listed or {}
        self._holders = holders or {}
        self._users = users or set()
        self._whos = whos or {}
        self.guards: list[Guard] = []

    @property
    def room_id(self) -> str:
        return self._room_id

    @property
    def private(self) -> bool:
        self.guards.append(["HGET", f"room:{self._room_id}", "private", "1" if self._private else "0"])
        return self._private

    def listed(self, which: str, keys: list[str]) -> bool:
        found = False
        for key in keys:
            on = self._listed.get((which, key), False)
            self.guards.append(["SISMEMBER", f"{which}:{self._room_id}", key, "1" if on else "0"])
            found = found or on
        return found

    def nick_holders(self, folded: str) -> list[tuple[str, Optional[str]]]:
        holder = self._holders.get(folded)
        self.guards.append(["HGET", f"claims:{self._room_id}", folded, holder[0] if holder else ""])
        if holder is None:
            return []
        self.guards.append(["HGET", f"client:{holder[0]}", "counted", holder[1] or ""])
        return [holder]

    def has_user(self, folded: str) -> bool:
        on = folded in self._users
        self.guards.append(["HEXISTS", f"counts:{self._room_id}", folded, "1" if on else "0"])
        return on

    def holder_who(self, client_id: str) -> tuple[Optional[str], Optional[str]]:
        """The (nick, user) of a name's holder, as read."""
        return self._whos.get(client_id, (None, None))

    # -- reading the room ----------------------------------------------------

    @staticmethod
    def probes(room_id: str, client: Client, nick: Optional[str], user: Optional[str]) -> list[Probe]:
        """What to read for a decision about ``client`` (as ``nick`` and
        ``user``) in the room: its privacy, the client's keys on its lists,
        and who holds or is counted under the names it would clash with."""
        keys = names_of(client.client_id, user)
        probes: list[Probe] = [
            ["HGET", f"room:{room_id}", "private"],
            ["SMISMEMBER", f"invited:{room_id}", *keys],
            ["SMISMEMBER", f"banned:{room_id}", *keys],
        ]
        for name in _names(nick, user):
            at = len(probes) + 1  # the scripts count reads from 1
            probes += [
                ["HGET", f"claims:{room_id}", name],
                ["HGET", f"client:${at}", "counted"],
                ["HGET", f"client:${at}", "who"],
                ["HEXISTS", f"counts:{room_id}", name],
            ]
        return probes

    @classmethod
    def read(
        cls, room_id: str, client: Client, nick: Optional[str], user: Optional[str], answers: list[Any],
    ) -> "Facts":
        """The facts from the answers to :meth:`probes`."""
        keys = names_of(client.client_id, user)
        listed = {}
        for which, flags in (("invited", answers[1]), ("banned", answers[2])):
            for key, flag in zip(keys, flags, strict=True):
                listed[(which, key)] = int(flag) == 1
        holders: dict[str, tuple[str, Optional[str]]] = {}
        users: set[str] = set()
        whos: dict[str, tuple[Optional[str], Optional[str]]] = {}
        for i, name in enumerate(_names(nick, user)):
            holder, counted, holder_who, counted_here = answers[3 + 4 * i : 7 + 4 * i]
            holder = text(holder)
            if holder:
                holders[name] = (holder, text(counted) or None)
                whos[holder] = unwho(text(holder_who))
            if int(counted_here or 0) == 1:
                users.add(name)
        return cls(room_id, text(answers[0]) == "1", listed, holders, users, whos)


def _names(nick: Optional[str], user: Optional[str]) -> list[str]:
    """The folded names a client's nick and user clash with, once each."""
    names: list[str] = []
    for name in (nick, user):
        if name:
            folded = fold(name)
            if folded not in names:
                names.append(folded)
    return names
