"""ClusterChat's bookkeeping with a fake backplane: no Redis, no sockets."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from chatd.backplane.cluster import ClusterChat
from chatd.core import ChatCore
from chatd.errors import Unavailable
from tests.fakes import FakeSink


class LosingBackplane:
    """Redis is lost while the node subscribes."""

    node = "node-1"
    available = True

    def __init__(self) -> None:
        self.unsubscribed: list[str] = []

    def subscribe(self, room_id: str) -> "Deferred[None]":
        return fail(Unavailable())

    def unsubscribe(self, room_id: str) -> None:
        self.unsubscribed.append(room_id)

    def call(self, script: str, *args: Any) -> "Deferred[Any]":
        raise AssertionError("no script runs without the subscription")


def test_a_subscription_lost_half_way_is_dropped_and_the_room_forgotten() -> None:
    core, backplane = ChatCore(), LosingBackplane()
    chat = ClusterChat(core, backplane, Clock(), refuse=lambda client: None)  # type: ignore[arg-type]
    client = core.connect(FakeSink())
    failures: list[Any] = []
    chat.join(client, "ab12cd34").addErrback(failures.append)  # type: ignore[union-attr]
    assert failures and failures[0].check(Unavailable)
    # Not left on the backplane's list to renew after a reconnection.
    assert backplane.unsubscribed == ["ab12cd34"]
    assert core.rooms == {} and client.room is None
