"""
``chatd-bench capacity RESULTS.json...``: how many chatd nodes and Redis
shards a deployment needs, computed from measured costs (a results file of
``chatd-bench compare`` with the servers chatd, chatd-redis and, for the
cost of each further node in a room, chatd-workers2, and the scenarios
max, idle and connect), so that the figures follow the measurements.

The model (docs/scaling.md, "A capacity model"):

- one process's cost per delivery is ``max``'s server us/delivery for
  ``chatd``; a cluster node's is ``chatd-redis``'s less its Redis share,
  and what it costs beyond one process is an overhead per message per node
  that receives the message (the node's extra us/delivery times the
  deliveries per message of ``max``);
- Redis costs ``redis_us_per_delivery`` times the deliveries per message of
  ``max`` per message with one node subscribed, and each further node
  subscribed to the room adds what ``chatd-workers2`` (two nodes) shows;
- members of a room land on nodes at random (a load balancer knows no
  rooms), so a room of M members spans min(M, nodes) nodes, and each of
  them receives each of the room's messages;
- memory per connection is ``idle``'s KiB/connection; a reconnect storm
  costs ``connect``'s server us/connection for every client.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from typing import Any

#: What the ``max`` scenario sends: rooms of this many members, one sender each.
MAX_MEMBERS = 50


def medians(results: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    """The median of each numeric figure, by (server, scenario)."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in results:
        grouped.setdefault((run["server"], run["scenario"]), []).append(run)
    out: dict[tuple[str, str], dict[str, float]] = {}
    for key, runs in grouped.items():
        figures: dict[str, float] = {}
        for name in runs[0]:
            values = [r[name] for r in runs if isinstance(r.get(name), (int, float)) and not isinstance(r.get(name), bool)]
            if values:
                figures[name] = statistics.median(values)
        out[key] = figures
    return out


def costs(results: list[dict[str, Any]]) -> dict[str, float]:
    """The unit costs the model needs, from a results file."""
    m = medians(results)
    per_message = MAX_MEMBERS - 1  # deliveries of one message in ``max``
    local = m[("chatd", "max")]["server_us_per_delivery"]
    cluster = m[("chatd-redis", "max")]
    redis = cluster.get("redis_us_per_delivery", 0.0)
    node = cluster["server_us_per_delivery"] - redis
    unit = {
        "local_us_per_delivery": local,
        "node_us_per_delivery": node,
        "node_us_per_message_per_node": max(0.0, node - local) * per_message,
        "redis_us_per_message": redis * per_message,
        "redis_us_per_message_per_extra_node": 0.0,
        "connect_us": m[("chatd", "connect")]["server_us_per_connection"],
        "kib_per_connection": m[("chatd", "idle")]["kib_per_connection"],
    }
    two = m.get(("chatd-workers2", "max"))
    if two is not None and "redis_us_per_delivery" in two:
        # Two nodes subscribed to each room: what the second adds.
        unit["redis_us_per_message_per_extra_node"] = max(
            0.0, two["redis_us_per_delivery"] - redis) * per_message
    return unit


def plan(
    unit: dict[str, float], connections: int, room_size: int, per_minute: float,
    conns_per_node: int, node_utilisation: float, redis_utilisation: float,
) -> dict[str, Any]:
    """Nodes and Redis shards for the workload, and what limits them."""
    messages = connections * per_minute / 60
    deliveries = messages * (room_size - 1)
    rooms = connections / room_size
    nodes = max(1, math.ceil(connections / conns_per_node))
    while True:
        span = min(room_size, nodes)  # nodes each room's messages reach
        per_node = (deliveries / nodes * unit["node_us_per_delivery"]
                    + messages * span / nodes * unit["node_us_per_message_per_node"]) / 1e6
        if per_node <= node_utilisation or nodes > 10_000:
            break
        nodes += 1
    # What a message costs Redis with the room's every node subscribed.
    redis_us = unit["redis_us_per_message"] + (span - 1) * unit["redis_us_per_message_per_extra_node"]
    redis_cores = messages * redis_us / 1e6
    shards = max(1, math.ceil(redis_cores / redis_utilisation - 1e-9))
    node_limits = {
        "connections": connections / nodes / conns_per_node,
        "cpu": per_node / node_utilisation,
    }
    # Once rooms span every node, each node handles every message: more
    # nodes no longer help past this rate (rooms routed to nodes would).
    ceiling = node_utilisation / (unit["node_us_per_message_per_node"] / 1e6) if unit[
        "node_us_per_message_per_node"] else math.inf
    return {
        "connections": connections, "rooms": rooms, "messages_per_s": messages, "deliveries_per_s": deliveries,
        "nodes": nodes, "node_core_busy": per_node, "room_span": span,
        "node_memory_gib": connections / nodes * unit["kib_per_connection"] / 2**20,
        "redis_cores": redis_cores, "redis_shards": shards,
        "reconnect_storm_core_s": connections * unit["connect_us"] / 1e6,
        "cluster_messages_per_s_ceiling": ceiling,
        "redis_shard_messages_per_s_ceiling": redis_utilisation / (redis_us / 1e6) if redis_us else math.inf,
        "node_limited_by": max(node_limits, key=lambda k: node_limits[k]),
        "first_limit": "Redis (one shard)" if shards > 1 else (
            "node CPU" if node_limits["cpu"] >= node_limits["connections"] else "connections per node"),
    }


def report(unit: dict[str, float], result: dict[str, Any]) -> str:
    lines = ["| measured cost | value |", "|---|---|"]
    for name, value in unit.items():
        lines.append(f"| {name} | {value:.2f} |")
    lines += ["", "| for the workload | value |", "|---|---|"]
    for name, value in result.items():
        text = f"{value:,.2f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value
        lines.append(f"| {name} | {text} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chatd-bench capacity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results files of chatd-bench compare (JSON): every run counts")
    parser.add_argument("--connections", type=int, default=1_000_000)
    parser.add_argument("--room-size", type=int, default=50)
    parser.add_argument("--per-minute", type=float, default=1.0, help="messages per member per minute")
    parser.add_argument("--conns-per-node", type=int, default=50_000,
                        help="connections one node (one core) is given at most")
    parser.add_argument("--node-utilisation", type=float, default=0.7, help="of a core, per node")
    parser.add_argument("--redis-utilisation", type=float, default=0.7, help="of a core, per Redis shard")
    args = parser.parse_args(argv)
    runs: list[dict[str, Any]] = []
    for path in args.results:
        with open(path) as f:
            runs.extend(json.load(f))
    unit = costs(runs)
    result = plan(unit, args.connections, args.room_size, args.per_minute, args.conns_per_node,
                  args.node_utilisation, args.redis_utilisation)
    print(report(unit, result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
