"""
A cluster on a Redis Sentinel service, all real: a master, its replica and
three sentinels; two ``twistd -n chatd`` nodes.  The master is killed
(SIGKILL) while clients on both nodes chat; the sentinels promote the
replica, the nodes find it and resume, and every room keeps one order of
ids, none given twice.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest_twisted

from tests.support.clients import connect, WSClient
from tests.support.servers import DaemonProcess

IN_STEP = rb"In step with Redis at sentinel://\S+: cluster actions available"


async def member(port: int) -> tuple[WSClient, str]:
    client = await connect(port)
    return client, (await client.next())["client_id"]


@pytest_twisted.ensureDeferred
async def test_the_cluster_resumes_on_the_promoted_replica(
    daemon_factory: Callable[..., DaemonProcess], sentinels: Any,
) -> None:
    master, replica, watchers = sentinels
    url = "sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in watchers) + "/chatd"
    nodes = [daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--redis", url, "--redis-timeout", "2",
                            "--rate-messages", "0") for _ in range(2)]
    one, two = [await node.wait_listening() for node in nodes]
    for node in nodes:
        await node.wait_for(IN_STEP, "the node to be in step with the master")
    (alice, alice_id), (bob, _) = await member(one), await member(two)
    room_id = (await alice.request({"action": "create", "body": "through a failover"}))["room_id"]
    await bob.request({"action": "join", "body": {"room_id": room_id}})
    ids = []
    for i in range(5):
        assert (await alice.request({"action": "message", "body": f"before {i}"}))["status"] == "success"
        message = await bob.next()
        assert message["body"] == f"before {i}"
        ids.append(message["id"])
    master.stop()  # SIGKILL
    # Both nodes notice, and are in step again once the sentinels have
    # promoted the replica (within 30 s of the kill).
    try:
        for node in nodes:
            await node.wait_for(rb"Lost Redis at", "the node to notice", 30)
            await node.wait_for(rb"(?s)Lost Redis at.*" + IN_STEP, "the node to be in step with the new master", 30)
    except AssertionError as e:
        raise AssertionError(f"{e}\n" + "\n".join(
            [node.output.decode(errors="replace")[-3000:] for node in nodes]
            + [s.log.decode(errors="replace")[-2000:] for s in watchers])) from None
    assert replica.command("ROLE")[0] == "master"
    # The room is there, with its members; ids go on above every one seen.
    members = (await bob.request({"action": "members"}))["members"]
    assert [m["client_id"] for m in members][0] == alice_id
    for i in range(5):
        assert (await alice.request({"action": "message", "body": f"after {i}"}))["status"] == "success"
        message = await bob.next()
        assert message["body"] == f"after {i}"
        ids.append(message["id"])
    assert ids == sorted(set(ids)), ids
    history = (await bob.request({"action": "history"}))["messages"]
    assert [m["body"] for m in history][-5:] == [f"after {i}" for i in range(5)]
    for client in (alice, bob):
        await client.close()
