"""
The room rules as pure functions: who succeeds an owner, who may join,
whose nick clashes with whose, how full a room's lists may get, and how
each refusal and each owner's action is answered.  They read the state
they are given and say what follows; the chat applies it.  One process
decides through them; a cluster's Redis scripts still keep their own copy
of some (docs/development.md, "The room rules and their stores").
"""

from __future__ import annotations

from typing import Any, Optional

from chatd.codec import Manage
from chatd.errors import Banned, ChatError, NotAllowed, RoomNotFound
from chatd.names import fold
from chatd.rooms.state import Client, Room, listed, names_of


def successor(members: dict[str, Client], moderators: Optional[set[str]]) -> Client:
    """Who owns a room after its owner: the longest-present moderator, else
    the longest-present member (``members`` is in the order they joined)."""
    if moderators:
        for client_id, member in members.items():
            if client_id in moderators:
                return member
    return next(iter(members.values()))


def refusal(code: str, command: Manage, room_name: str) -> ChatError:
    """The error for a room action refused for the reason ``code`` (the
    cluster's MANAGE script answers these codes)."""
    action, target = command.action, command.target
    if code == "role":
        if action in ("op", "deop"):
            return NotAllowed(f"Only the room's owner may {action}")
        return NotAllowed(f"Only the room's owner or a moderator may {action}")
    if code == "moderator":
        return NotAllowed(f"Only the room's owner may {action} a moderator")
    text = {
        "notbanned": f"'{target}' is not banned from this room",
        "full": f"This room's {'ban' if action == 'ban' else 'invitation'} list is full "
                f"({MAX_LISTED} entries); remove some first",
        "notin": f"Client {target} is not in this room",
        "public": f"Room '{room_name}' is public: anyone may join",
        "banned": f"'{target}' is banned from this room; unban it first",
        "isowner": f"Client {target} is the room's owner",
        "notmod": f"Client {target} is not a moderator",
        "self": f"You cannot {action} yourself",
        "owner": f"The room's owner cannot be {'kicked' if action == 'kick' else 'banned'}",
    }.get(code)
    if text is None:
        raise ValueError(f"unknown refusal {code!r}")
    return ChatError(text)


#: Reply bytes that cost one more command token (ChatCore.charge_reply).
REPLY_UNIT = 16 * 1024


#: The most entries a room's invitations, and its bans, may hold.
MAX_LISTED = 1000


def room_for(entries: Optional[set[str]], keys: list[str]) -> bool:
    """Whether ``keys`` fit in a room's list (as new entries, or there already)."""
    return entries is None or len(entries) < MAX_LISTED or all(key in entries for key in keys)


def done_reply(command: Manage) -> dict[str, Any]:
    """The success reply to a room action."""
    target = command.target
    message = {
        "invite": f"Invited '{target}'",
        "kick": f"Kicked '{target}'",
        "ban": f"Banned '{target}'",
        "unban": f"Unbanned '{target}'",
        "op": f"'{target}' is now a moderator",
        "deop": f"'{target}' is no longer a moderator",
    }[command.action]
    return {"status": "success", "message": message}


def nick_taken(room: Room, nick: str, client: Client) -> bool:
    """
    Another member has this nick, or is the authenticated user of that
    name (as people read names: :func:`chatd.names.fold`); a user's own
    connections share them.  A user's own name is never taken by
    another's nick: the name wins (:meth:`_claim_name`).
    """
    folded = fold(nick)
    user = fold(client.user) if client.user is not None else None
    own_name = folded == user
    return any(
        m is not client and (user is None or m.user is None or fold(m.user) != user) and (
            (not own_name and m.nick is not None and fold(m.nick) == folded)
            or (m.user is not None and fold(m.user) == folded))
        for m in room.members.values()
    )



def join_refusal(room: Room, client: Client) -> Optional[ChatError]:
    """Why ``client`` may not join ``room`` (None: it may): a private room
    it is not invited to is as if there were none (a ban included: nothing
    leaks); a ban; a nick another member has."""
    keys = names_of(client.client_id, client.user)
    if room.private and not listed(room.invited, keys):
        return RoomNotFound(room.room_id)
    if listed(room.banned, keys):
        return Banned(room.room_id)
    if client.nick is not None and nick_taken(room, client.nick, client):
        return ChatError(f"Nick '{client.nick}' is taken in room {room.room_id}; choose another with \"nick\"")
    return None
