"""The connection limits, without sockets."""

from __future__ import annotations

from chatd.admission import MAX_TRACKED_ADDRESSES, Admission, address_of


def test_the_address_is_the_ip_of_a_tcp_peer_and_ipv4_is_one_address_on_a_dual_stack_socket() -> None:
    assert address_of("tcp4:192.0.2.7:5678") == "192.0.2.7"
    assert address_of("tcp6:2001:db8::1:5678") == "2001:db8::1"
    assert address_of("tcp6:::ffff:192.0.2.7:5678") == "192.0.2.7"
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
