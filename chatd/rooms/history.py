"""
Each room's recent messages, for ``history`` and for a reconnect that
misses nothing: in memory, bounded per room and in all.
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from typing import Any, Optional, Protocol

from chatd.rooms.state import Room


class HistoryStore(Protocol):
    """Where a room's recent messages are kept, encoded (the broadcast's bytes)."""

    def append(self, room: Room, message_id: int, payload: bytes) -> None:
        """Keep the encoded broadcast ``payload``, whose id is ``message_id``."""
        ...

    def recent(
        self, room: Room, limit: int, before: Optional[int], after: Optional[int] = None,
    ) -> list[dict[str, Any]]:
        """At most ``limit`` messages with ids below ``before`` (and above
        ``after``), oldest first."""
        ...

    def drop(self, room: Room) -> None:
        """The room is gone."""
        ...


#: What keeping one message costs beside its bytes (a bytes object's header,
#: an int, two deque slots), counted against the budget so that it bounds
#: memory for small messages too.
ENTRY_OVERHEAD = 80


class _Ring:
    __slots__ = ("ids", "payloads", "bytes", "cost")

    def __init__(self) -> None:
        self.ids: deque[int] = deque()
        self.payloads: deque[bytes] = deque()
        self.bytes = 0  # encoded bytes kept (the per-room bound)
        self.cost = 0  # and with the overhead (the budget's measure)

    def drop_oldest(self) -> int:
        """Drop the oldest message; what it cost."""
        self.ids.popleft()
        size = len(self.payloads.popleft())
        self.bytes -= size
        self.cost -= size + ENTRY_OVERHEAD
        return size + ENTRY_OVERHEAD


class MemoryHistory:
    """
    The last ``size`` messages per room, and no more than ``max_bytes`` of
    them (encoded), for the room's life; and no more than ``budget`` bytes
    of memory over all rooms: past it, the rooms that have gone longest
    without a message lose their oldest messages first.  Messages are kept
    encoded, so what they cost is known (and small): a room of 64 KiB
    messages would otherwise hold 6 MiB, and a connection may own a room.
    """

    def __init__(self, size: int, max_bytes: int = 512 * 1024, budget: int = 0) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.budget = budget
        self.total = 0  # memory the messages kept cost, over all rooms
        # By room, the one with the latest message last: the first is the
        # one to lose messages when the budget is spent.
        self._rings: OrderedDict[str, _Ring] = OrderedDict()

    def append(self, room: Room, message_id: int, payload: bytes) -> None:
        size = len(payload)
        cost = size + ENTRY_OVERHEAD
        if self.size <= 0 or size > self.max_bytes or (self.budget and cost > self.budget):
            return
        rings = self._rings
        ring = rings.get(room.room_id)
        if ring is None:
            ring = rings[room.room_id] = _Ring()
        else:
            rings.move_to_end(room.room_id)
        ring.ids.append(message_id)
        ring.payloads.append(payload)
        ring.bytes += size
        ring.cost += cost
        total = self.total + cost
        while len(ring.ids) > self.size or ring.bytes > self.max_bytes:
            total -= ring.drop_oldest()
        if self.budget and total > self.budget:
            total = self._spend(total)
        self.total = total

    def _spend(self, total: int) -> int:
        """Bring the total within the budget: the quietest rooms' oldest
        messages go first (the room just written to is the last)."""
        rings = self._rings
        for room_id in list(rings):
            ring = rings[room_id]
            while ring.ids and total > self.budget:
                total -= ring.drop_oldest()
            if not ring.ids:
                del rings[room_id]
            if total <= self.budget:
                break
        return total

    def recent(
        self, room: Room, limit: int, before: Optional[int], after: Optional[int] = None,
    ) -> list[dict[str, Any]]:
        ring = self._rings.get(room.room_id)
        if ring is None:
            return []
        # Only what is returned is decoded.
        found = [payload for message_id, payload in zip(ring.ids, ring.payloads, strict=True)
                 if (before is None or message_id < before) and (after is None or message_id > after)]
        return [json.loads(payload) for payload in found[-limit:]]

    def drop(self, room: Room) -> None:
        ring = self._rings.pop(room.room_id, None)
        if ring is not None:
            self.total -= ring.cost
