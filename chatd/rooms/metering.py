"""
What each client may spend: its chat messages, room creations and other
commands, each a token bucket on the client, and large replies charged as
several commands.  A client refused twice its burst in a row is closed.
Free of I/O; the time is the caller's.
"""

from __future__ import annotations

from chatd.errors import CLOSE_POLICY_VIOLATION, NotInRoom, RateLimited
from chatd.ratelimit import TokenBucket
from chatd.rooms.rules import REPLY_UNIT
from chatd.rooms.state import Client, Limits

#: The close reason for a client that keeps sending far over its limit.
HAMMERING = "Rate limit exceeded repeatedly"


class Metered:
    """The rate checks of a chat's clients, under its ``limits``."""

    limits: Limits

    def check_create_rate(self, client: Client, now: float) -> None:
        """Take a room-creation token or raise RateLimited."""
        limits = self.limits
        if limits.creates_per_minute > 0:
            if client.create_bucket is None:
                client.create_bucket = TokenBucket(
                    limits.creates_per_minute / 60, limits.creates_burst, now)
            wait = client.create_bucket.take(now)
            if wait:
                raise RateLimited(wait)

    def check_message_rate(self, client: Client, now: float, in_room: bool = True) -> None:
        """
        Take a message token or raise RateLimited; a client refused twice
        its burst in a row is closed with 1008.  ``in_room``: a message to
        the client's room (a direct message needs none).
        """
        limits = self.limits
        if limits.messages_per_second <= 0:
            return
        if in_room and client.room is None:
            raise NotInRoom("You must join a room first")
        if client.message_bucket is None:
            client.message_bucket = TokenBucket(limits.messages_per_second, limits.messages_burst, now)
        self._take(client, client.message_bucket, limits.messages_burst, now)

    def check_command_rate(self, client: Client, now: float) -> None:
        """Take a command token (any command but a chat or direct message)
        or raise RateLimited, as :meth:`check_message_rate` does."""
        limits = self.limits
        if limits.commands_per_second <= 0:
            return
        if client.command_bucket is None:
            client.command_bucket = TokenBucket(limits.commands_per_second, limits.commands_burst, now)
        self._take(client, client.command_bucket, limits.commands_burst, now)

    def charge_reply(self, client: Client, size: int, now: float) -> None:
        """A reply of ``size`` bytes was sent: one more command token for
        each REPLY_UNIT of it (a history page, a long list)."""
        if client.command_bucket is not None and size >= REPLY_UNIT:
            client.command_bucket.charge(size // REPLY_UNIT, now)

    def charge_commands(self, client: Client, count: int, now: float) -> None:
        """``count`` commands' worth done by one (a ``sync`` entering many
        rooms costs what as many joins would)."""
        if client.command_bucket is not None and count > 0:
            client.command_bucket.charge(count, now)

    @staticmethod
    def _take(client: Client, bucket: TokenBucket, burst: int, now: float) -> None:
        """A token from ``bucket``, or RateLimited; a client refused twice
        the burst in a row, by any of its limits, is closed with 1008."""
        wait = bucket.take(now)
        if not wait:
            client.strikes = 0
            return
        client.strikes += 1
        if client.strikes >= 2 * burst:
            client.sink.close(CLOSE_POLICY_VIOLATION, HAMMERING)
        raise RateLimited(wait)
