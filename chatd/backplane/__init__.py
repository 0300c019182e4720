"""
Many chatd processes and hosts as one chat service, through Redis.

- :mod:`chatd.backplane.address`: Redis URLs, parsed without I/O.
- :mod:`chatd.backplane.scripts` (and their helpers, ``prelude``): the Lua
  scripts that keep the shared state (rooms, members, history, node
  leases) and apply a node's decisions only while what it read still holds.
- :mod:`chatd.backplane.facts`: a room as the rules read it in Redis, and
  the guards of what they read.
- :mod:`chatd.backplane.redis`: the connections to Redis (txredisapi), the
  node's lease and the reaping of dead nodes.
- :mod:`chatd.backplane.cluster`: a cluster node's :class:`chatd.chat.Chat`,
  in place of one process's :class:`chatd.chat.LocalChat`.

docs/scaling.md describes the design.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred


class Backplane(Protocol):
    """The shared state and the room channels, as a cluster node sees them."""

    #: This node's name, unique in the cluster.
    node: str

    @property
    def available(self) -> bool:
        """Whether the shared state can be reached (and is in step)."""
        ...

    @property
    def connected(self) -> bool:
        """Whether a command sent now reaches it (in step, or about to be)."""
        ...

    def call(self, script: str, *args: Any) -> "Deferred[Any]":
        """Run one of :mod:`chatd.backplane.scripts`; Unavailable if it cannot."""
        ...

    def when_available(self) -> "Deferred[None]":
        """Fires once the node is (again) in step with the shared state."""
        ...

    def resync(self, state: str) -> "Deferred[Any]":
        """Make the shared state agree with this node's (JSON, see scripts.RESYNC)."""
        ...

    def subscribe(self, room_id: str) -> "Deferred[None]":
        """Receive the room's channel; fires once Redis has confirmed it."""
        ...

    def unsubscribe(self, room_id: str) -> None:
        """Stop receiving the room's channel."""
        ...


class Listener(Protocol):
    """What a backplane tells its node."""

    def backplane_up(self, backplane: Backplane) -> "Deferred[None]":
        """``backplane`` (one shard of several, maybe) is connected again:
        bring its shared state in step with this node."""
        ...

    def backplane_down(self) -> None:
        """The shared state cannot be reached any more."""
        ...

    def channel_message(self, room_id: str, data: bytes) -> None:
        """A broadcast or event on a room's channel."""
        ...

    def direct_message(self, data: bytes) -> None:
        """A direct message for clients of this node (see scripts.DIRECT)."""
        ...
