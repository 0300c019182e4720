"""
The history's memory budget, measured on the real ``twistd -n chatd``:
connections that each own a room and fill its history cannot grow the
server past the budget.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import pytest_twisted

from tests.support.clients import connect
from tests.support.raw import http_get
from tests.support.servers import DaemonProcess

MIB = 1024 * 1024


@pytest_twisted.ensureDeferred
async def test_full_rooms_stay_within_the_history_memory(daemon_factory: Callable[..., DaemonProcess]) -> None:
    budget = 16 * MIB
    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--history-memory", str(budget),
                           "--metrics", "tcp:0:interface=127.0.0.1", "--rate-messages", "0")
    port = await chatd.wait_listening()
    metrics_port = await chatd.wait_metrics()
    warm = await connect(port)
    await warm.next()
    await warm.request({"action": "create", "body": "warm-up"})
    await warm.request({"action": "message", "body": "x" * 60_000})
    before = chatd.rss_kib()
    # 250 connections, each with a room of nine 60 KB messages: 135 MB sent,
    # 120 MB of it within the rooms' own bounds.
    body = "x" * 60_000
    clients: list[Any] = []
    for _ in range(250):
        client = await connect(port)
        await client.next()
        await client.request({"action": "create", "body": "full"})
        for _ in range(9):
            client.send({"action": "message", "body": body})
        for _ in range(9):
            assert (await client.next())["message"] == "Message sent"
        clients.append(client)
    grown = (chatd.rss_kib() - before) * 1024
    _, text = await http_get(f"http://127.0.0.1:{metrics_port}/metrics")
    kept = float(re.search(rb"\nchatd_history_bytes ([0-9.e+]+)", text).group(1))  # type: ignore[union-attr]
    assert budget - 2 * 60_100 < kept <= budget
    assert grown < budget + 16 * MIB, f"grew {grown / MIB:.1f} MiB"
    # The newest room has all it can; the history says what it has.
    reply = await clients[-1].request({"action": "history", "body": {"limit": 100}})
    assert [m["id"] for m in reply["messages"]] == list(range(2, 10))  # 512 KiB a room: 8 of 9
    for client in clients + [warm]:
        client.abort()
