"""
The room rules as pure functions: who succeeds an owner, who may join,
whose nick clashes with whose, how full a room's lists may get, and how
each refusal and each owner's action is answered.  They read the state
they are given and say what follows; the chat applies it.  One process
decides through them, and so does a cluster node, on the room as it reads
it in Redis (docs/development.md, "The room rules and their stores").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol

from chatd.codec import Manage
from chatd.errors import Banned, BannedAs, ChatError, NotAllowed, RoomNotFound
from chatd.names import fold
from chatd.rooms.state import Client, Room, blocks, listed, names_of


def successor(members: dict[str, Client], moderators: Optional[set[str]]) -> Client:
    """Who owns a room after its owner: the longest-present moderator, else
    the longest-present member (``members`` is in the order they joined)."""
    if moderators:
        for client_id, member in members.items():
            if client_id in moderators:
                return member
    return next(iter(members.values()))


def invited_at_creation(client: Client, private: bool) -> list[str]:
    """Who a new room invites: for a private room its creator, who may come
    back while it lives, like anyone invited."""
    return names_of(client.client_id, client.user) if private else []


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


class RoomView(Protocol):
    """
    What the rules read of a room, as a store answers it: one process's
    :class:`~chatd.rooms.state.Room` from its members, a cluster node from
    what it read of the room in Redis (recording each fact it gives, so that
    a change is applied only while those facts still hold).
    """

    @property
    def room_id(self) -> str: ...

    @property
    def private(self) -> bool: ...

    def listed(self, which: str, keys: list[str]) -> bool:
        """Whether any of ``keys`` is on the room's "invited" or "banned" list."""
        ...

    def nick_holders(self, folded: str) -> list[tuple[str, Optional[str]]]:
        """The members whose nick folds to ``folded``: (client ID, folded user)."""
        ...

    def has_user(self, folded: str) -> bool:
        """Whether a member is the authenticated user whose name folds to ``folded``."""
        ...


def nick_taken(room: RoomView, nick: str, client: Client) -> bool:
    """
    Another member has this nick, or is the authenticated user of that
    name (as people read names: :func:`chatd.names.fold`); a user's own
    connections share them.  A user's own name is never taken by
    another's nick: the name wins (:func:`name_holders`).
    """
    folded = fold(nick)
    user = fold(client.user) if client.user is not None else None
    if folded == user:
        return False
    for holder, holder_user in room.nick_holders(folded):
        if holder != client.client_id and (user is None or holder_user != user):
            return True
    return room.has_user(folded)


def name_holders(room: RoomView, client: Client) -> list[str]:
    """The members of ``room`` whose nick reads as ``client``'s user name
    (that user's own connections aside): an authenticated name wins over a
    nick, so each loses it."""
    if client.user is None:
        return []
    user = fold(client.user)
    return [holder for holder, holder_user in room.nick_holders(user) if holder_user != user]


def hears_invitation(recipient: Client, room_id: str, by_id: str, by_user: Optional[str]) -> bool:
    """Whether a connection an invitation names is told of it: if it asked
    for events, is not in that room already, and does not block the inviter."""
    in_it = recipient.room is not None and recipient.room.room_id == room_id
    return recipient.events and not in_it and not blocks(recipient, by_id, by_user)


def join_refusal(room: RoomView, client: Client) -> Optional[ChatError]:
    """Why ``client`` may not join ``room`` (None: it may): a private room
    it is not invited to is as if there were none (a ban included: nothing
    leaks); a ban; a nick another member has."""
    keys = names_of(client.client_id, client.user)
    if room.private and not room.listed("invited", keys):
        return RoomNotFound(room.room_id)
    if room.listed("banned", keys):
        return Banned(room.room_id)
    if client.nick is not None and nick_taken(room, client.nick, client):
        return ChatError(f"Nick '{client.nick}' is taken in room {room.room_id}; choose another with \"nick\"")
    return None


def nick_refusal(room: Optional[RoomView], client: Client, nick: str) -> Optional[ChatError]:
    """Why ``client`` may not take ``nick`` in ``room`` (None: it may)."""
    if room is not None and nick_taken(room, nick, client):
        return ChatError(f"Nick '{nick}' is already taken in this room")
    return None


def auth_refusal(room: Optional[RoomView], user: str) -> Optional[ChatError]:
    """Why a client in ``room`` may not become ``user``: the room admits it
    as a join by that user would, so a ban of the user refuses it."""
    if room is not None and room.listed("banned", [f"u:{user}"]):
        return BannedAs(user, room.room_id)
    return None


def visible(room: RoomView, client: Optional[Client], in_it: bool) -> bool:
    """Whether ``client`` sees ``room`` listed: a private room only its
    members and whoever is invited do."""
    if not room.private or in_it:
        return True
    return client is not None and room.listed("invited", names_of(client.client_id, client.user))


@dataclass(frozen=True)
class Changes:
    """What an owner's or a moderator's action changes in a room, for the
    chat to apply in this order: the lists, the roles, who is put out (each
    told why, the others seeing a leave), and who hears of an invitation."""

    ban: frozenset[str] = frozenset()
    unban: frozenset[str] = frozenset()
    invite: frozenset[str] = frozenset()
    uninvite: frozenset[str] = frozenset()
    op: Optional[str] = None
    deop: Optional[str] = None
    remove: tuple[str, ...] = ()
    tell_invited: Optional[str] = None  # the client ID or user an invitation names


def manage(
    room: Room, actor: Client, command: Manage, target_user: Optional[str], target_room: Optional[str],
) -> Changes:
    """
    The changes an action of ``actor`` in ``room`` makes, or the refusal
    (a ChatError) that says why it makes none.  ``target_user`` and
    ``target_room`` are what is known of the client the action names (its
    user, and the room it is in; None for a client that does not exist, so
    that it is answered as one in another room: the errors tell nobody which
    client IDs are in use).
    """
    action, target_id = command.action, command.client_id
    role = room.role(actor.client_id)
    if (role != "owner") if action in ("op", "deop") else (role == "member"):
        raise refusal("role", command, room.name)
    keys = names_of(target_id, target_user) if target_id is not None else [f"u:{command.user}"]
    if action == "unban":
        if not listed(room.banned, keys):
            raise refusal("notbanned", command, room.name)
        return Changes(unban=frozenset(keys))
    if action in ("kick", "op", "deop") and target_room != room.room_id:
        raise refusal("notin", command, room.name)
    if action == "invite":
        if not room.private:
            raise refusal("public", command, room.name)
        if listed(room.banned, keys):
            raise refusal("banned", command, room.name)
        if not room_for(room.invited, keys[:1]):
            raise refusal("full", command, room.name)
        return Changes(invite=frozenset(keys[:1]), tell_invited=command.target)  # a client, or a user
    if action in ("op", "deop"):
        assert target_id is not None
        if room.role(target_id) == "owner":
            raise refusal("isowner", command, room.name)
        if action == "deop" and room.role(target_id) != "moderator":
            raise refusal("notmod", command, room.name)
        return Changes(op=target_id) if action == "op" else Changes(deop=target_id)
    # kick, ban: who goes (a ban: every connection of a user it names).
    if action == "kick":
        assert target_id is not None
        removed = [target_id]
        is_self, is_owner = target_id == actor.client_id, room.role(target_id) == "owner"
    else:
        removed = [m.client_id for m in room.members.values() if listed(keys, names_of(m.client_id, m.user))]
        is_self = listed(keys, names_of(actor.client_id, actor.user))
        is_owner = listed(keys, room.owner_keys())
    if is_self:
        raise refusal("self", command, room.name)
    if is_owner:
        raise refusal("owner", command, room.name)
    if role != "owner" and any(room.role(member) == "moderator" for member in removed):
        raise refusal("moderator", command, room.name)
    if action == "ban" and not room_for(room.banned, keys):
        raise refusal("full", command, room.name)
    return Changes(
        ban=frozenset(keys) if action == "ban" else frozenset(),
        uninvite=frozenset(keys) if room.private else frozenset(),  # back only with a new invitation
        remove=tuple(removed),
    )
