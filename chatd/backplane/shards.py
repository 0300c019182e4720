"""
Rooms spread over several Redis (``--redis`` given more than once): each
room lives wholly on one of them, its shard, and every node is connected to
all of them.

A room's shard is chosen by rendezvous hashing of the room ID over the
shards' positions in the list: stable (every node, every time, picks the
same one, as long as the nodes list the same URLs in the same order), even,
and adding a shard at the end of the list moves only the rooms it wins.

Each shard is a whole :class:`~chatd.backplane.redis.RedisBackplane`: a
node's lease, its clients and the reaping of dead nodes are kept on each,
so a shard that is lost takes only its own rooms down (and brings them back
by itself when it returns).  The clients are recorded on every shard: a
client ID is unique across all of them, and any shard can route a direct
message.  Rooms, their members, history and channels are on their shard
only.  docs/scaling.md describes what this costs.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any, Optional, Sequence

from twisted.internet.defer import Deferred, DeferredList, succeed

from chatd.backplane import Listener


def _weight(position: int, key: str) -> bytes:
    return hashlib.blake2b(key.encode("utf-8"), digest_size=8, salt=position.to_bytes(8, "big")).digest()


def rendezvous(key: str, count: int) -> int:
    """The position (0 to count - 1) of the shard ``key`` lives on: the one
    with the highest weight for it."""
    return max(range(count), key=lambda position: _weight(position, key))


def preference(key: str, count: int) -> list[int]:
    """Every shard's position, from the one ``key`` lives on down."""
    return sorted(range(count), key=lambda position: _weight(position, key), reverse=True)


class Shards:
    """
    The Redis backplanes a node uses, one per shard: which room is on
    which, and the node's view of them as a whole (for start, stop and
    readiness).
    """

    def __init__(self, shards: Sequence[Any]) -> None:
        if not shards:
            raise ValueError("at least one shard")
        self.all = tuple(shards)
        self.node: str = self.all[0].node
        self._of = lru_cache(maxsize=1 << 16)(self._rendezvous)

    def __len__(self) -> int:
        return len(self.all)

    def _rendezvous(self, room_id: str) -> int:
        return rendezvous(room_id, len(self.all))

    def of(self, room_id: str) -> Any:
        """The shard the room lives on."""
        if len(self.all) == 1:
            return self.all[0]
        return self.all[self._of(room_id)]

    def position(self, shard: Any) -> int:
        return self.all.index(shard)

    def serving(self, key: str) -> Optional[Any]:
        """The first shard in step with Redis, in ``key``'s order of
        preference (spreads what any shard can answer); None if none is."""
        if len(self.all) == 1:
            return self.all[0] if self.all[0].available else None
        for position in preference(key, len(self.all)):
            if self.all[position].available:
                return self.all[position]
        return None

    # -- the node as a whole -------------------------------------------------

    @property
    def available(self) -> bool:
        """Every shard in step: the whole service is there."""
        return all(shard.available for shard in self.all)

    def problems(self) -> list[str]:
        """Why each shard that is not in step is not (their own words)."""
        return [shard.problem for shard in self.all if not shard.available and shard.problem]

    @property
    def partly_available(self) -> bool:
        """Some shard in step: the node serves (the rooms of) those."""
        return any(shard.available for shard in self.all)

    def when_available(self) -> "Deferred[None]":
        """Fires once every shard is in step."""
        if self.available:
            return succeed(None)
        waiting = [shard.when_available() for shard in self.all if not shard.available]
        return DeferredList(waiting, fireOnOneErrback=True, consumeErrors=True).addCallback(lambda _: None)

    def when_partly_available(self) -> "Deferred[None]":
        """Fires once some shard is in step."""
        if self.partly_available:
            return succeed(None)
        waiting = [shard.when_available() for shard in self.all]
        return DeferredList(waiting, fireOnOneCallback=True, consumeErrors=True).addCallback(lambda _: None)

    def when_unavailable(self) -> "Deferred[None]":
        """Fires once some shard is lost (at once if one is)."""
        if not self.available:
            return succeed(None)
        waiting = [shard.when_unavailable() for shard in self.all]
        return DeferredList(waiting, fireOnOneCallback=True, consumeErrors=True).addCallback(lambda _: None)

    def start(self, listener: Listener) -> None:
        for shard in self.all:
            shard.start(listener)  # each names itself in backplane_up

    def stop(self) -> "Deferred[None]":
        """Every shard: this node's clients out, then disconnected."""
        return DeferredList([shard.stop() for shard in self.all], consumeErrors=True).addCallback(lambda _: None)
