"""
What operators run: the metrics and health endpoints of the real daemon, and
its drain on SIGTERM as systemd sees it.
"""

from __future__ import annotations

import socket
from typing import AsyncIterator

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.threads import deferToThread

from tests.support.clients import connect
from tests.support.raw import http_get, StalledClient
from tests.support.servers import DaemonProcess, NotifySocket


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition, by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


@pytest_twisted.async_yield_fixture
async def chatd_with_metrics(daemon_factory) -> AsyncIterator[tuple[DaemonProcess, int, int]]:
    chatd = daemon_factory(
        "--listen", "tcp:0:interface=127.0.0.1", "--metrics", "tcp:0:interface=127.0.0.1"
    )
    port = await chatd.wait_listening()
    metrics_port = await chatd.wait_metrics()
    yield chatd, port, metrics_port


@pytest_twisted.ensureDeferred
async def test_metrics_count_real_traffic(chatd_with_metrics) -> None:
    chatd, port, metrics_port = chatd_with_metrics
    clients = [await connect(port) for _ in range(3)]
    for client in clients:
        await client.next()
    a, b, c = clients
    room_id = (await a.request({"action": "create", "body": "measured"}))["room_id"]
    for client in (b, c):
        await client.request({"action": "join", "body": {"room_id": room_id}})
    for i in range(5):
        await a.request({"action": "message", "body": f"m{i}"})
    for client in (b, c):
        for _ in range(5):
            await client.next()
    a.send_raw(b"{nope")
    await a.next()
    a.send_raw(b'{"action": "join", "body": 5}')
    await a.next()
    b.send_raw(b"\x00", binary=True)
    await b.next()

    def plain_get() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n")
            return sock.recv(1000)

    assert (await deferToThread(plain_get)).startswith(b"HTTP/1.1 404")

    code, text = await http_get(f"http://127.0.0.1:{metrics_port}/metrics")
    assert code == 200
    values = samples(text)
    assert values[("chatd_connections", ())] == 3
    assert values[("chatd_clients", ())] == 3
    assert values[("chatd_rooms", ())] == 1
    assert values[("chatd_members", ())] == 3
    assert values[("chatd_messages_received_total", ())] == 5
    assert values[("chatd_deliveries_total", ())] == 10
    assert values[("chatd_errors_total", (("kind", "json"),))] == 1
    assert values[("chatd_errors_total", (("kind", "shape"),))] == 1
    assert values[("chatd_errors_total", (("kind", "binary"),))] == 1
    assert values[("chatd_handshake_failures_total", (("reason", "no_upgrade"),))] == 1
    assert values[("chatd_fanout_seconds_count", ())] == 5
    assert values[("chatd_slow_client_drops_total", ())] == 0
    broadcast = len(b'{"from": "12345678", "body": "m0", "timestamp": "2026-01-01T00:00:00.000Z"}')
    assert values[("chatd_sent_bytes_total", ())] >= 10 * broadcast
    assert values[("chatd_received_bytes_total", ())] > 0

    assert await http_get(f"http://127.0.0.1:{metrics_port}/healthz") == (200, b"ok\n")
    assert await http_get(f"http://127.0.0.1:{metrics_port}/readyz") == (200, b"ready\n")
    for client in clients:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_sigterm_drains_in_order_as_systemd_sees_it(tmp_path, daemon_factory) -> None:
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    chatd = daemon_factory(
        "--listen", "tcp:0:interface=127.0.0.1", "--metrics", "tcp:0:interface=127.0.0.1",
        "--shutdown-timeout", "60", "--close-timeout", "60",
        env={"NOTIFY_SOCKET": notify.path},
    )
    try:
        port = await chatd.wait_listening()
        metrics_port = await chatd.wait_metrics()
        await notify.wait_for("READY=1")
        polite = await connect(port)
        await polite.next()
        # A client that never answers the close frame holds the drain open.
        straggler = await deferToThread(StalledClient, port)
        await deferToThread(straggler.next)

        chatd.signal("TERM")
        await notify.wait_for("STOPPING=1")
        assert (await polite.wait_closed())[0] == 1001
        assert await deferToThread(straggler.read_close) == (1001, "Server shutting down")
        # Still draining: not ready, and the chat port no longer accepts.
        assert await http_get(f"http://127.0.0.1:{metrics_port}/readyz") == (503, b"not ready: draining\n")
        assert (await http_get(f"http://127.0.0.1:{metrics_port}/healthz"))[0] == 200
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert not chatd.ended.called

        straggler.close()  # the last client goes: the drain is over
        assert await chatd.wait_exit() == 0
        assert notify.received == ["READY=1", "STOPPING=1"]
    finally:
        await notify.close()


@pytest_twisted.ensureDeferred
async def test_stragglers_are_forced_after_the_shutdown_timeout(tmp_path, daemon_factory) -> None:
    chatd = daemon_factory(
        "--listen", "tcp:0:interface=127.0.0.1", "--shutdown-timeout", "1", "--close-timeout", "60",
    )
    port = await chatd.wait_listening()
    straggler = await deferToThread(StalledClient, port)
    await deferToThread(straggler.next)
    chatd.signal("TERM")
    assert await chatd.wait_exit() == 0
    assert b"Aborting a connection that did not close in time" in chatd.output
    straggler.close()


@pytest_twisted.ensureDeferred
async def test_an_unreachable_redis_is_said_once_in_the_log_in_readyz_and_in_the_metrics(
    daemon_factory, redis_server_later,
) -> None:
    from tests.support.raw import http_get

    redis = redis_server_later  # its port chosen, nothing listening on it yet
    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--metrics", "tcp:0:interface=127.0.0.1",
                           "--redis", redis.url)
    metrics = await chatd.wait_metrics()
    await chatd.wait_for(rb"Cannot reach Redis at redis://127\.0\.0\.1:\d+/0: .*refused", "the reason in the log")

    async def failures() -> float:
        _, body = await http_get(f"http://127.0.0.1:{metrics}/metrics")
        line = next(x for x in body.decode().splitlines() if x.startswith("chatd_redis_connect_failures_total"))
        return float(line.split()[-1])

    status, body = await http_get(f"http://127.0.0.1:{metrics}/readyz")
    assert status == 503
    assert body.decode().startswith(f"not ready: cannot reach Redis at {redis.url}: ")
    # Retried, and counted each time, but said once.
    await chatd.wait_for(rb"Scheduling retry 3 ", "a third retry")
    assert await failures() >= 3
    assert chatd.output.count(b"Cannot reach Redis") == 1
    redis.start()
    await chatd.wait_for(rb"In step with Redis at", "the node to come into step")
    status, body = await http_get(f"http://127.0.0.1:{metrics}/readyz")
    assert (status, body) == (200, b"ready\n")
    _, text = await http_get(f"http://127.0.0.1:{metrics}/metrics")
    assert "chatd_redis_available 1.0" in text.decode()
