"""
Where a chat's rooms are kept, as the room rules read and change them: one
interface, two stores today (one process's memory,
:class:`chatd.core.ChatCore`; a cluster's Redis,
:class:`chatd.backplane.redis_store.RedisRooms`), and the one loop that
decides through them (:func:`decide`).

A store answers the rules' reads as a :class:`~chatd.rooms.rules.RoomView`
and applies what they decide only while what they read still holds.  A
decision is first made on what the store can say without reading
(:meth:`RoomStore.assume`: the room itself in memory; what most rooms are
in Redis), then, if that no longer holds, on the room as read, and so on.
A store that reads for free says its assumption is exact, and a refusal
made on it stands at once.  Free of I/O: a store's answers are awaitables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Coroutine, Generator, Optional, Protocol, TypeVar, Union

from chatd.errors import ChatError, Unavailable
from chatd.rooms.rules import RoomView
from chatd.rooms.state import Client

T = TypeVar("T")

#: How many times a decision is made again on a room that changed between
#: the decision and its application, before the client is told to retry.
DECISIONS = 5


@dataclass(frozen=True)
class Enter:
    """The client joins the room (``since``: the last message id it saw);
    the members whose nick is its user's name lose it (``takes``)."""

    since: Optional[int] = None
    takes: list[str] = field(default_factory=list)
    now: float = 0.0  # for the events it makes
    keep: bool = False  # the client stays in the rooms it is in


@dataclass(frozen=True)
class Rename:
    """The client, in the room, takes ``nick``."""

    nick: str
    now: float = 0.0


@dataclass(frozen=True)
class Become:
    """The client, in the room, is ``user`` from now on; the members whose
    nick is that name lose it (``takes``)."""

    user: str
    takes: list[str] = field(default_factory=list)
    now: float = 0.0


#: What a decision about a client in a room changes.
Change = Union[Enter, Rename, Become]


class RoomStore(Protocol):
    """What a store of rooms does for :func:`decide`."""

    def assume(self, room_id: str) -> tuple[RoomView, bool]:
        """The room as it may be decided on without reading, and whether
        that is exactly the room (a refusal made on it then stands)."""
        ...

    def look(
        self, room_id: str, client: Client, nick: Optional[str], user: Optional[str], reader: bool,
    ) -> Awaitable[RoomView]:
        """The room as it is, for a decision about ``client`` as ``nick``
        and ``user`` (``reader``: a member reads its own room, and is
        refused if it is no member there any more)."""
        ...

    def apply(self, room_id: str, client: Client, view: RoomView, change: Change) -> Awaitable[Optional[Any]]:
        """Apply ``change`` if what the rule read of ``view`` still holds:
        the outcome (as the store's chat needs it), or None if it no
        longer does."""
        ...


async def decide(
    store: RoomStore,
    room_id: str,
    client: Client,
    refusal: Callable[[RoomView], Optional[ChatError]],
    change: Callable[[RoomView], Change],
    nick: Optional[str] = None,
    user: Optional[str] = None,
    reader: bool = False,
) -> Any:
    """
    Decide about ``client`` (as ``nick`` and ``user``) in a room by a rule
    (``refusal``), and apply what it changes (``change``, made from the
    view the rule read, so that what it reads is guarded too): the store's
    outcome, or the rule's refusal.
    """
    view, exact = store.assume(room_id)
    for _ in range(DECISIONS):
        refused = refusal(view)
        if refused is not None and exact:
            raise refused
        if refused is None:
            outcome = await store.apply(room_id, client, view, change(view))
            if outcome is not None:
                return outcome
        view, exact = await store.look(room_id, client, nick, user, reader), True
    raise Unavailable()  # the room kept changing under the decision


class Done:
    """An awaitable whose answer is known already (a memory store's)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        return self.value
        yield  # a generator that never suspends


def settled(coroutine: Coroutine[Any, Any, T]) -> T:
    """The result of a decision on a store whose every answer is known
    already (memory): it never waits, so it is run to its end here."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("a decision on a memory store waited")
