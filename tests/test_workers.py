"""``--workers``: what the parent passes on to each worker, and what it refuses."""

from __future__ import annotations

import socket

import pytest

from twisted.internet.testing import MemoryReactor

from chatd.config import ConfigError
from chatd.settings import Settings
from chatd.listening import bind_reuseport, reuseport_address
from chatd.workers import WorkerPool, _Listener, metrics_for_worker, worker_arguments

REDIS = "redis://127.0.0.1:6379/0"


def test_a_worker_gets_the_parents_options_but_listens_on_the_inherited_sockets() -> None:
    raw = ["--workers", "4", "--listen", "tcp:8765", "--listen=unix:/run/chatd.sock",
           "--redis", REDIS, "--log-format", "json", "--metrics", "tcp:9108:interface=127.0.0.1",
           "--workers=4", "-c", "/etc/chatd/chatd.toml"]
    settings = Settings(workers=4, redis=(REDIS,), metrics="tcp:9108:interface=127.0.0.1")
    assert worker_arguments(raw, settings, 2, ["INET", "UNIX"]) == [
        "--redis", REDIS, "--log-format", "json", "-c", "/etc/chatd/chatd.toml",
        # The command line wins over the config file: one worker, these sockets.
        "--workers", "1", "--inherit-fd", "3:INET", "--inherit-fd", "4:UNIX",
        "--metrics", "tcp:9110:interface=127.0.0.1",
    ]


def test_metrics_ports_are_one_per_worker_or_refused() -> None:
    assert metrics_for_worker("tcp:9108", 3) == "tcp:9111"
    assert metrics_for_worker("tcp6:9108:interface=::1", 1) == "tcp6:9109:interface=::1"
    with pytest.raises(ConfigError, match="use a tcp:PORT endpoint"):
        metrics_for_worker("unix:/run/chatd-metrics.sock", 0)


def test_tls_listeners_are_refused_with_workers() -> None:
    settings = Settings(workers=2, redis=(REDIS,), listen=("ssl:8443:privateKey=k.pem",))
    with pytest.raises(ConfigError, match="ssl: listener is not supported"):
        WorkerPool(settings, [], reactor=None)


def test_tcp_listeners_are_bound_once_per_worker_and_others_shared(fast_path_on: object) -> None:
    reactor = MemoryReactor()
    # As Twisted parses them, with chatd's backlog unless one is given.
    assert reuseport_address(reactor, "tcp:8765") == (socket.AF_INET, "", 8765, 1024)
    assert reuseport_address(reactor, "tcp:port=8765") == (socket.AF_INET, "", 8765, 1024)
    assert reuseport_address(reactor, "tcp:0:interface=127.0.0.1:backlog=7") == (socket.AF_INET, "127.0.0.1", 0, 7)
    assert reuseport_address(reactor, "tcp:8765:127.0.0.1") == (socket.AF_INET, "127.0.0.1", 8765, 1024)
    assert reuseport_address(reactor, r"tcp6:8765:interface=\:\:1") == (socket.AF_INET6, "::1", 8765, 1024)
    assert reuseport_address(reactor, "tcp6:8765") == (socket.AF_INET6, "::", 8765, 1024)
    # Anything else is one socket for every worker.
    for description in ("unix:/run/chatd.sock", "systemd:domain=INET:index=0"):
        assert reuseport_address(reactor, description) is None, description


def test_sockets_bound_with_reuseport_share_one_port() -> None:
    handles = bind_reuseport(socket.AF_INET, "127.0.0.1", 0, 16, 3)
    try:
        ports = {handle.getsockname()[1] for handle in handles}
        assert len(handles) == 3 and len(ports) == 1 and 0 not in ports
        assert all(handle.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for handle in handles)
        # Taken by someone else without SO_REUSEPORT: refused, nothing left open.
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen(1)
            with pytest.raises(OSError):
                bind_reuseport(socket.AF_INET, "127.0.0.1", squatter.getsockname()[1], 16, 2)
    finally:
        for handle in handles:
            handle.close()


class FakePort:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.reading = False

    def fileno(self) -> int:
        return self.fd

    def startReading(self) -> None:
        self.reading = True

    def stopReading(self) -> None:
        self.reading = False


def test_a_down_workers_own_socket_is_answered_by_the_parent_meanwhile() -> None:
    own = _Listener([FakePort(10), FakePort(11)], "INET")
    shared = _Listener([FakePort(12)], "UNIX")
    assert [own.fd_for(i) for i in (0, 1)] == [10, 11] and [shared.fd_for(i) for i in (0, 1)] == [12, 12]
    own.worker_down(1, True)
    shared.worker_down(1, True)
    # The parent resets what comes in on worker 1's socket until it is back;
    # a shared socket needs nothing: the other workers accept from it.
    assert [p.reading for p in own.ports] == [False, True] and not shared.ports[0].reading
    own.worker_down(1, False)
    assert not own.ports[1].reading
