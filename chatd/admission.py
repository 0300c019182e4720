"""
Who may connect: the connection limits, per server and per address.

Checked when a connection is accepted, before its handshake, so that a
flood of connections that never send a request costs at most its quota.
"""

from __future__ import annotations

import itertools
from typing import Optional

from chatd.ratelimit import TokenBucket

#: Addresses whose new-connection rate is tracked at once (see _prune_buckets).
MAX_TRACKED_ADDRESSES = 10_000


def address_of(peer: str) -> Optional[str]:
    """
    The IP address in Autobahn's peer string ("tcp4:1.2.3.4:5678",
    "tcp6:::1:5678"); None for anything else ("unix:...").  IPv4 through a
    dual-stack socket is one address, counted once.
    """
    kind, _, rest = peer.partition(":")
    if kind not in ("tcp4", "tcp6"):
        return None
    ip = rest.rpartition(":")[0]
    if ip.startswith("::ffff:") and "." in ip:
        ip = ip[7:]
    return ip


class Admission:
    """
    Counts the connections, in all and per address, and each address's new
    ones per minute (0 turns a limit off).
    """

    def __init__(self, max_connections: int, max_per_address: int, per_address_per_minute: float) -> None:
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.per_address_per_minute = per_address_per_minute
        self.connections = 0
        self._per_address: dict[str, int] = {}
        # New connections per address, as token buckets; a full bucket is
        # the same as none, so those are forgotten (see _prune_buckets).
        self._connect_buckets: dict[str, TokenBucket] = {}

    def admit(self, ip: Optional[str], now: float) -> Optional[str]:
        """Count a new connection from ``ip`` (None: not an IP address);
        if it is over a limit, why (it is then not counted)."""
        if self.max_connections and self.connections >= self.max_connections:
            return "Too many connections"
        if ip is not None:
            count = self._per_address.get(ip, 0)
            if self.max_per_address and count >= self.max_per_address:
                return "Too many connections from your address"
            if self.per_address_per_minute and not self._connect_allowed(ip, now):
                return "Too many new connections from your address"
            self._per_address[ip] = count + 1
        self.connections += 1
        return None

    def gone(self, ip: Optional[str]) -> None:
        """A connection that ``admit`` counted has closed."""
        self.connections -= 1
        if ip is not None:
            remaining = self._per_address[ip] - 1
            if remaining:
                self._per_address[ip] = remaining
            else:
                del self._per_address[ip]

    def _connect_allowed(self, ip: str, now: float) -> bool:
        bucket = self._connect_buckets.get(ip)
        if bucket is None:
            if len(self._connect_buckets) >= MAX_TRACKED_ADDRESSES:
                self._prune_buckets(now)
            per_minute = self.per_address_per_minute
            bucket = self._connect_buckets[ip] = TokenBucket(per_minute / 60, max(1.0, per_minute), now)
        return bucket.take(now) == 0.0

    def _prune_buckets(self, now: float) -> None:
        """
        Forget the addresses whose buckets have refilled (they are idle). If
        that is not enough (many addresses at once), forget the oldest tenth
        too, so that the scan runs at most once per that many new addresses
        rather than for every one.
        """
        buckets = self._connect_buckets
        for ip in [ip for ip, bucket in buckets.items() if bucket.full(now)]:
            del buckets[ip]
        excess = len(buckets) - MAX_TRACKED_ADDRESSES * 9 // 10
        for ip in list(itertools.islice(buckets, max(0, excess))):
            del buckets[ip]
