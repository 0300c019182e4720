"""
A private ``redis-server`` (or sentinel) per test, and cluster nodes on it.
Every wait is on an event, bounded by a timeout that fails with a reason.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from typing import Any, Optional


from chatd.settings import Settings
from tests.support.clients import within
from tests.support.raw import free_port
from tests.support.servers import InProcessServer




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
        super().__init__(settings, cluster=True)
        self.backplane, self.chat = self.server.shards, self.server.chat
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
