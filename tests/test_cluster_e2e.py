"""
The cluster as users run it: real ``twistd -n chatd --redis`` processes on a
real redis-server, a node killed with SIGKILL, and ``--workers 2``.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from chatd import fastpath
from tests.support.clients import connect
from tests.support.redis import RedisServer


async def welcomed_on(port: int) -> tuple[Any, str]:
    client = await connect(port)
    return client, (await client.next())["client_id"]


@pytest_twisted.ensureDeferred
async def test_a_killed_node_loses_its_members_within_the_lease(daemon_factory: Any, cluster: Any,
                                                                 redis_server: RedisServer) -> None:
    survivor = await cluster()
    doomed = daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--redis", redis_server.url,
                            "--redis-lease", "3")
    port = await doomed.wait_listening()
    await doomed.wait_for(rb"In step with Redis", "the node to join the cluster")
    a, a_id = await survivor.welcomed()
    shared = (await a.request({"action": "create", "body": "shared"}))["room_id"]
    await a.request({"action": "events", "body": True})
    b, b_id = await welcomed_on(port)
    await b.request({"action": "join", "body": {"room_id": shared}})
    await a.next()  # b's join event
    c, _ = await welcomed_on(port)
    lonely = (await c.request({"action": "create", "body": "only on the doomed node"}))["room_id"]
    doomed.signal("KILL")
    await doomed.wait_exit()
    # No goodbye was said: the survivor's reaper notices the lease ran out.
    left = await a.next()
    assert (left["event"], left["client_id"]) == ("leave", b_id)
    members = await a.request({"action": "members"})
    assert [m["client_id"] for m in members["members"]] == [a_id]
    refused = await a.request({"action": "join", "body": {"room_id": lonely}})
    assert refused == {"status": "error", "message": f"Room {lonely} does not exist"}


async def two_workers(daemon_factory: Any, redis_server: RedisServer) -> tuple[Any, int, list[int]]:
    """``twistd -n chatd --workers 2`` on the test's Redis: (parent, port, worker pids)."""
    parent = daemon_factory("--workers", "2", "--listen", "tcp:0:interface=127.0.0.1",
                            "--redis", redis_server.url, "--log-format", "json")
    match = await parent.wait_for(rb"Listening on 127\.0\.0\.1:(\d+) for 2 workers", "the parent to bind")
    for _ in range(2):
        await parent.wait_for(rb"In step with Redis(?s:.*)In step with Redis", "both workers")
    workers = [int(pid) for pid in re.findall(rb'"Started worker \d \(pid (\d+)\)"', parent.output)]
    return parent, int(match.group(1)), workers


@pytest_twisted.ensureDeferred
async def test_workers_share_the_port_and_are_one_chat(daemon_factory: Any, redis_server: RedisServer) -> None:
    parent, port, workers = await two_workers(daemon_factory, redis_server)
    assert len(workers) == 2
    clients = [await welcomed_on(port) for _ in range(12)]
    room_id = (await clients[0][0].request({"action": "create", "body": "all"}))["room_id"]
    for client, _ in clients[1:]:
        assert (await client.request({"action": "join", "body": {"room_id": room_id}}))["status"] == "success"
    sender, sender_id = clients[-1]
    await sender.request({"action": "message", "body": "to everyone"})
    for client, _ in clients[:-1]:
        message = await client.next()
        assert (message["from"], message["body"]) == (sender_id, "to everyone")
    members = await clients[0][0].request({"action": "members"})
    assert len(members["members"]) == 12
    # A worker that dies is started again; the port stays open meanwhile.
    os.kill(workers[0], 9)
    await parent.wait_for(rb'"event": ?"worker_died"', "the parent to notice")
    await parent.wait_for(rb'(?s)worker_died.*"Started worker 0 \(pid (\d+)\)"', "a new worker 0")
    replacement = int(re.findall(rb'"Started worker 0 \(pid (\d+)\)"', parent.output)[-1])
    assert replacement != workers[0]
    workers.append(replacement)
    late, _ = await welcomed_on(port)
    assert (await late.request({"action": "list"}))["rooms"][0]["room_id"] == room_id
    parent.signal("TERM")
    assert await parent.wait_exit() == 0
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid), f"worker {pid} outlived the parent"
    for client, _ in clients + [(late, "")]:
        code, _ = await client.wait_closed()
        assert code in (1001, 1006)  # those on the killed worker lost it abruptly


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] == "Z"


def _sockets(pid: int) -> int:
    count = 0
    for entry in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{entry}").startswith("socket:")
        except OSError:
            pass  # closed meanwhile
    return count


@pytest_twisted.ensureDeferred
async def test_each_worker_takes_a_share_of_the_connections(daemon_factory: Any, redis_server: RedisServer) -> None:
    # A socket each (SO_REUSEPORT): the kernel spreads connections evenly.
    # (One shared socket let whichever worker woke first take a burst: 94%.)
    parent, port, workers = await two_workers(daemon_factory, redis_server)
    before = [_sockets(pid) for pid in workers]
    # A burst, as when clients reconnect after a restart.
    clients = await gatherResults([Deferred.fromCoroutine(welcomed_on(port)) for _ in range(60)])
    taken = [_sockets(pid) - count for pid, count in zip(workers, before, strict=True)]
    assert sum(taken) == 60
    if fastpath.shortcuts().tcp_address:
        assert min(taken) >= 15, taken  # a fair coin gives fewer than 15 of 60 about once in 24,000 runs
    # Without it (CHATD_FASTPATH=0) the workers share one socket: every
    # connection is served, with no promise of balance.
    for client, _ in clients:
        await client.close()
    parent.signal("TERM")
    assert await parent.wait_exit() == 0
