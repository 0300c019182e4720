"""
The adversarial suite: each attack docs/security.md lists, run as an
attacker would, from outside, over raw sockets where the attack needs them,
against the real ``twistd -n chatd`` or a real server on loopback.  Every
test bounds what the attacker could make the server spend.
"""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.fakes import HANDSHAKE, client_frame
from tests.helpers import InProcessServer, StalledClient, connect, read_until_eof

MIB = 1024 * 1024


# -- what a connection can make the server hold ----------------------------------


@pytest_twisted.ensureDeferred
async def test_a_ping_flood_from_a_client_that_never_reads_is_cut_off(daemon_factory) -> None:
    # Each ping makes Autobahn write a pong at once.  A client that sends
    # pings and never reads must neither grow the server's memory (the
    # pongs count against its outgoing limit, and it is no longer read once
    # its buffer is full) nor keep its connection (its pings are no longer
    # traffic that puts off the ping timeout).
    chatd = daemon_factory(
        "--listen", "tcp:0:interface=127.0.0.1", "--max-outgoing-buffer", str(MIB),
        "--ping-interval", "1", "--ping-timeout", "1",
    )
    port = await chatd.wait_listening()
    budget = 64 * MIB
    rss_before = chatd.rss_kib()

    def flood() -> tuple[int, bool]:
        """Pings until the server drops the connection or the budget is spent."""
        stalled = StalledClient(port)
        burst = client_frame(b"p" * 125, opcode=9) * 512
        sent = 0
        try:
            while sent < budget:
                stalled.sock.sendall(burst)
                sent += len(burst)
        except ConnectionError:
            return sent, True
        finally:
            stalled.close()
        return sent, False

    sent, dropped = await deferToThread(flood)
    growth_mib = (chatd.rss_kib("VmHWM") - rss_before) / 1024
    assert dropped, f"the flooding client was never dropped ({sent} bytes of pings sent)"
    assert sent < budget // 2, f"the server read {sent / MIB:.1f} MiB of pings from a client that never reads"
    assert growth_mib < 8, f"server RSS peak grew by {growth_mib:.1f} MiB"
    # Everyone else is served as before.
    other = await connect(port)
    assert (await other.next())["status"] == "connected"
    await other.close()


def send_head(port: int, head: bytes) -> bytes:
    """Send ``head`` as it is; whatever the server answers, until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        try:
            sock.sendall(head)
        except ConnectionError:
            pass  # refused while still sending: what it answered is read below
        return read_until_eof(sock)


@pytest_twisted.ensureDeferred
async def test_a_request_head_that_never_ends_is_refused_at_16_kib(server: InProcessServer) -> None:
    # Autobahn would buffer it until the handshake timeout, searching all of
    # it again on every read.
    endless = b"GET / HTTP/1.1\r\nHost: localhost\r\n" + b"X-Padding: " + b"a" * 20_000
    answer = await deferToThread(send_head, server.port_number, endless)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:100]
    values = server.factory.metrics.registry.get_sample_value
    assert values("chatd_handshake_failures_total", {"reason": "too_large"}) == 1


@pytest_twisted.ensureDeferred
async def test_a_large_request_head_under_the_limit_is_accepted(server: InProcessServer) -> None:
    cookie = b"Cookie: session=" + b"c" * 12_000 + b"\r\n"
    head = HANDSHAKE[:-2] + cookie + b"\r\n"

    def handshake() -> bytes:
        with socket.create_connection(("127.0.0.1", server.port_number), timeout=20) as sock:
            sock.sendall(head)
            return sock.recv(100)

    assert (await deferToThread(handshake)).startswith(b"HTTP/1.1 101 ")
