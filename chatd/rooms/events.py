"""
What the chat reports as it happens (rooms made and gone, owners' actions,
messages, deliveries), for logs, metrics and the message log
(:class:`chatd.observers.Observers` is the daemon's).  Free of I/O.
"""

from __future__ import annotations

from typing import Any

from chatd.codec import Manage
from chatd.rooms.state import Client, Room


class CoreEvents:
    """
    Told what happens in the core, for logs, metrics and the message log;
    every method does nothing here.  Implementations must not call back into
    the core.
    """

    def room_created(self, room: Room, client: Client) -> None:
        """``client`` created ``room``."""

    def room_deleted(self, room: Room) -> None:
        """``room`` lost its last member and is gone."""

    def message_sent(
        self, room: Room, sender: Client, message: dict[str, Any], recipients: int, size: int
    ) -> None:
        """One broadcast of ``size`` encoded bytes reached ``recipients`` members."""

    def room_action(self, room: Room, client: Client, command: Manage) -> None:
        """``client`` (an owner or a moderator) carried out ``command`` in ``room``."""

    def direct_sent(self, sender: Client, message: dict[str, Any], recipients: int, size: int) -> None:
        """One direct message of ``size`` encoded bytes reached ``recipients`` connections."""

    def delivered(self, copies: int, size: int) -> None:
        """
        Broadcasts from another node of a cluster reached members here:
        ``copies`` deliveries of ``size`` bytes in all (``message_sent``
        counts this node's own).
        """
