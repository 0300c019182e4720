"""
The one exception hierarchy of chatd.

Every error a client can cause is a :class:`ChatError`; its ``message`` is the
text sent on the wire in ``{"status": "error", "message": ...}`` and its
``kind`` is a short stable name for logs and metrics.  Anything that is not a
``ChatError`` is a bug: the adapter logs it and answers a generic text, never
the exception's own.
"""

from __future__ import annotations

# WebSocket close codes chatd sends (RFC 6455, 7.4.1), and why.
#: The server is shutting down.
CLOSE_GOING_AWAY = 1001
#: The client broke a rule: hammering past its rate limit, reading too slowly,
#: too much waiting for a reply.
CLOSE_POLICY_VIOLATION = 1008
#: A bug on the server's side ended the connection.
CLOSE_INTERNAL_ERROR = 1011
#: The service cannot keep the client just now (the cluster's Redis is away).
CLOSE_TRY_AGAIN_LATER = 1013
#: The connection's token expired and was not renewed (a private-use code,
#: RFC 6455 7.4.2).
CLOSE_TOKEN_EXPIRED = 4001


class ChatError(Exception):
    """
    An error caused by the client; safe to show it.  ``extra`` holds fields
    added to the error reply beside ``status`` and ``message``.
    """

    kind = "error"

    def __init__(self, message: str, **extra: object) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class ProtocolError(ChatError):
    """A frame that is not a valid command (bad JSON, wrong shape, ...)."""

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind


class NotAuthenticated(ChatError):
    """A token refused, or an action that needs one (``--guests deny``)."""

    kind = "auth"


class NoRecipient(ChatError):
    """A direct message to no client or user of that name."""

    kind = "no_recipient"

    def __init__(self, to: str) -> None:
        super().__init__(f"No such client or user: {to}")


class RoomNotFound(ChatError):
    """The room named by the client does not exist (any more)."""

    kind = "room_not_found"

    def __init__(self, room_id: str) -> None:
        super().__init__(f"Room {room_id} does not exist")
        self.room_id = room_id


class NotAllowed(ChatError):
    """A room action the client's role does not permit."""

    kind = "permission"


class Banned(ChatError):
    """A join refused: the client, or its user, is banned from the room."""

    kind = "banned"

    def __init__(self, room_id: str) -> None:
        super().__init__(f"You are banned from room {room_id}")


class BannedAs(ChatError):
    """An ``auth`` refused: the user is banned from the room the connection is in."""

    kind = "banned"

    def __init__(self, user: str, room_id: str) -> None:
        super().__init__(f"'{user}' is banned from room {room_id}; leave it before authenticating")


class NotInRoom(ChatError):
    """The command needs the client to be in a room."""

    kind = "not_in_room"


class RateLimited(ChatError):
    """Over a rate limit; ``retry_after`` says when a token will be there."""

    kind = "rate_limit"

    def __init__(self, retry_after: float) -> None:
        super().__init__("Rate limit exceeded", retry_after=round(retry_after, 3))
        self.retry_after = retry_after


class Rejected(ChatError):
    """A moderator refused the message."""

    kind = "moderation"

    def __init__(self) -> None:
        super().__init__("Message rejected by moderation")


class Unavailable(ChatError):
    """
    The action needs the cluster's shared state (Redis), which cannot be
    reached just now; the client may try again.
    """

    kind = "unavailable"

    def __init__(self) -> None:
        super().__init__("Service temporarily unavailable")


class StoreUnreadable(ChatError):
    """
    The durable store could not be read (a database outage): nothing
    changed; the client may retry.
    """

    kind = "unavailable"

    def __init__(self) -> None:
        super().__init__("The store is unavailable; try again later")


class StoreUnavailable(ChatError):
    """
    The durable store could not keep what the action changes (a database
    outage, a full disk): nothing was acknowledged; the client may retry.
    """

    kind = "unavailable"

    def __init__(self) -> None:
        super().__init__("Not stored: the store is unavailable; try again later")


class SinkGone(Exception):
    """
    Raised by a sink's ``deliver`` when the connection behind it has already
    begun to close itself (for example, a client too slow to read): the core
    removes the member quietly.
    """
