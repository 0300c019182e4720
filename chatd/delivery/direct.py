"""
Direct messages: to a client ID or to every connection of a user, and the
blocks that keep them away.  A mixin of :class:`chatd.core.ChatCore`,
free of I/O as it is.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from chatd import codec
from chatd.codec import Block
from chatd.errors import ChatError, NoRecipient
from chatd.rooms.rules import MAX_LISTED
from chatd.rooms.state import Client, blocks


class DirectMessages:
    """The direct messages and blocks of a chat's clients."""

    clients: dict[str, Client]
    users: dict[str, dict[str, Client]]
    events: Any
    _deliver: Callable[..., int]

    def recipients(self, to: str, sender: Client) -> Optional[list[Client]]:
        """The connections a direct message to ``to`` (a client ID, else a
        user name) reaches, the sender's own aside; None: nobody of that name."""
        client = self.clients.get(to)
        if client is not None:
            return [client] if client is not sender else []
        found = self.users.get(to)
        return [c for c in found.values() if c is not sender] if found else None

    def direct(self, client: Client, to: str, body: Any, now: float) -> dict[str, Any]:
        """A direct message (no rate limit here): the sender's reply."""
        recipients = self.recipients(to, client)
        if recipients is None:
            raise NoRecipient(to)
        # Answered as sent, as messengers do, so that a block is not announced.
        recipients = [r for r in recipients if not blocks(r, client.client_id, client.user)]
        message = codec.direct(client.client_id, body, codec.timestamp(now), to, client.nick, client.user)
        payload = codec.encode(message)
        reached = len(recipients) - self._deliver(recipients, payload, now) if recipients else 0
        self.events.direct_sent(client, message, reached, len(payload))
        return codec.MESSAGE_SENT

    def block(self, client: Client, command: Block) -> dict[str, Any]:
        """No direct messages from a user or a client to this connection (or
        again, for an unblock), at most MAX_LISTED of them."""
        key, blocked = command.key, client.blocked
        if command.on:
            if blocked is None:
                blocked = client.blocked = set()
            if key not in blocked and len(blocked) >= MAX_LISTED:
                raise ChatError(f"You block {MAX_LISTED} already; unblock someone first")
            blocked.add(key)
            return {"status": "success", "message": f"Blocked '{command.target}'"}
        if blocked is None or key not in blocked:
            raise ChatError(f"'{command.target}' is not blocked")
        blocked.discard(key)
        return {"status": "success", "message": f"Unblocked '{command.target}'"}
