"""
Who may connect: the client's real address, and the connection limits, per
server and per address.

The limits are checked when a connection is accepted, before its handshake,
so that a flood of connections that never send a request costs at most its
quota.  A connection from a trusted reverse proxy is counted by the
client's address instead, which is known only once the proxy has said it
(the PROXY protocol header, or X-Forwarded-For / Forwarded in the request).
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from functools import lru_cache
from typing import Mapping, Optional, Sequence, Union

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

from chatd.ratelimit import TokenBucket

#: Addresses whose new-connection rate is tracked at once (see _prune_buckets).
MAX_TRACKED_ADDRESSES = 10_000


def address_of(peer: str) -> Optional[Address]:
    """
    The IP address in Autobahn's peer string ("tcp4:1.2.3.4:5678",
    "tcp6:::1:5678"); None for anything else ("unix:...").  IPv4 through a
    dual-stack socket is one address, counted once.
    """
    kind, _, rest = peer.partition(":")
    if kind not in ("tcp4", "tcp6"):
        return None
    return parse_ip(rest.rpartition(":")[0])


def parse_ip(text: str) -> Optional[Address]:
    """
    The IP address in ``text`` ("192.0.2.7", "192.0.2.7:5678", "2001:db8::1",
    "[2001:db8::1]:5678"); None if it is not one.  An IPv4 address mapped into
    IPv6 is the IPv4 address.
    """
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port
    return _address(text)


@lru_cache(maxsize=4096)
def _address(text: str) -> Optional[Address]:
    """``ipaddress``'s parse, remembered: clients come back from the same
    addresses, and parsing is a visible share of accepting a connection."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


# One element of a Forwarded header's list: its "for" parameter.
_FORWARDED_FOR = re.compile(r'(?:^|;)\s*for\s*=\s*("[^"]*"|[^;,\s]*)', re.IGNORECASE)


#: The forwarding headers a proxy may be said to set (--forwarded-header).
FORWARDED_HEADERS = ("x-forwarded-for", "forwarded")


def forwarded_chain(headers: Mapping[str, str], header: str = "x-forwarded-for") -> list[str]:
    """
    The client addresses a request's proxies reported in ``header``,
    nearest client first: X-Forwarded-For's list, or Forwarded's ``for=``
    (RFC 7239).  Only the header the proxies set is read: a proxy passes
    the other one on as the client sent it.  ``headers`` has lower-case
    names, repeated headers joined with ", ".
    """
    if header == "x-forwarded-for":
        chain = headers.get("x-forwarded-for")
        return [part.strip() for part in chain.split(",")] if chain is not None else []
    forwarded = headers.get("forwarded")
    if forwarded is None:
        return []
    found = []
    for element in forwarded.split(","):
        match = _FORWARDED_FOR.search(element.strip())
        found.append(match.group(1) if match else "")
    return found


class UntrustedProxy(Exception):
    """A PROXY protocol header from a peer that is not a trusted proxy."""


class TrustedProxies:
    """The networks whose forwarding headers are believed, and the header
    they set."""

    def __init__(self, networks: Sequence[str], header: str = "x-forwarded-for") -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        self.header = header
        # Asked twice per connection: remembered, for the same reason.
        self._trusted = lru_cache(maxsize=4096)(self._lookup)

    def __contains__(self, address: Address) -> bool:
        return self._trusted(address)

    def _lookup(self, address: Address) -> bool:
        return any(address in network for network in self.networks)

    def client_of(self, peer: Address, headers: Mapping[str, str]) -> tuple[Address, bool]:
        """
        The client's address for a request that came from ``peer``, and
        whether a forwarding header named it: from a trusted proxy, the
        rightmost address in its forwarding header that is not itself
        trusted (every one trusted: the leftmost); from anyone else,
        ``peer`` (a client cannot name another address for itself).  An
        entry that is not an address stops the walk at the hop after it.
        """
        if peer not in self:
            return peer, False
        client, forwarded = peer, False
        for entry in reversed(forwarded_chain(headers, self.header)):
            address = parse_ip(entry)
            if address is None:
                break
            client, forwarded = address, True
            if address not in self:
                break
        return client, forwarded


class Admission:
    """
    Counts the connections, in all and per address, and each address's new
    ones per minute (0 turns a limit off).

    A client connecting directly from a loopback address (a test suite, a
    bot on the same host) is not held to the per-address limits unless
    ``limit_loopback``; one whose address a proxy gave is.
    """

    def __init__(
        self, max_connections: int, max_per_address: int, per_address_per_minute: float,
        trusted: Sequence[str] = (), limit_loopback: bool = False, forwarded_header: str = "x-forwarded-for",
    ) -> None:
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.per_address_per_minute = per_address_per_minute
        self.trusted = TrustedProxies(trusted, forwarded_header)
        self.limit_loopback = limit_loopback
        self.connections = 0
        self._per_address: dict[str, int] = {}
        # New connections per address, as token buckets; a full bucket is
        # the same as none, so those are forgotten (see _prune_buckets).
        self._connect_buckets: dict[str, TokenBucket] = {}

    def counted_at_accept(self, peer: Optional[Address]) -> Optional[str]:
        """
        The address a connection from ``peer`` is counted under when it is
        accepted: None for a trusted proxy (its client is counted once the
        proxy has named it, ``counted_at_handshake``), for a direct loopback
        client (unless ``limit_loopback``) and for a peer with no IP address.
        """
        if peer is None or peer in self.trusted or (peer.is_loopback and not self.limit_loopback):
            return None
        return str(peer)

    def counted_at_handshake(
        self, accepted: Address, peer: Address, headers: Mapping[str, str]
    ) -> tuple[Address, bool, Optional[str]]:
        """
        For a connection accepted from ``accepted`` whose transport now
        reports ``peer`` (a PROXY protocol header changes it) and whose
        request has ``headers``: the client's address, whether a proxy gave
        it, and the address to count it under (None: not by address).
        UntrustedProxy if a PROXY header came from a peer that is no
        trusted proxy: whoever sent it is not a proxy speaking.
        """
        if peer != accepted and accepted not in self.trusted:
            raise UntrustedProxy(str(accepted))
        client, forwarded = self.trusted.client_of(peer, headers)
        proxied = forwarded or peer != accepted
        if not proxied and client.is_loopback and not self.limit_loopback:
            return client, False, None
        return client, proxied, str(client)

    def admit(self, ip: Optional[str], now: float) -> Optional[str]:
        """Count a new connection, from ``ip`` (None: not counted by
        address); if it is over a limit, why (it is then not counted)."""
        if self.max_connections and self.connections >= self.max_connections:
            return "Too many connections"
        if ip is not None:
            refusal = self.admit_address(ip, now)
            if refusal is not None:
                return refusal
        self.connections += 1
        return None

    def admit_address(self, ip: str, now: float) -> Optional[str]:
        """Count a connection under ``ip``; if that is over a limit, why."""
        count = self._per_address.get(ip, 0)
        if self.max_per_address and count >= self.max_per_address:
            return "Too many connections from your address"
        if self.per_address_per_minute and not self._connect_allowed(ip, now):
            return "Too many new connections from your address"
        self._per_address[ip] = count + 1
        return None

    def address_gone(self, ip: str) -> None:
        """A connection counted under ``ip`` has closed."""
        remaining = self._per_address[ip] - 1
        if remaining:
            self._per_address[ip] = remaining
        else:
            del self._per_address[ip]

    def gone(self, ip: Optional[str]) -> None:
        """A connection that ``admit`` counted has closed."""
        self.connections -= 1
        if ip is not None:
            self.address_gone(ip)

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
