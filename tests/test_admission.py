"""The connection limits, without sockets."""

from __future__ import annotations

import ipaddress
from typing import Any, Optional

import pytest

from chatd.admission import (
    MAX_TRACKED_ADDRESSES,
    Admission,
    TrustedProxies,
    UntrustedProxy,
    address_of,
    forwarded_chain,
    parse_ip,
)


def test_the_address_is_the_ip_of_a_tcp_peer_and_ipv4_is_one_address_on_a_dual_stack_socket() -> None:
    assert str(address_of("tcp4:192.0.2.7:5678")) == "192.0.2.7"
    assert str(address_of("tcp6:2001:db8::1:5678")) == "2001:db8::1"
    assert str(address_of("tcp6:::ffff:192.0.2.7:5678")) == "192.0.2.7"
    assert address_of("unix:/run/chatd.sock") is None
    assert address_of("") is None


def test_limits_count_admitted_connections_only_and_forget_them_when_gone() -> None:
    admission = Admission(max_connections=3, max_per_address=2, per_address_per_minute=0)
    assert admission.admit("192.0.2.1", 0.0) is None
    assert admission.admit("192.0.2.1", 0.0) is None
    assert admission.admit("192.0.2.1", 0.0) == "Too many connections from your address"
    assert admission.admit(None, 0.0) is None
    assert admission.admit("192.0.2.2", 0.0) == "Too many connections"
    admission.gone("192.0.2.1")
    assert admission.admit("192.0.2.2", 0.0) is None
    assert admission.connections == 3


def test_new_connections_per_address_are_rate_limited() -> None:
    admission = Admission(max_connections=0, max_per_address=0, per_address_per_minute=2)
    assert admission.admit("192.0.2.1", 0.0) is None
    assert admission.admit("192.0.2.1", 0.0) is None
    assert admission.admit("192.0.2.1", 0.0) == "Too many new connections from your address"
    assert admission.admit("192.0.2.2", 0.0) is None
    assert admission.admit("192.0.2.1", 30.0) is None  # a token back after half a minute


def test_the_connection_rate_table_stays_bounded_and_cheap_under_many_addresses() -> None:
    admission = Admission(max_connections=0, max_per_address=0, per_address_per_minute=60)
    scans = 0
    prune = admission._prune_buckets

    def counted(now: float) -> None:
        nonlocal scans
        scans += 1
        prune(now)

    admission._prune_buckets = counted  # type: ignore[method-assign]
    # Addresses (only dict keys here) that all stay busy: none can be pruned.
    for i in range(MAX_TRACKED_ADDRESSES * 2):
        assert admission._connect_allowed(f"2001:db8::{i:x}", 0.0)
    assert len(admission._connect_buckets) <= MAX_TRACKED_ADDRESSES
    # One scan per thousand new addresses, not one per address.
    assert scans <= MAX_TRACKED_ADDRESSES * 2 // (MAX_TRACKED_ADDRESSES // 10) + 1
    # Idle addresses (full buckets) are forgotten first.
    admission._prune_buckets(120.0)
    assert admission._connect_buckets == {}


def ip(text: str) -> Any:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize("text, expected", [
    ("192.0.2.7", "192.0.2.7"),
    (" 192.0.2.7:5678 ", "192.0.2.7"),
    ("2001:db8::1", "2001:db8::1"),
    ("[2001:db8::1]:5678", "2001:db8::1"),
    ('"[2001:db8::1]"', "2001:db8::1"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("unknown", None),
    ("_hidden", None),
    ("", None),
    ("300.1.1.1", None),
])
def test_an_address_in_a_forwarding_header(text: str, expected: Optional[str]) -> None:
    address = parse_ip(text)
    assert (None if address is None else str(address)) == expected


def test_the_chain_is_read_from_the_one_header_the_proxies_set() -> None:
    assert forwarded_chain({"x-forwarded-for": "203.0.113.9, 10.0.0.2"}) == ["203.0.113.9", "10.0.0.2"]
    assert forwarded_chain({"forwarded": 'for=203.0.113.9;proto=https, For="[2001:db8::5]:80";by=x'},
                           "forwarded") == ["203.0.113.9", '"[2001:db8::5]:80"']
    assert forwarded_chain({"forwarded": "by=10.0.0.1"}, "forwarded") == [""]
    assert forwarded_chain({}) == []
    # The other header is whatever the client sent, passed on: never read.
    both = {"forwarded": "for=198.51.100.1", "x-forwarded-for": "203.0.113.66"}
    assert forwarded_chain(both, "forwarded") == ["198.51.100.1"]
    assert forwarded_chain(both, "x-forwarded-for") == ["203.0.113.66"]
    assert forwarded_chain({"forwarded": "for=198.51.100.1"}) == []
    assert forwarded_chain({"x-forwarded-for": "203.0.113.66"}, "forwarded") == []


PROXIES = TrustedProxies(["10.0.0.0/8", "2001:db8:ffff::/48"])


def test_a_trusted_proxys_client_is_the_rightmost_untrusted_address() -> None:
    proxy = ip("10.0.0.1")
    headers = {"x-forwarded-for": "198.51.100.7, 203.0.113.9, 10.0.0.2"}
    assert PROXIES.client_of(proxy, headers) == (ip("203.0.113.9"), True)
    # Every hop trusted: the leftmost.
    assert PROXIES.client_of(proxy, {"x-forwarded-for": "10.1.1.1, 10.0.0.2"}) == (ip("10.1.1.1"), True)
    # Forwarded, for IPv6, from proxies that set it.
    rfc7239 = TrustedProxies(["10.0.0.0/8"], "forwarded")
    assert rfc7239.client_of(proxy, {"forwarded": 'for="[2001:db8::5]:4711"'}) == (ip("2001:db8::5"), True)
    assert rfc7239.client_of(proxy, {"x-forwarded-for": "203.0.113.66"}) == (proxy, False)
    # No header: the proxy itself.
    assert PROXIES.client_of(proxy, {}) == (proxy, False)


def test_a_garbled_hop_stops_the_walk_at_the_hop_after_it() -> None:
    proxy = ip("10.0.0.1")
    assert PROXIES.client_of(proxy, {"x-forwarded-for": "198.51.100.7, bogus, 10.0.0.2"}) == (ip("10.0.0.2"), True)
    assert PROXIES.client_of(proxy, {"x-forwarded-for": "bogus"}) == (proxy, False)


def test_anyone_else_cannot_name_another_address_for_itself() -> None:
    client = ip("198.51.100.7")
    assert PROXIES.client_of(client, {"x-forwarded-for": "203.0.113.9"}) == (client, False)
    assert PROXIES.client_of(client, {"forwarded": "for=203.0.113.9"}) == (client, False)


def test_direct_loopback_clients_are_not_counted_by_address_unless_asked() -> None:
    loose = Admission(0, 1, 0, trusted=["10.0.0.0/8"])
    strict = Admission(0, 1, 0, trusted=["10.0.0.0/8"], limit_loopback=True)
    for loopback in ("127.0.0.1", "::1", "127.0.0.2"):
        assert loose.counted_at_accept(ip(loopback)) is None
        assert loose.counted_at_handshake(ip(loopback), ip(loopback), {}) == (ip(loopback), False, None)
        assert strict.counted_at_accept(ip(loopback)) == loopback
    # A trusted proxy is counted only once it has named the client...
    assert loose.counted_at_accept(ip("10.0.0.1")) is None
    # ...even a loopback one: it came through a proxy.
    assert loose.counted_at_handshake(ip("10.0.0.1"), ip("10.0.0.1"), {"x-forwarded-for": "127.0.0.5"}) == (
        ip("127.0.0.5"), True, "127.0.0.5")
    # A PROXY protocol header changed the peer: through a proxy too.
    assert loose.counted_at_handshake(ip("10.0.0.1"), ip("127.0.0.2"), {}) == (ip("127.0.0.2"), True, "127.0.0.2")
    # Anyone else is counted when accepted, under its own address.
    assert loose.counted_at_accept(ip("198.51.100.7")) == "198.51.100.7"
    assert loose.counted_at_handshake(ip("198.51.100.7"), ip("198.51.100.7"), {"x-forwarded-for": "1.2.3.4"}) == (
        ip("198.51.100.7"), False, "198.51.100.7")


def test_a_proxy_header_from_a_peer_that_is_no_trusted_proxy_is_refused() -> None:
    admission = Admission(0, 3, 0, trusted=["127.0.0.1"], limit_loopback=True)
    with pytest.raises(UntrustedProxy):
        admission.counted_at_handshake(ip("127.0.0.2"), ip("203.0.113.9"), {})
    with pytest.raises(UntrustedProxy):  # naming a trusted proxy does not make it one
        admission.counted_at_handshake(ip("127.0.0.2"), ip("127.0.0.1"), {"x-forwarded-for": "203.0.113.9"})
    # From the proxy, its header is believed, and the forwarding header only
    # when the address the PROXY header names is a trusted proxy too.
    assert admission.counted_at_handshake(ip("127.0.0.1"), ip("203.0.113.9"), {"x-forwarded-for": "1.2.3.4"}) == (
        ip("203.0.113.9"), True, "203.0.113.9")
    assert admission.counted_at_handshake(ip("127.0.0.1"), ip("127.0.0.1"), {"x-forwarded-for": "1.2.3.4"}) == (
        ip("1.2.3.4"), True, "1.2.3.4")
