"""
What goes out to the clients, and when.

Under load, the frames for one client gathered during a reactor iteration
leave together, in one write, right after it (:class:`Flusher`).  A lone
message (the only one in its read, nothing gathered yet) is the exception:
its broadcast goes to each member as it is fanned out (:meth:`Flusher.send_now`),
because at chat rates latency is the Python run before the first send.
A cluster node may also hold a room's frames back for as long as the room's
next batch is with Redis (:meth:`Flusher.hold`), so that its members get the
two batches in one write.

:class:`Outbox` is the per-connection half, mixed into the protocol: it is
the core's sink, and the transport's push producer, which is how it learns
that the client stopped reading.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from chatd.errors import SinkGone
from chatd.delivery.frames import text_frame

T = TypeVar("T")


class Flusher:
    """The connections with frames gathered in this reactor iteration, and
    whether what is fanned out now goes out at once."""

    _log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.to_flush: list[Outbox] = []
        # True while a lone message is handled (send_now).
        self.sending_now = False
        # Connections whose frames wait for more of the same (hold), by key.
        self._held: dict[Any, list[Outbox]] = {}

    def soon(self) -> None:
        """Flush the connections in ``to_flush`` right after this reactor
        iteration (called when the first one is added)."""
        self.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        batch = list(self.to_flush)
        # Cleared before sending: a connection queued meanwhile schedules
        # another flush.
        self.to_flush.clear()
        for outbox in batch:
            try:
                outbox.flush()
            except Exception:
                self._log.failure("Sending to a client failed")

    def hold(self, key: Any, function: Callable[..., T], *args: Any) -> T:
        """
        Run ``function`` (a delivery); the connections it gave their first
        frames of this iteration wait, under ``key``, until :meth:`release`
        instead of leaving at the end of the iteration.  Their frames stay
        queued in order: whatever else comes for them joins the same write,
        and Autobahn's own writes (a close, a ping) still flush them first.
        """
        to_flush = self.to_flush
        mark = len(to_flush)
        try:
            return function(*args)
        finally:
            if len(to_flush) > mark:
                waiting = self._held.get(key)
                if waiting is None:
                    self._held[key] = to_flush[mark:]
                else:
                    waiting.extend(to_flush[mark:])
                del to_flush[mark:]

    def holding(self, key: Any) -> bool:
        """Whether connections wait under ``key``."""
        return key in self._held

    def release(self, key: Any) -> None:
        """What waits under ``key`` leaves at the end of this iteration."""
        waiting = self._held.pop(key, None)
        if waiting:
            if not self.to_flush:
                self.soon()
            self.to_flush.extend(waiting)

    def send_now(self, function: Callable[..., T], *args: Any) -> T:
        """
        Run ``function``, sending what it delivers to each member at once
        instead of gathering it for the end of the iteration: for a lone
        message, when nothing else is gathered yet.
        """
        if self.to_flush:
            return function(*args)
        self.sending_now = True
        try:
            return function(*args)
        finally:
            self.sending_now = False


class Outbox:
    """
    One connection's outgoing frames, mixed into its protocol.

    The host provides ``state`` and ``STATE_OPEN`` (a WebSocket
    protocol's); ``flusher``, ``_to_flush``, ``outbox_limit`` and
    ``_count_sent`` (on its class); ``_write`` (to the transport, now); and ``too_slow`` (called
    once the client has not read ``outbox_limit`` bytes: it starts closing
    the connection).
    """

    state: int
    STATE_OPEN: int
    # Set on each factory's protocol class: its flusher, and the flusher's
    # list (one lookup less on the way of every delivery).
    flusher: Flusher
    _to_flush: "list[Outbox]" = []
    outbox_limit = 0

    @staticmethod
    def _count_sent(size: int) -> None:
        """Count the bytes of a reply (set on the class to a metric's ``inc``)."""

    # True once this connection is being closed for being too slow: nothing
    # more is queued for it and the core no longer knows it.
    _gone = False
    # Whether the transport's buffer is over its high-water mark, and how many
    # bytes were queued since it went over.
    _paused = False
    _queued = 0
    # The frames gathered during the current reactor iteration (one, or a
    # list of them), sent together right after it (see flush).
    _out: "bytes | list[bytes] | None" = None

    def too_slow(self, queued: int) -> None:
        raise NotImplementedError

    def _write(self, data: bytes) -> None:
        """Write now (only when nothing of this client's is gathered)."""
        raise NotImplementedError

    # -- the core's sink ---------------------------------------------------

    def deliver(self, frame: bytes) -> None:
        # Once a close frame is out, nothing may follow it on the wire.
        if self._gone or self.state != self.STATE_OPEN:
            raise SinkGone()
        if self._paused and not self._account(len(frame)):
            raise SinkGone()
        if self.flusher.sending_now and self._out is None:
            # A lone message (Flusher.send_now) goes out to each member as
            # it is fanned out.  Otherwise (under load: several messages in
            # a read, or in an iteration; from Redis) frames wait for the end
            # of the iteration and leave together, several to a send().
            self._write(frame)
            return
        self._queue(frame)

    def send_reply(self, payload: bytes) -> None:
        """Queue an encoded reply (unless closing, or too slow)."""
        if self._gone or self.state != self.STATE_OPEN:
            return
        if self._paused and not self._account(len(payload)):
            return
        self._count_sent(len(payload))
        self._queue(text_frame(payload))

    # -- the transport's push producer ------------------------------------

    def pauseProducing(self) -> None:
        # Called when the transport's buffer passes its high-water mark, and
        # again on every write while it stays there.
        self._paused = True

    def resumeProducing(self) -> None:
        # Called once the buffer has drained completely.
        self._paused = False
        self._queued = 0

    def stopProducing(self) -> None:
        self._paused = True

    # -- gathering and writing ------------------------------------------------

    def _queue(self, data: bytes) -> None:
        # Once per member of a room per broadcast: kept to a few operations,
        # and no list until a second frame comes in the same iteration.
        out = self._out
        if out is None:
            self._out = data
            to_flush = self._to_flush
            if not to_flush:
                self.flusher.soon()
            to_flush.append(self)
        elif out.__class__ is list:
            out.append(data)
        else:
            self._out = [out, data]

    def flush(self) -> None:
        """Send the frames gathered for this client, in one write."""
        out = self._out
        if out is None:
            return
        self._out = None
        self._write(out if out.__class__ is bytes else b"".join(out))

    def _account(self, size: int) -> bool:
        """
        Count bytes queued while the client is not reading; past the limit,
        give up on it (``too_slow``) and answer False.
        """
        self._queued += size
        if self._queued <= self.outbox_limit:
            return True
        self._gone = True
        self.too_slow(self._queued)
        return False
