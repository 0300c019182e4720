"""
chatd to test against: in this process on a loopback port, or the real
``twistd -n chatd``; systemd's notify socket.
Every wait is on an event, bounded by a timeout that fails with a reason.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import re
import sys
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import ProcessProtocol

from chatd.settings import Settings
from chatd.ws import ChatFactory
from tests.support.clients import WAIT, WSClient, connect, within


class InProcessServer:
    """chatd's factory on a real loopback port in the test's own reactor."""

    def __init__(self, settings: Settings, cluster: bool = False) -> None:
        from chatd.compose import compose

        self.server = compose(settings, reactor, reactor, cluster=cluster)
        self.factory = ChatFactory(settings, clock=reactor, reactor=reactor, server=self.server)
        self.clients: list[WSClient] = []
        self.port: Any = None

    async def start(self) -> "InProcessServer":
        endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        self.port = await endpoint.listen(self.factory)
        return self

    @property
    def port_number(self) -> int:
        return self.port.getHost().port

    async def client(self) -> WSClient:
        client = await connect(self.port_number)
        self.clients.append(client)
        return client

    async def welcomed(self) -> tuple[WSClient, str]:
        client = await self.client()
        welcome = await client.next()
        return client, welcome["client_id"]

    def all_gone(self) -> Deferred:
        """Fires once the server has no connection left (it has seen every close)."""
        factory = self.factory
        if not factory.connections:
            d: Deferred = Deferred()
            d.callback(None)
            return d
        d = Deferred()
        original = factory.connection_gone

        def gone(protocol: Any) -> None:
            original(protocol)
            if not factory.connections and not d.called:
                factory.connection_gone = original  # type: ignore[method-assign]
                d.callback(None)

        factory.connection_gone = gone  # type: ignore[method-assign]
        return within(d, "the server to see every connection close")

    async def stop(self) -> None:
        await self.port.stopListening()
        await within(self.factory.shutdown(timeout=5), "server shutdown")
        for client in self.clients:
            if not client.closed.called:
                await client.wait_closed()


def twistd_path() -> str:
    path = os.path.join(os.path.dirname(sys.executable), "twistd")
    if not os.path.exists(path):
        raise RuntimeError(f"no twistd beside {sys.executable}: is chatd installed?")
    return path


class DaemonProcess(ProcessProtocol):
    """``twistd -n chatd ...`` as a child, its output watched line by line."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred = Deferred()  # fires with the exit code
        self._watches: list[tuple[re.Pattern[bytes], Deferred]] = []
        self.pid: Optional[int] = None
        self.cwd: Optional[str] = None  # where it runs

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for pattern, d in list(self._watches):
            match = pattern.search(self.output)
            if match:
                self._watches.remove((pattern, d))
                d.callback(match)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        code = reason.value.exitCode
        for pattern, d in self._watches:
            d.errback(AssertionError(
                f"chatd exited ({code}) before printing {pattern.pattern!r}:\n"
                + self.output.decode(errors="replace")
            ))
        self._watches.clear()
        self.ended.callback(code)

    def wait_for(self, pattern: bytes, what: str, seconds: float = WAIT) -> Deferred:
        match = re.search(pattern, self.output)
        if match:
            d: Deferred = Deferred()
            d.callback(match)
            return d
        d = Deferred()
        self._watches.append((re.compile(pattern), d))
        return within(d, what, seconds)

    async def wait_listening(self) -> int:
        match = await self.wait_for(rb"ChatFactory(?: \(TLS\))? starting on (\d+)", "chatd to listen")
        return int(match.group(1))

    async def wait_api(self) -> int:
        match = await self.wait_for(rb"ApiSite starting on (\d+)", "the server API")
        return int(match.group(1))

    async def wait_metrics(self) -> int:
        match = await self.wait_for(rb"MetricsSite starting on (\d+)", "the metrics endpoint")
        return int(match.group(1))

    def signal(self, name: str) -> None:
        self.transport.signalProcess(name)

    async def wait_exit(self) -> int:
        return await within(self.ended, "chatd to exit")

    def rss_kib(self, field: str = "VmRSS") -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise RuntimeError(f"{field} not found for pid {self.pid}")


def spawn_chatd(
    *args: str, env: Optional[dict[str, str]] = None, cwd: Optional[str] = None, wrapper: tuple[str, ...] = (),
) -> DaemonProcess:
    """``twistd -n chatd ARGS`` in ``cwd`` (default: a new directory of its
    own, where the default store, sqlite:chatd.db, is made); ``wrapper``: a
    command that execs it (``prlimit ... --``), keeping its process ID."""
    process = DaemonProcess()
    twistd = twistd_path()
    argv = [*wrapper, twistd, "-n", "--pidfile=", "chatd", *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    process.cwd = cwd if cwd is not None else tempfile.mkdtemp(prefix="chatd-")
    executable = shutil.which(wrapper[0]) or wrapper[0] if wrapper else twistd
    reactor.spawnProcess(process, executable, argv, env=env, path=process.cwd)
    return process


async def stop_chatd(process: DaemonProcess) -> None:
    if not process.ended.called:
        process.signal("KILL")
        await process.wait_exit()


class NotifySocket:
    """A stand-in for systemd's $NOTIFY_SOCKET: collects the datagrams."""

    def __init__(self, path: str) -> None:
        from twisted.internet.protocol import DatagramProtocol

        self.path = path
        self.received: list[str] = []
        self._waiters: list[tuple[str, Deferred]] = []
        notify = self

        class _Receiver(DatagramProtocol):
            def datagramReceived(self, data: bytes, addr: Any) -> None:
                notify._got(data.decode())

        self.port = reactor.listenUNIXDatagram(path, _Receiver())

    def _got(self, message: str) -> None:
        self.received.append(message)
        for wanted, d in list(self._waiters):
            if wanted == message:
                self._waiters.remove((wanted, d))
                d.callback(message)

    def wait_for(self, message: str) -> Deferred:
        d: Deferred = Deferred()
        if message in self.received:
            d.callback(message)
            return d
        self._waiters.append((message, d))
        return within(d, f"{message} on $NOTIFY_SOCKET")

    def close(self) -> Deferred:
        return self.port.stopListening()
