"""
Prometheus metrics and the health endpoints, served by ``--metrics ENDPOINT``.

Counters are updated once per event (a broadcast, a frame), never once per
recipient.  Gauges of live state (connections, rooms, members) are read at
scrape time.  Everything runs on the reactor thread: the scrape renders
synchronously, so it never races the chat state.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Request

# Fan-out time per broadcast: from tens of microseconds (a few members) to
# tens of milliseconds (thousands).
FANOUT_BUCKETS = (
    25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3,
)


class Total:
    """
    A counter without labels for what happens on every message (messages,
    deliveries, bytes): a plain number, exported as a Prometheus counter
    (``NAME_total``, ``NAME_created``, as prometheus_client's own) when
    scraped.  prometheus_client's ``Counter`` takes a lock on every
    increment, about 4% of chatd's CPU at full load; chatd's counters change
    only on the reactor thread, so no lock is needed.
    """

    __slots__ = ("name", "documentation", "value", "created")

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry, created: float) -> None:
        self.name = name
        self.documentation = documentation
        self.value: float = 0
        self.created = created  # wall-clock seconds, for NAME_created
        registry.register(self)

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.value, created=self.created)

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())


class Metrics:
    """
    Every chatd metric, in a registry of its own.

    :param timer: a monotonic clock in seconds, for the fan-out histogram.
    :param wall_clock: seconds since the epoch, for the counters' creation
        time.
    """

    def __init__(
        self, timer: Callable[[], float] = time.perf_counter, wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.timer = timer
        self.registry = CollectorRegistry()
        r = self.registry
        now = wall_clock()
        self.messages_received = Total(
            "chatd_messages_received", "Chat messages accepted for broadcast.", r, now)
        self.deliveries = Total(
            "chatd_deliveries", "Broadcast copies queued to recipients.", r, now)
        self.bytes_received = Total(
            "chatd_received_bytes", "WebSocket message payload bytes received from clients.", r, now)
        self.bytes_sent = Total(
            "chatd_sent_bytes", "WebSocket message payload bytes sent to clients.", r, now)
        self.errors = Counter(
            "chatd_errors", "Error replies sent, by kind of error.", ["kind"], registry=r)
        self.slow_client_drops = Counter(
            "chatd_slow_client_drops", "Clients dropped for not reading (close 1008).", registry=r)
        self.handshake_failures = Counter(
            "chatd_handshake_failures", "Opening handshakes refused or timed out, by reason.",
            ["reason"], registry=r)
        self.moderation = Counter(
            "chatd_moderation", "Messages reviewed by moderators, by outcome.",
            ["outcome"], registry=r)
        self.auth = Counter(
            "chatd_auth", "Authentications, by result (ok, invalid, expired; refused: an "
            "action refused for want of one, or another user's token).",
            ["result"], registry=r)
        self.room_actions = Counter(
            "chatd_room_actions", "Owners' and moderators' actions carried out (invite, kick, ban, unban, "
            "op, deop).", ["action"], registry=r)
        self.redis_connect_failures = Counter(
            "chatd_redis_connect_failures", "Attempts to connect to a Redis of the cluster that failed.",
            registry=r)
        self.redis_available = Gauge(
            "chatd_redis_available", "1 while this node is in step with Redis (every shard), else 0.",
            registry=r)
        self.message_log = Counter(
            "chatd_message_log_rows", "Messages the message log wrote, failed to write, dropped or pruned (past --message-log-keep).",
            ["outcome"], registry=r)
        self.store_rows = Counter(
            "chatd_store_rows", "Rows the durable store wrote, failed to write, refused (too much waiting), "
            "dropped (message log) or pruned.", ["outcome"], registry=r)
        self.store_available = Gauge(
            "chatd_store_available", "1 while the durable store writes (or there is none), else 0.",
            registry=r)
        self.fanout_seconds = Histogram(
            "chatd_fanout_seconds",
            "Time to encode and fan out one broadcast (several from one read: together).",
            buckets=FANOUT_BUCKETS, registry=r)

    def watch(self, state: Callable[[], dict[str, float]]) -> None:
        """Report live gauges: ``state()`` maps short names to values."""
        self.registry.register(_StateCollector(state))


_GAUGES = {
    "connections": "Open connections, handshakes in progress included.",
    "rooms": "Rooms that exist.",
    "members": "Clients that are in a room.",
    "clients": "Clients past the handshake.",
    "history_bytes": "Memory the rooms' history takes (one process; a cluster's is in Redis).",
}


class _StateCollector:
    def __init__(self, state: Callable[[], dict[str, float]]) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, value in self._state().items():
            yield GaugeMetricFamily(f"chatd_{name}", _GAUGES[name], value=value)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


class _Text(Resource):
    isLeaf = True

    def __init__(self, render: Callable[[], tuple[int, bytes, str]]) -> None:
        super().__init__()
        self._render = render

    def render_GET(self, request: Request) -> bytes:
        code, body, content_type = self._render()
        request.setResponseCode(code)
        request.setHeader(b"content-type", content_type.encode())
        request.setHeader(b"cache-control", b"no-store")
        return body


def metrics_root(metrics: Metrics, not_ready: Callable[[], Optional[str]]) -> Resource:
    """``/metrics``, ``/healthz`` (the process runs) and ``/readyz``
    (serving; if not, ``not_ready()`` says why in its body)."""

    def render_metrics() -> tuple[int, bytes, str]:
        return 200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST

    def render_ready() -> tuple[int, bytes, str]:
        why = not_ready()
        if why is None:
            return 200, b"ready\n", "text/plain; charset=utf-8"
        return 503, f"not ready: {why}\n".encode("utf-8"), "text/plain; charset=utf-8"

    root = Resource()
    root.putChild(b"metrics", _Text(render_metrics))
    root.putChild(b"healthz", _Text(lambda: (200, b"ok\n", "text/plain; charset=utf-8")))
    root.putChild(b"readyz", _Text(render_ready))
    return root
