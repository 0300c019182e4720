"""
How a chat's frames reach its members: each encoded message is prepared
once (framed, and compressed where asked) whatever the number of
recipients, a batch joined into one delivery per member where the sinks
take that, and a member whose sink fails is removed and reported while the
others go on.  Free of I/O: the sinks queue what they are handed.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

from chatd.errors import CLOSE_INTERNAL_ERROR, SinkGone
from chatd.rooms.state import Client, Room


def with_room(payload: bytes, room_id: str) -> bytes:
    """An encoded broadcast with ``"room_id"`` after its other keys (for a
    client that names rooms): the same bytes up to its closing brace."""
    return b"%s, \"room_id\": %s}" % (payload[:-1], json.dumps(room_id).encode())


class HandOut:
    """Delivery to a chat's sinks (a mixin of :class:`chatd.core.ChatCore`)."""

    _prepare: Callable[[bytes], Any]
    _join: Optional[Callable[[list[Any]], Any]]
    _on_sink_error: Callable[[Client, BaseException], None]

    def disconnect(self, client: Client, now: float = 0.0) -> None:
        raise NotImplementedError

    def deliver_batch(self, room: Room, messages: list[tuple[str, bytes]], now: float) -> list[int]:
        """
        Several encoded broadcasts, ``(sender ID, payload)`` in order, to this
        node's members, each to all but its sender: with ``join``, every
        member's frames in one delivery.  How many members each reached.
        """
        join = self._join
        if join is None or len(messages) == 1:
            return [self.deliver_one(room, payload, sender, now) for sender, payload in messages]
        frames = [self._prepare(payload) for _, payload in messages]
        # A tagged member's frames name the room; made only while one is in it.
        tagged = [self._prepare(with_room(payload, room.room_id)) for _, payload in messages] if room.tagged else frames
        senders = {sender for sender, _ in messages}
        members = list(room.members.values())
        others = [m for m in members if m.client_id not in senders]
        reached = 0
        if others:
            reached = len(others) - self._hand_out_named(
                room, others, join(frames), lambda: join(tagged), now)
        counts = [reached] * len(messages)
        for member in members:
            if member.client_id in senders:
                # A sender here gets the batch without its own messages.
                theirs = [i for i, (sender, _) in enumerate(messages) if sender != member.client_id]
                own = tagged if member.tagged else frames
                if theirs and not self._hand_out([member], join([own[i] for i in theirs]), now):
                    for i in theirs:
                        counts[i] += 1
        return counts

    def deliver_one(self, room: Room, payload: bytes, exclude_id: str, now: float) -> int:
        """One encoded broadcast to the room's members but ``exclude_id``;
        how many it reached."""
        recipients = [m for m in room.members.values() if m.client_id != exclude_id]
        return self._broadcast_to(room, recipients, payload, now) if recipients else 0

    def deliver_payload(self, recipients: list[Client], payload: bytes, now: float) -> int:
        """One encoded message (a direct one, from another node) to these
        clients; how many it reached."""
        return len(recipients) - self._deliver(recipients, payload, now)

    def _fan_out(self, room: Room, sender: Client, payload: bytes, now: float) -> int:
        """
        Deliver one encoded broadcast to every member but the sender; return
        how many it reached.
        """
        if len(room.members) < 2:
            return 0
        # A list, not the live dict: a failed member leaves the room below.
        recipients = [m for m in room.members.values() if m is not sender]
        return self._broadcast_to(room, recipients, payload, now)

    def _broadcast_to(self, room: Room, recipients: list[Client], payload: bytes, now: float) -> int:
        """A broadcast of ``room`` to these of its members (tagged ones get
        it naming the room); how many it reached."""
        return len(recipients) - self._hand_out_named(
            room, recipients, self._prepare(payload), lambda: self._prepare(with_room(payload, room.room_id)), now)

    def _hand_out_named(
        self, room: Room, recipients: list[Client], frame: Any, named: Callable[[], Any], now: float,
    ) -> int:
        """Hand ``frame`` to the recipients, but to the tagged ones the frame
        naming the room (``named()``, made only while the room has any);
        how many failed."""
        if not room.tagged:
            return self._hand_out(recipients, frame, now)
        plain = [m for m in recipients if not m.tagged]
        tagged = [m for m in recipients if m.tagged]
        return (self._hand_out(plain, frame, now) if plain else 0) + (
            self._hand_out(tagged, named(), now) if tagged else 0)

    def _deliver(self, recipients: list[Client], payload: bytes, now: float) -> int:
        """
        Prepare once, hand to every recipient; remove those that fail and
        return how many did.
        """
        return self._hand_out(recipients, self._prepare(payload), now)

    def _hand_out(self, recipients: list[Client], frame: Any, now: float) -> int:
        """Hand ``frame`` to every recipient; remove those that fail and
        return how many did."""
        failed: list[tuple[Client, BaseException]] = []
        for member in recipients:
            try:
                member.sink.deliver(frame)
            except Exception as e:
                failed.append((member, e))
        for member, error in failed:
            self.disconnect(member, now)
            if isinstance(error, SinkGone):
                continue
            self._on_sink_error(member, error)
            try:
                member.sink.close(CLOSE_INTERNAL_ERROR, "Internal error")
            except Exception as close_error:
                self._on_sink_error(member, close_error)
        return len(failed)
