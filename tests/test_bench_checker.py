"""
The load generator's two checkers, C and Python, on the same bytes: they
count the same deliveries and acks and find the same faults.  (Without a C
compiler only the Python one runs: the C test skips, or fails under
CHATD_REQUIRE_CC=1, which CI sets.)
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import pytest

from chatd_bench import checker
from chatd_bench.loadgen import Bench, Client


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


def server_frame(payload: bytes, opcode: int = 1) -> bytes:
    n = len(payload)
    head = bytes((0x80 | opcode, n)) if n < 126 else bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    return head + payload


def delivery(sender_id: bytes, room: int, sender: int, seq: int, sent_ns: int = 5) -> bytes:
    body = f"~B{room:03d}.{sender:05d}.{seq:09d}.{sent_ns:020d}~E"
    return server_frame(json.dumps({"from": sender_id.decode(), "body": body,
                                    "timestamp": "2026-11-26T12:00:00.000Z", "id": seq + 1}).encode())


ACK = server_frame(b'{"status": "success", "message": "Message sent"}')


def run(use_c: bool, chunks: list[bytes]) -> tuple[int, int, list[str], int, int]:
    bench = Bench(1, record_latency=True)
    clients = [Client(bench, i) for i in range(3)]
    for i, client in enumerate(clients):
        client.transport = Transport()  # type: ignore[assignment]
        client.open = True
        client.room = 0
        client.client_id = f"{i:08x}".encode()
    bench.clients, bench.ids = clients, [c.client_id for c in clients]
    if use_c:
        bench.use_c_checker()
        assert bench.checker == "c"
    receiver = clients[0]
    for chunk in chunks:
        receiver.data_received(chunk)
    pongs = sum(1 for data in receiver.transport.written if data[0] == 0x8A)  # type: ignore[union-attr]
    return bench.stats.delivered, bench.stats.acks, bench.stats.errors, len(bench.stats.latencies_ns), pongs


def stream() -> list[bytes]:
    one, two = b"00000001", b"00000002"
    data = (
        delivery(one, 0, 1, 0) + delivery(two, 0, 2, 0) + ACK + delivery(one, 0, 1, 1)
        + server_frame(b"ping!", opcode=9)            # a ping: Python answers it
        + delivery(one, 0, 1, 3)                      # seq 2 lost
        + delivery(one, 0, 1, 3)                      # a duplicate
        + delivery(two, 1, 2, 1)                      # another room's
        + delivery(b"99999999", 0, 2, 1)              # the wrong sender ID
        + delivery(one, 0, 0, 0)                      # its own message
        + server_frame(b'{"status": "success", "message": "Joined"}')
        + delivery(two, 0, 2, 2) + ACK
    )
    # Cut into reads that split frames anywhere.
    return [data[i : i + 37] for i in range(0, len(data), 37)]


def test_the_python_checker_finds_every_fault() -> None:
    delivered, acks, errors, latencies, pongs = run(False, stream())
    assert delivered == 9 and acks == 2 and latencies == 9 and pongs == 1
    assert errors == [
        "client 0 from 1: seq 3, expected 2 (lost)",
        "client 0 from 1: seq 3, expected 4 (duplicate or reordered)",
        "client 0 in room 0 got a message for room 1",
        "client 0 from 2: seq 1, expected 2 (duplicate or reordered)",
        "wrong sender id on a message from 2",
        "client 0 received its own message",
        "wrong sender id on a message from 0",
    ]


def test_the_c_checker_agrees_with_the_python_one() -> None:
    if checker.load() is None:
        if os.environ.get("CHATD_REQUIRE_CC") == "1":
            pytest.fail("CHATD_REQUIRE_CC=1 but the C checker did not build "
                        f"(cc: {shutil.which('cc')}, CHATD_BENCH_PURE_PYTHON={os.environ.get('CHATD_BENCH_PURE_PYTHON')})")
        pytest.skip("no C compiler: the load generator checks in Python")
    assert run(True, stream()) == run(False, stream())
    # Whole frames in one read: same again.
    whole: Any = [b"".join(stream())]
    assert run(True, whole) == run(False, whole)


def test_the_capacity_model_follows_the_measured_costs(tmp_path, capsys) -> None:
    from chatd_bench import capacity

    def run(server: str, scenario: str, **figures: float) -> dict:
        return {"server": server, "scenario": scenario, **figures}

    results = [
        run("chatd", "max", server_us_per_delivery=0.4),
        run("chatd-redis", "max", server_us_per_delivery=0.8, redis_us_per_delivery=0.2),
        run("chatd", "connect", server_us_per_connection=250.0),
        run("chatd", "idle", kib_per_connection=8.0),
    ]
    unit = capacity.costs(results)
    assert unit["node_us_per_delivery"] == pytest.approx(0.6)
    assert unit["node_us_per_message_per_node"] == pytest.approx(0.2 * 49)
    assert unit["redis_us_per_message"] == pytest.approx(0.2 * 49)
    result = capacity.plan(unit, connections=1_000_000, room_size=50, per_minute=1, conns_per_node=50_000,
                           node_utilisation=0.7, redis_utilisation=0.7)
    # 16,667 messages/s, 816,667 deliveries/s; 20 nodes by connections, each
    # room spread over all 20: per node 0.025 + 0.163 cores.
    assert result["nodes"] == 20 and result["room_span"] == 20
    assert result["node_core_busy"] == pytest.approx(816_667 / 20 * 0.6e-6 + 16_667 * 9.8e-6, rel=1e-3)
    assert result["redis_shards"] == 1 and result["redis_cores"] == pytest.approx(16_667 * 9.8e-6, rel=1e-3)
    assert result["reconnect_storm_core_s"] == pytest.approx(250)
    assert result["first_limit"] == "connections per node"
    assert result["redis_shard_messages_per_s_ceiling"] == pytest.approx(0.7 / 9.8e-6)
    # A second node subscribed to a room costs Redis more per message: every
    # node a room spans counts, in the cores and in a shard's ceiling.
    unit = capacity.costs(
        [*results, run("chatd-workers2", "max", server_us_per_delivery=1.0, redis_us_per_delivery=0.25)])
    assert unit["redis_us_per_message_per_extra_node"] == pytest.approx(0.05 * 49)
    result = capacity.plan(unit, connections=1_000_000, room_size=50, per_minute=1, conns_per_node=50_000,
                           node_utilisation=0.7, redis_utilisation=0.7)
    per_message = 9.8e-6 + 19 * 2.45e-6
    assert result["redis_cores"] == pytest.approx(16_667 * per_message, rel=1e-3)
    assert result["redis_shard_messages_per_s_ceiling"] == pytest.approx(0.7 / per_message)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert capacity.main([str(path), "--per-minute", "60"]) == 0
    assert "| redis_shards | 14 |" in capsys.readouterr().out  # 60 times the traffic: Redis first
