"""
Real-socket helpers for the end-to-end tests: an Autobahn WebSocket client,
an in-process chatd, and the real ``twistd -n chatd`` as a child process.
Every wait is on an event, bounded by a timeout that fails with a reason.
"""

from __future__ import annotations

import shutil
import json
import os
import re
import socket
import struct
import sys
import tempfile
from collections import deque
from typing import Any, Optional

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.protocol import ProcessProtocol

from chatd.settings import Settings
from chatd.ws import ChatFactory
from tests.fakes import HANDSHAKE, client_frame

WAIT = 20.0  # seconds any single expected event may take before a test fails


def within(d: Deferred, what: str, seconds: float = WAIT) -> Deferred:
    """Fail ``d`` with a readable message if it does not fire in time."""

    def timed_out(failure: Any) -> Any:
        from twisted.internet.defer import TimeoutError

        if failure.check(TimeoutError):
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        return failure

    return d.addTimeout(seconds, reactor).addErrback(timed_out)


class _ClientProtocol(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.factory.client._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.client._received(payload)

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        self.factory.client._closed(code, reason)


class WSClient:
    """A WebSocket client that queues every message it receives."""

    def __init__(self) -> None:
        self.protocol: Optional[_ClientProtocol] = None
        self.inbox: deque[bytes] = deque()
        self._waiters: deque[Deferred] = deque()
        self._open: Deferred = Deferred()
        self.closed: Deferred = Deferred()  # fires with (code, reason)
        self.close_code: Optional[int] = None

    def _opened(self, protocol: _ClientProtocol) -> None:
        self.protocol = protocol
        self._open.callback(self)

    def _received(self, payload: bytes) -> None:
        if self._waiters:
            self._waiters.popleft().callback(payload)
        else:
            self.inbox.append(payload)

    def _closed(self, code: Optional[int], reason: Optional[str]) -> None:
        self.close_code = code
        if not self._open.called:
            self._open.errback(ConnectionError(f"handshake failed: {reason}"))
        for waiter in self._waiters:
            waiter.errback(ConnectionError(f"closed with {code}: {reason}"))
        self._waiters.clear()
        self.closed.callback((code, reason))

    def next_raw(self) -> Deferred:
        if self.inbox:
            d: Deferred = Deferred()
            d.callback(self.inbox.popleft())
            return d
        if self.closed.called:
            raise ConnectionError("connection is closed")
        d = Deferred()
        self._waiters.append(d)
        return within(d, "a message")

    async def next(self) -> Any:
        return json.loads(await self.next_raw())

    def send(self, obj: Any) -> None:
        self.send_raw(json.dumps(obj).encode())

    def send_raw(self, payload: bytes, binary: bool = False) -> None:
        assert self.protocol is not None
        self.protocol.sendMessage(payload, isBinary=binary)

    async def request(self, obj: Any) -> Any:
        """
        Send a command and return its reply.  Broadcasts and events that come
        before the reply stay queued, in order, for later next() calls.
        """
        self.send(obj)
        others = []
        while True:
            raw = await self.next_raw()
            message = json.loads(raw)
            if isinstance(message, dict) and "status" in message:
                break
            others.append(raw)
        self.inbox.extendleft(reversed(others))
        return message

    async def wait_closed(self) -> tuple[Optional[int], Optional[str]]:
        return await within(self.closed, "the connection to close")

    async def close(self) -> None:
        if self.protocol is not None and not self.closed.called:
            self.protocol.sendClose(1000)
            await self.wait_closed()

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake."""
        assert self.protocol is not None
        self.protocol.transport.abortConnection()


async def connect(
    port: int, tls: Any = None, host: str = "127.0.0.1", source: Optional[str] = None,
    headers: Optional[dict[str, str]] = None,
) -> WSClient:
    """
    A connected, opened client; ``tls`` is client TLS options (from
    ``optionsForClientTLS``) for ``wss://``; ``source`` the loopback address
    to connect from (127.0.0.2, ...).
    """
    client = WSClient()
    scheme = "wss" if tls is not None else "ws"
    factory = WebSocketClientFactory(f"{scheme}://{host}:{port}", headers=headers)
    factory.setProtocolOptions(autoPingInterval=0, openHandshakeTimeout=WAIT)
    factory.protocol = _ClientProtocol
    factory.client = client
    endpoint: Any = TCP4ClientEndpoint(
        reactor, "127.0.0.1", port, bindAddress=(source, 0) if source is not None else None)
    if tls is not None:
        from twisted.internet.endpoints import wrapClientTLS

        endpoint = wrapClientTLS(tls, endpoint)
    await endpoint.connect(factory)
    await within(client._open, "the WebSocket handshake")
    return client


ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def seed_example_2(sender: WSClient, sender_id: str, others: list[WSClient]) -> None:
    """
    The seed's second example: the sender's reply, then to every other
    member the seed's broadcast, byte for byte (plus chatd's "id").
    """
    sender.send({"action": "message", "body": "Hello everyone!"})
    assert await sender.next_raw() == b'{"status": "success", "message": "Message sent"}'
    for other in others:
        raw = await other.next_raw()
        event = json.loads(raw)
        # The seed's keys in the seed's order; chatd's "id" is added last.
        assert list(event) == ["from", "body", "timestamp", "id"]
        assert event["id"] == 1
        assert (event["from"], event["body"]) == (sender_id, "Hello everyone!")
        assert ISO_MS.match(event["timestamp"])
        assert raw == json.dumps(event).encode()


async def two_in_a_room(port: int, name: str = "room", **connect_options: Any) -> tuple[WSClient, str, WSClient]:
    """Two welcomed clients; the first created a room the second joined: (a, a's ID, b)."""
    a, b = await connect(port, **connect_options), await connect(port, **connect_options)
    a_id = (await a.next())["client_id"]
    await b.next()
    room_id = (await a.request({"action": "create", "body": name}))["room_id"]
    assert (await b.request({"action": "join", "body": {"room_id": room_id}}))["status"] == "success"
    return a, a_id, b


class InProcessServer:
    """chatd's factory on a real loopback port in the test's own reactor."""

    def __init__(self, settings: Settings) -> None:
        self.factory = ChatFactory(settings, clock=reactor, reactor=reactor)
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


# -- the real daemon ----------------------------------------------------------


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


def spawn_chatd(*args: str, env: Optional[dict[str, str]] = None) -> DaemonProcess:
    process = DaemonProcess()
    twistd = twistd_path()
    argv = [twistd, "-n", "--pidfile=", "chatd", *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    reactor.spawnProcess(process, twistd, argv, env=env)
    return process


async def stop_chatd(process: DaemonProcess) -> None:
    if not process.ended.called:
        process.signal("KILL")
        await process.wait_exit()


# -- a raw client that never reads ----------------------------------------


def handshake_from(port: int, source: str = "127.0.0.1", headers: bytes = b"") -> bytes:
    """A raw handshake from a given loopback address, with extra header
    lines: the response's first bytes."""
    with socket.socket() as sock:
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(HANDSHAKE[:-2] + headers + b"\r\n")
        data = b""
        while b"\r\n\r\n" not in data and (chunk := sock.recv(4096)):
            data += chunk
        return data


async def http_get(url: str) -> tuple[int, bytes]:
    """GET a URL with Twisted's own HTTP client: (status, body)."""
    from twisted.web.client import Agent, readBody

    response = await within(Agent(reactor).request(b"GET", url.encode()), f"GET {url}")
    body = await within(readBody(response), f"the body of {url}")
    return response.code, body


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


def read_until_eof(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes or aborts the connection."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass  # an abort (RST) is as much a drop as a FIN
    return data


class StalledClient:
    """
    A blocking-socket WebSocket client with a tiny receive buffer.  It does
    the handshake and a few commands, then never reads again.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(WAIT)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(HANDSHAKE)
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        return data

    def frame(self) -> tuple[int, bytes]:
        """The next frame from the server: (opcode, payload)."""
        while True:
            if len(self.buffer) >= 2:
                opcode, n, start = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F, 2
                if n == 126:
                    (n,) = struct.unpack("!H", self.buffer[2:4])
                    start = 4
                elif n == 127:
                    (n,) = struct.unpack("!Q", self.buffer[2:10])
                    start = 10
                if len(self.buffer) >= start + n:
                    payload = self.buffer[start : start + n]
                    self.buffer = self.buffer[start + n :]
                    return opcode, payload
            self.buffer += self._recv()

    def next(self) -> Any:
        """The next JSON message (pings and other frames are skipped)."""
        while True:
            opcode, payload = self.frame()
            if opcode == 1:
                return json.loads(payload)

    def request(self, obj: Any) -> Any:
        self.sock.sendall(client_frame(json.dumps(obj).encode()))
        return self.next()

    def read_close(self) -> tuple[int, str]:
        """Read (and skip) frames until a close frame; its code and reason."""
        while True:
            opcode, payload = self.frame()
            if opcode == 8:
                return struct.unpack("!H", payload[:2])[0], payload[2:].decode()

    def read_until_eof(self) -> bytes:
        """Everything until the server closes or aborts the connection."""
        return self.buffer + read_until_eof(self.sock)

    def close(self) -> None:
        self.sock.close()



# -- Redis and cluster nodes ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` on a free loopback port, no persistence
    (``extra``: more options, such as ``--replicaof``)."""

    ready = b"Ready to accept connections"

    def __init__(self, binary: str, extra: tuple[str, ...] = ()) -> None:
        self.binary = binary
        self.port = free_port()
        self.process: Optional[Any] = None
        self.extra = extra
        self.log = b""
        self.dir = tempfile.mkdtemp(prefix="chatd-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command_line(self) -> list[str]:
        # A directory of its own: a replica's sync writes dump.rdb there.
        return [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--loglevel", "notice", "--dir", self.dir, *self.extra]

    def start(self) -> None:
        import subprocess
        import threading

        self.log = b""  # this run's
        self.process = subprocess.Popen(self.command_line(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._said = threading.Condition()
        # Its log is read all along (a full pipe would stop Redis).
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()
        self.wait_for(self.ready)

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self._said:
                self.log += line
                self._said.notify_all()
        with self._said:
            self._said.notify_all()

    def wait_for(self, text: bytes, count: int = 1, seconds: float = 30) -> None:
        """Block until its log has said ``text`` ``count`` times."""
        assert self.process is not None
        with self._said:
            if not self._said.wait_for(
                    lambda: self.log.count(text) >= count or self.process.poll() is not None, seconds):
                raise RuntimeError(
                    f"{self.binary} did not say {text!r} in {seconds} s:\n{self.log.decode(errors='replace')}")
            if self.log.count(text) < count:
                raise RuntimeError(f"{self.binary} exited:\n{self.log.decode(errors='replace')}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def remove(self) -> None:
        """Stopped for good: its directory goes too."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def command(self, *args: str) -> Any:
        """One command over a blocking socket (for checks from tests)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
            sock.sendall(request.encode())
            return _read_reply(sock.makefile("rb"))


class SentinelServer(RedisServer):
    """A sentinel watching ``master`` as the service ``service`` (quorum 2,
    a master gone for a second is down)."""

    ready = b"+monitor master"

    def __init__(self, binary: str, master: RedisServer, service: str, workdir: Any) -> None:
        super().__init__(binary)
        self.config = workdir / f"sentinel-{self.port}.conf"
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\n"
            f"sentinel monitor {service} 127.0.0.1 {master.port} 2\n"
            f"sentinel down-after-milliseconds {service} 1000\n"
            f"sentinel failover-timeout {service} 2000\n"
            f"sentinel parallel-syncs {service} 1\n"
        )

    def command_line(self) -> list[str]:
        # redis-sentinel is redis-server under another name.
        return [self.binary, str(self.config), "--sentinel"]


def _read_reply(stream: Any) -> Any:
    line = stream.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else stream.read(size + 2)[:-2].decode()
    if kind == b"*":
        return [_read_reply(stream) for _ in range(int(rest))]
    raise RuntimeError(f"unexpected reply {line!r}")


class ClusterNode(InProcessServer):
    """A chatd node of a Redis cluster, in the test's reactor, on a loopback port."""

    def __init__(self, settings: Settings) -> None:
        from chatd.service import join_cluster

        super().__init__(settings)
        self.backplane, self.chat = join_cluster(self.factory, settings, reactor)
        self.stopped = False

    async def start(self) -> "ClusterNode":
        await super().start()
        self.backplane.start(self.chat)
        await within(self.backplane.when_available(), "the node to be in step with Redis")
        return self

    async def stop(self) -> None:
        self.stopped = True
        await super().stop()
        await within(self.backplane.stop(), "the node to leave Redis")


class ClusterNodes:
    """Starts cluster nodes on the given Redis URLs (one per shard); ``stop``
    stops every one still running."""

    def __init__(self, redis: tuple[str, ...]) -> None:
        self.redis = redis
        self.started: list[ClusterNode] = []

    async def start(self, **settings: object) -> ClusterNode:
        options: dict[str, object] = dict(ping_interval=0, ping_timeout=0, redis=self.redis)
        options.update(settings)
        node = await ClusterNode(Settings(**options)).start()  # type: ignore[arg-type]
        self.started.append(node)
        return node

    async def stop(self) -> None:
        for node in self.started:
            if not node.stopped:
                await node.stop()
