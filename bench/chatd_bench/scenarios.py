"""
The benchmark scenarios.  Each connects its clients to a fresh server,
measures a window, checks every delivery, and returns a flat dict of
results.  ``server_pid`` is the process whose CPU and memory are measured.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Callable

from chatd_bench.loadgen import Bench, Client, core_busy, cpu_seconds, message_frame, process_tree, rss_kib

SERVER_CORE, LOAD_CORE = 0, 1

#: Other processes whose CPU (their process trees') counts as the
#: server's: its Redis, or its PostgreSQL with every backend.
ALSO_MEASURED: list[int] = []


def server_cpu(pid: int) -> float:
    """CPU seconds of the server: its process tree (workers too) and ALSO_MEASURED."""
    return sum(cpu_seconds(p) for p in {*process_tree(pid), *_also()})


def also_measured_cpu() -> float:
    """CPU seconds of ALSO_MEASURED alone (the server's Redis or PostgreSQL)."""
    return sum(cpu_seconds(p) for p in _also())


def _also() -> set[int]:
    return {p for pid in ALSO_MEASURED for p in process_tree(pid)}


class Window:
    """CPU of the server and of this process, and both cores' load, over a span."""

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid

    def __enter__(self) -> "Window":
        self.t0 = time.monotonic()
        self.server0 = server_cpu(self.pid)
        self.redis0 = also_measured_cpu()
        self.self0 = cpu_seconds(os.getpid())
        self.cores0 = core_busy()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.monotonic() - self.t0
        self.server_cpu = server_cpu(self.pid) - self.server0
        self.redis_cpu = also_measured_cpu() - self.redis0
        self.loadgen_cpu = cpu_seconds(os.getpid()) - self.self0
        cores1 = core_busy()
        self.core_load = {}
        for core in (SERVER_CORE, LOAD_CORE):
            busy0, total0 = self.cores0.get(core, (0.0, 0.0))
            busy1, total1 = cores1.get(core, (0.0, 1.0))
            self.core_load[core] = (busy1 - busy0) / max(1.0, total1 - total0)

    def costs(self, delivered: int) -> dict[str, Any]:
        """CPU per delivery: the server's (its Redis included), of which its
        Redis's, and the generator's."""
        per = 1e6 / max(1, delivered)
        costs = {
            "server_us_per_delivery": round(self.server_cpu * per, 2),
            "loadgen_us_per_delivery": round(self.loadgen_cpu * per, 2),
        }
        if ALSO_MEASURED:
            costs["redis_us_per_delivery"] = round(self.redis_cpu * per, 2)
        return costs

    def report(self) -> dict[str, Any]:
        return {
            "server_core_busy": round(self.core_load[SERVER_CORE], 3),
            "loadgen_core_busy": round(self.core_load[LOAD_CORE], 3),
            # A run whose generator core was saturated measured the generator.
            "loadgen_limited": self.core_load[LOAD_CORE] > 0.95,
        }


async def room_clients(bench: Bench, rooms: int, members: int) -> list[list[Client]]:
    clients = await bench.connect(rooms * members)
    groups = [clients[r * members:(r + 1) * members] for r in range(rooms)]
    await bench.rooms(groups)
    return groups


def percentile(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6  # ms


async def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def fanout(port: int, server_pid: int, rooms: int = 10, members: int = 50,
                 rate: float = 200.0, duration: float = 10.0) -> dict[str, Any]:
    """A fixed offered rate of messages, every member sending in turn."""
    bench = Bench(port)
    groups = await room_clients(bench, rooms, members)
    return await _fanout_window(bench, groups, members, rate, duration, server_pid)


async def _fanout_window(bench: Bench, groups: list[list[Client]], members: int, rate: float, duration: float,
                         server_pid: int) -> dict[str, Any]:
    senders = [c for group in groups for c in group]
    seqs = [0] * len(bench.clients)
    sent = 0
    with Window(server_pid) as window:
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < duration:
            due = int(elapsed * rate) - sent
            for _ in range(due):
                client = senders[sent % len(senders)]
                client.send(message_frame(client.room, client.index, seqs[client.index]))
                seqs[client.index] += 1
                sent += 1
            await asyncio.sleep(0.002)
        expected = sent * (members - 1)
        await wait_until(lambda: bench.stats.delivered >= expected, 5.0)
    stats = bench.stats
    await bench.close()
    return {
        "sent": sent,
        "delivered_per_s": round(stats.delivered / duration),
        "lost": expected - stats.delivered,
        "p50_ms": round(percentile(stats.latencies_ns, 0.50), 3),
        "p99_ms": round(percentile(stats.latencies_ns, 0.99), 3),
        "max_ms": round(max(stats.latencies_ns, default=0) / 1e6, 3),
        "server_us_per_delivery": round(window.server_cpu / max(1, stats.delivered) * 1e6, 2),
        "errors": stats.errors,
        "checker": bench.checker,
        **window.report(),
    }


async def maximum(port: int, server_pid: int, rooms: int = 10, members: int = 50,
                  step_seconds: float = 3.0) -> dict[str, Any]:
    """
    Closed loop: one sender per room keeps ``window`` messages unacknowledged;
    the window doubles until deliveries per second stop growing.
    """
    bench = Bench(port, record_latency=False)
    groups = await room_clients(bench, rooms, members)
    senders = [group[0] for group in groups]
    seqs = {s.index: 0 for s in senders}
    state = {"window": 0, "running": False}
    outstanding = {s.index: 0 for s in senders}

    def send_one(sender: Client) -> None:
        sender.send(message_frame(sender.room, sender.index, seqs[sender.index]))
        seqs[sender.index] += 1
        outstanding[sender.index] += 1

    original_on_ack = bench.on_ack

    def on_ack(client: Client) -> None:
        original_on_ack(client)
        if client.index in outstanding:
            outstanding[client.index] -= 1
            while state["running"] and outstanding[client.index] < state["window"]:
                send_one(client)

    bench.on_ack = on_ack  # type: ignore[method-assign]
    steps = []
    best: dict[str, Any] = {}
    for window_size in (1, 2, 4, 8, 16, 32, 64, 128):
        state["window"], state["running"] = window_size, True
        for sender in senders:
            while outstanding[sender.index] < window_size:
                send_one(sender)
        await asyncio.sleep(0.5)  # settle at the new window
        before = bench.stats.delivered
        with Window(server_pid) as w:
            await asyncio.sleep(step_seconds)
            delivered = bench.stats.delivered - before
        rate = delivered / w.seconds
        step = {"window": window_size, "delivered_per_s": round(rate), **w.costs(delivered), **w.report()}
        steps.append(step)
        if not best or rate > best["delivered_per_s"]:
            best = step
        if len(steps) >= 3 and rate < 1.03 * steps[-2]["delivered_per_s"] and rate < 1.03 * steps[-3]["delivered_per_s"]:
            break  # two doublings bought nothing: the plateau
    state["running"] = False
    total_sent = sum(seqs.values())
    await wait_until(lambda: bench.stats.delivered >= total_sent * (members - 1), 10.0)
    lost = total_sent * (members - 1) - bench.stats.delivered
    errors = bench.stats.errors
    await bench.close()
    return {
        "plateau_delivered_per_s": best["delivered_per_s"],
        **{key: value for key, value in best.items() if key.endswith("_us_per_delivery")},
        "plateau_window": best["window"],
        "checker": bench.checker,
        "lost": lost,
        "errors": errors,
        "steps": steps,
        "server_core_busy": best["server_core_busy"],
        "loadgen_core_busy": best["loadgen_core_busy"],
        "loadgen_limited": best["loadgen_limited"],
    }


async def idle(port: int, server_pid: int, connections: int = 5000, members: int = 50) -> dict[str, Any]:
    """Many joined, idle connections: memory per connection; then one broadcast a room."""
    bench = Bench(port)
    rss_before = rss_kib(server_pid)
    rooms = max(1, connections // members)
    groups = await room_clients(bench, rooms, members)
    await asyncio.sleep(1.0)  # let the server settle
    rss_after = rss_kib(server_pid)
    joined = sum(len(g) for g in groups)
    for group in groups:
        group[0].send(message_frame(group[0].room, group[0].index, 0))
    expected = sum(len(g) - 1 for g in groups)
    reached = await wait_until(lambda: bench.stats.delivered >= expected, 30.0)
    errors = bench.stats.errors
    await bench.close()
    return {
        "connections": joined,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "kib_per_connection": round((rss_after - rss_before) / joined, 2),
        "all_reached": reached and bench.stats.delivered == expected,
        "errors": errors,
    }


async def connect(port: int, server_pid: int, total: int = 5000, concurrency: int = 100) -> dict[str, Any]:
    """
    Handshake plus welcome, ``concurrency`` at a time, each then closed: with
    the closing handshake (the server closes the TCP connection), and then
    as many again aborted (a reset, as a client that goes away does).
    """
    bench = Bench(port)
    loop = asyncio.get_running_loop()
    semaphore = asyncio.Semaphore(concurrency)
    done = 0

    async def one(index: int, clean: bool) -> None:
        nonlocal done
        async with semaphore:
            _, client = await loop.create_connection(lambda: Client(bench, index), "127.0.0.1", port)
            await client.replies.get()
            assert client.transport is not None
            if clean:
                await client.close()
            else:
                client.transport.abort()
            done += 1

    results: dict[str, Any] = {}
    for clean, suffix in ((True, ""), (False, "_abort")):
        done = 0
        with Window(server_pid) as window:
            await asyncio.gather(*(one(i, clean) for i in range(total)))
        results[f"connections_per_s{suffix}"] = round(done / window.seconds)
        results[f"server_us_per_connection{suffix}"] = round(window.server_cpu / done * 1e6, 1)
        if clean:
            results.update(window.report())
    return {**results, "errors": bench.stats.errors}


async def joins(port: int, server_pid: int, total: int = 5000) -> dict[str, Any]:
    """
    A join storm: ``total`` welcomed clients all join one room at once (on
    a server of several workers or nodes, through each of them).  Every
    join must succeed and every joiner be a member; the figure is the
    server's CPU per join, its Redis's included.
    """
    bench = Bench(port, record_latency=False)
    owner, *joiners = await bench.connect(total + 1)
    room_id = (await owner.request({"action": "create", "body": "storm"}))["room_id"]
    join = {"action": "join", "body": {"room_id": room_id}}
    with Window(server_pid) as window:
        replies = await asyncio.gather(*(client.request(join) for client in joiners))
    refused = [reply for reply in replies if reply.get("status") != "success"]
    members = (await owner.request({"action": "members"})).get("members", [])
    errors = [f"join refused: {reply}" for reply in refused[:5]]
    if len(members) != total + 1:
        errors.append(f"{len(members)} members after {total} joins")
    await bench.close()
    return {
        "joins": total,
        "joins_per_s": round(total / window.seconds),
        "server_us_per_join": round(window.server_cpu / total * 1e6, 1),
        **({"redis_us_per_join": round(window.redis_cpu / total * 1e6, 1)} if ALSO_MEASURED else {}),
        "members": len(members),
        "errors": errors,
        **window.report(),
    }




async def _keep_joining(clients: list[Client], room_ids: list[str]) -> int:
    """Each client enters every room of ``room_ids`` it is not in, keeping
    the others; how many refusals."""
    refused = 0
    for client in clients:
        for room_id in room_ids:
            reply = await paced(client, {"action": "join", "body": {"room_id": room_id, "keep": True}})
            refused += reply.get("status") != "success"
    return refused


async def paced(client: Client, command: dict[str, Any]) -> dict[str, Any]:
    """``command``'s reply, waiting out the server's command rate limit."""
    while True:
        reply: dict[str, Any] = await client.request(command)
        if reply.get("message") != "Rate limit exceeded":
            return reply
        await asyncio.sleep(float(reply.get("retry_after", 0.1)))


async def memberships(port: int, server_pid: int, connections: int = 1000, rooms: int = 100,
                      extra: int = 20) -> dict[str, Any]:
    """
    What a membership beyond the first costs: ``connections`` clients, each
    in one room, then each in ``extra`` more (of ``rooms`` rooms, kept with
    ``"keep": true``); the server's memory before and after, per membership.
    """
    bench = Bench(port, record_latency=False)
    owners = await bench.connect(rooms)
    room_ids = [(await owner.request({"action": "create", "body": f"room {n}"}))["room_id"]
                for n, owner in enumerate(owners)]
    clients = await bench.connect(connections)
    await asyncio.gather(*(c.request({"action": "join", "body": {"room_id": room_ids[i % rooms]}})
                           for i, c in enumerate(clients)))
    await asyncio.sleep(1.0)  # let the server settle
    rss_before = rss_kib(server_pid)
    refused = sum(await asyncio.gather(*(
        _keep_joining([client], [room_ids[(i + 1 + k) % rooms] for k in range(extra)])
        for i, client in enumerate(clients))))
    await asyncio.sleep(1.0)
    rss_after = rss_kib(server_pid)
    added = connections * extra
    errors = bench.stats.errors + ([f"{refused} keep-joins refused"] if refused else [])
    await bench.close()
    return {
        "connections": connections,
        "extra_memberships": added,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "bytes_per_extra_membership": round((rss_after - rss_before) * 1024 / added),
        "errors": errors,
    }


async def many_rooms(port: int, server_pid: int, rooms: int = 10, members: int = 50, also_in: int = 99,
                     rate: float = 200.0, duration: float = 10.0) -> dict[str, Any]:
    """
    ``fanout``, with every member in ``also_in`` other rooms besides (quiet
    ones, kept with ``"keep": true``): a room's message reaches a member of
    100 rooms as it reaches a member of one, or this shows the difference.
    """
    bench = Bench(port)
    owner, = await bench.connect(1)  # before the checker's tables are made
    groups = await room_clients(bench, rooms, members)
    quiet = [_room_id(await paced(owner, {"action": "create", "body": {"name": f"quiet {n}", "keep": True}}))
             for n in range(also_in)]
    members_all = [c for group in groups for c in group]
    refused = sum(await asyncio.gather(*(_keep_joining([c], quiet) for c in members_all)))
    # Each member's own room is its current one again: the messages go there.
    for group in groups:
        room_id = bench.room_ids[group[0].room]
        await asyncio.gather(*(paced(c, {"action": "join", "body": {"room_id": room_id, "keep": True}})
                               for c in group))
    result = await _fanout_window(bench, groups, members, rate, duration, server_pid)
    if refused:
        result["errors"] = [*result["errors"], f"{refused} keep-joins refused"]
    return {**result, "rooms_per_member": also_in + 1}


SCENARIOS = {"fanout": fanout, "max": maximum, "idle": idle, "connect": connect, "joins": joins,
             "memberships": memberships, "many_rooms": many_rooms}


def _room_id(reply: dict[str, Any]) -> str:
    if reply.get("status") != "success":
        raise RuntimeError(f"create refused: {reply}")
    return str(reply["room_id"])
