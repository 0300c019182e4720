"""
The client's real address behind real reverse proxies, end to end: the real
``twistd -n chatd`` behind Debian's nginx (X-Forwarded-For) and HAProxy (the
PROXY protocol v2), clients connecting from 127.0.0.2 and 127.0.0.3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.support.clients import connect
from tests.support.raw import handshake_from
from tests.support.raw import free_port
from tests.support.servers import DaemonProcess
from tests.proxies import HAProxy, Nginx

LISTENING = rb"ChatFactory(?: \(PROXY\))? starting on (\d+)"


@pytest.fixture
def proxies() -> Any:
    started: list[Any] = []
    yield started
    for proxy in started:
        proxy.stop()


async def listening(chatd: DaemonProcess) -> int:
    return int((await chatd.wait_for(LISTENING, "chatd to listen")).group(1))


async def limited_separately(port: int, chatd: DaemonProcess, via: bytes) -> None:
    """Five clients from 127.0.0.2 get in, a sixth is refused; 127.0.0.3
    still gets in; chatd's log names each real address."""
    first = [await connect(port, source="127.0.0.2") for _ in range(5)]
    for client in first:
        assert (await client.next())["status"] == "connected"
    with pytest.raises(ConnectionError, match="503"):
        await connect(port, source="127.0.0.2")
    other = await connect(port, source="127.0.0.3")
    assert (await other.next())["status"] == "connected"
    await chatd.wait_for(rb"connected from 127\.0\.0\.2 via " + via, "127.0.0.2 in the log")
    await chatd.wait_for(rb"connected from 127\.0\.0\.3 via " + via, "127.0.0.3 in the log")
    for client in [*first, other]:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_behind_nginx_each_client_is_limited_by_its_own_address(
    daemon_factory: Callable[..., DaemonProcess], proxies: list[Any], tmp_path: Path,
) -> None:
    # The defaults trust a proxy on loopback.
    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--max-connections-per-ip", "5")
    nginx = Nginx(tmp_path / "nginx", await listening(chatd)).start()
    proxies.append(nginx)
    await limited_separately(nginx.port, chatd, via=rb"tcp4:127\.0\.0\.1:")


@pytest_twisted.ensureDeferred
async def test_behind_haproxy_the_proxy_protocol_gives_each_clients_address(
    daemon_factory: Callable[..., DaemonProcess], proxies: list[Any], tmp_path: Path,
) -> None:
    chatd = daemon_factory("--listen", "haproxy:tcp:0:interface=127.0.0.1", "--max-connections-per-ip", "5")
    haproxy = HAProxy(tmp_path / "haproxy", await listening(chatd)).start()
    proxies.append(haproxy)
    await limited_separately(haproxy.port, chatd, via=rb"tcp4:127\.0\.0\.1:")


@pytest_twisted.ensureDeferred
async def test_a_client_that_is_not_a_trusted_proxy_cannot_name_its_own_address(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    chatd = daemon_factory(
        "--listen", "tcp:0:interface=127.0.0.1", "--trusted-proxy", "127.0.0.1",
        "--limit-loopback", "--max-connections-per-ip", "1",
    )
    port = await listening(chatd)
    first = await connect(port, source="127.0.0.2")
    assert (await first.next())["status"] == "connected"
    await chatd.wait_for(rb"connected from tcp4:127\.0\.0\.2:", "the client's own address in the log")
    # Another from the same address, claiming to forward for someone else:
    # counted under its own address all the same.
    for header in (b"X-Forwarded-For: 203.0.113.9\r\n", b"Forwarded: for=203.0.113.9\r\n"):
        refused = await deferToThread(handshake_from, port, "127.0.0.2", header)
        assert refused.startswith(b"HTTP/1.1 503 Too many connections from your address\r\n"), refused
    await first.close()


@pytest_twisted.ensureDeferred
async def test_direct_loopback_clients_are_not_limited_by_address_by_default(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    chatd = daemon_factory(
        "--listen", "tcp:0:interface=127.0.0.1", "--max-connections-per-ip", "2",
        "--rate-connections-per-ip", "2",
    )
    port = await listening(chatd)
    # Five at once from one address, over both limits: each is welcomed (a
    # refusal would be an HTTP 503 instead of the welcome).
    clients = [await connect(port) for _ in range(5)]
    for client in clients:
        assert (await client.next())["status"] == "connected"
        await client.close()


@pytest_twisted.ensureDeferred
async def test_haproxy_in_front_of_workers(
    daemon_factory: Callable[..., DaemonProcess], proxies: list[Any], tmp_path: Path, redis_server: Any,
) -> None:
    port = free_port()
    chatd = daemon_factory(
        "--workers", "2", "--redis", redis_server.url,
        "--listen", f"haproxy:tcp:{port}:interface=127.0.0.1", "--max-connections-per-ip", "5",
    )
    await chatd.wait_for(rb"READY|Listening on .* for 2 workers", "the workers' socket")
    await chatd.wait_for(LISTENING, "a worker to listen")
    haproxy = HAProxy(tmp_path / "haproxy", port).start()
    proxies.append(haproxy)
    clients = [await connect(haproxy.port, source="127.0.0.2") for _ in range(4)]
    for client in clients:
        assert (await client.next())["status"] == "connected"
    await chatd.wait_for(rb"connected from 127\.0\.0\.2 via tcp4:127\.0\.0\.1:", "the real address in a worker's log")
    for client in clients:
        await client.close()
    # Stopped while Redis is still there (the workers leave it as they drain).
    chatd.signal("TERM")
    assert await chatd.wait_exit() == 0


@pytest_twisted.ensureDeferred
async def test_the_proxy_protocol_v1_names_the_client_too(daemon_factory: Callable[..., DaemonProcess]) -> None:
    chatd = daemon_factory("--listen", "haproxy:tcp:0:interface=127.0.0.1")
    port = await listening(chatd)
    header = b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 8765\r\n"

    def handshake() -> bytes:
        import socket

        from tests.fakes import HANDSHAKE

        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(header + HANDSHAKE)
            return sock.recv(4096)

    assert (await deferToThread(handshake)).startswith(b"HTTP/1.1 101")
    await chatd.wait_for(rb"connected from 203\.0\.113\.9 via tcp4:127\.0\.0\.1:", "the PROXY header's address")
