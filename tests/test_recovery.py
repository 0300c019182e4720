"""
Reconnecting without a gap: ``join`` with ``since``, in the pure rules, in
one real ``twistd -n chatd`` and across two nodes on real Redis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import pytest_twisted

from chatd import codec
from chatd.errors import ProtocolError
from tests.support.clients import connect, WSClient
from tests.support.servers import DaemonProcess


def kept(*ids: int) -> list[dict[str, Any]]:
    return [{"id": i} for i in ids]


def test_recovered_when_every_missed_message_is_kept() -> None:
    assert codec.recovery(kept(3, 4, 5), 5, 2) == (True, kept(3, 4, 5))
    assert codec.recovery(kept(3, 4, 5), 5, 4) == (True, kept(5))
    assert codec.recovery(kept(3, 4, 5), 5, 5) == (True, [])
    assert codec.recovery([], 0, 0) == (True, [])
    # More were missed than the room keeps: the most recent ones.
    assert codec.recovery(kept(3, 4, 5), 5, 1) == (False, kept(3, 4, 5))
    assert codec.recovery([], 5, 1) == (False, [])
    # An id this room never gave out (another room's, or an earlier life's).
    assert codec.recovery(kept(1, 2), 2, 9) == (False, kept(1, 2))


def test_since_must_be_a_whole_number() -> None:
    assert codec.decode(b'{"action": "join", "body": {"room_id": "r", "since": 7}}') == codec.Join("r", 7)
    for since in ('"7"', "-1", "1.5", "true", "null"):
        payload = b'{"action": "join", "body": {"room_id": "r", "since": ' + since.encode() + b"}}"
        if since == "null":
            assert codec.decode(payload) == codec.Join("r")
            continue
        with pytest.raises(ProtocolError, match="'since' must be a message id"):
            codec.decode(payload)


async def read_ids(client: WSClient, until: int) -> list[int]:
    """The ids of the broadcasts the client receives, up to ``until``."""
    ids: list[int] = []
    while not ids or ids[-1] < until:
        message = await client.next()
        if "from" in message:
            ids.append(message["id"])
    return ids


async def gap_free(port_a: int, port_b: int) -> None:
    """A keeps sending while B comes back with the last id it saw: B sees
    every message once, in order."""
    a = await connect(port_a)
    await a.next()
    room = (await a.request({"action": "create", "body": "steady"}))["room_id"]
    b = await connect(port_b)
    await b.next()
    await b.request({"action": "join", "body": {"room_id": room}})
    await a.request({"action": "message", "body": "first"})
    seen = (await b.next())["id"]
    await b.close()
    for i in range(5):  # missed while away
        await a.request({"action": "message", "body": f"missed {i}"})
    for i in range(50):  # and more while it comes back (fewer than a room keeps)
        a.send({"action": "message", "body": f"during {i}"})
    again = await connect(port_b)
    await again.next()
    joined = await again.request({"action": "join", "body": {"room_id": room, "since": seen}})
    assert list(joined) == ["status", "message", "room_id", "recovered", "messages"]
    assert joined["recovered"] is True
    recovered = [m["id"] for m in joined["messages"]]
    assert recovered[:5] == list(range(seen + 1, seen + 6))
    for _ in range(50):
        assert (await a.next())["message"] == "Message sent"
    last = seen + 55
    live = await read_ids(again, last) if not recovered or recovered[-1] < last else []
    assert recovered + live == list(range(seen + 1, last + 1))
    await a.close()
    await again.close()


@pytest_twisted.ensureDeferred
async def test_a_client_that_comes_back_sees_every_message_once(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--rate-messages", "0")
    port = await chatd.wait_listening()
    await gap_free(port, port)


@pytest_twisted.ensureDeferred
async def test_more_missed_than_kept_says_so_and_gives_the_latest(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--history-size", "2")
    port = await chatd.wait_listening()
    a = await connect(port)
    await a.next()
    room = (await a.request({"action": "create", "body": "short memory"}))["room_id"]
    for i in range(4):
        await a.request({"action": "message", "body": i})
    b = await connect(port)
    await b.next()
    joined = await b.request({"action": "join", "body": {"room_id": room, "since": 1}})
    assert joined["recovered"] is False
    assert [m["body"] for m in joined["messages"]] == [2, 3]
    assert await b.request({"action": "join", "body": {"room_id": room, "since": "x"}}) == {
        "status": "error", "message": "'since' must be a message id (a whole number of at least 0)"}
    await a.close()
    await b.close()


@pytest_twisted.ensureDeferred
async def test_across_two_nodes_of_a_cluster(
    daemon_factory: Callable[..., DaemonProcess], redis_server: Any, tmp_path: Path,
) -> None:
    nodes = [daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--redis", redis_server.url,
                            "--rate-messages", "0") for _ in range(2)]
    one, two = [await node.wait_listening() for node in nodes]
    await gap_free(one, two)
