"""
``--workers N``: one command that uses every core.

The parent binds every ``--listen`` socket (so a bind failure stops start-up,
and systemd's sockets work unchanged), then runs N ``twistd -n chatd``
workers that adopt the sockets (``WorkerSocketEndpoint``, an
``AdoptedStreamServerEndpoint``) and are nodes of one cluster on ``--redis``.

How connections are spread: a ``tcp:`` or ``tcp6:`` listener is bound N
times with ``SO_REUSEPORT``, a socket per worker, and the kernel spreads new
connections evenly over them (by a hash of their addresses).  While a worker
is down, the parent accepts on its socket and resets each connection at once
(the client retries and most likely lands on a live worker) rather than
leave it waiting for the restart.  Other listeners (``unix:``, systemd's) are
one socket that every worker accepts from.  Every worker accepts one
connection per wake-up (``OneAtATime``): on a shared socket that is what
spreads a burst; on a socket of its own it costs a poll per connection of
a burst, next to a handshake's hundreds of microseconds.  A worker that dies is started again; SIGTERM to the
parent drains every worker (each removes its clients from Redis) before the
parent exits.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Optional, Sequence

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import (
    serverFromString,
)
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatd import fastpath
from chatd.config import ConfigError
from chatd.listening import PROXY_PREFIX, bind_reuseport, family_name, reuseport_address, with_backlog
from chatd.runtime import use_json_logs
from chatd.settings import Settings
from chatd.systemd import Notifier

#: The first file descriptor of the inherited sockets in a worker.
FIRST_FD = 3

#: Seconds before a worker that died is started again (doubling to a minute
#: while it keeps dying young).
RESTART_DELAY = 1.0


def metrics_for_worker(description: str, index: int) -> str:
    """Worker ``index`` serves its metrics on the configured port + index."""
    kind, _, rest = description.partition(":")
    port_text, sep, options = rest.partition(":")
    if kind not in ("tcp", "tcp6") or not port_text.isdigit():
        raise ConfigError(
            f"--metrics {description!r} with --workers: use a tcp:PORT endpoint "
            "(worker N serves its metrics on PORT+N)")
    return f"{kind}:{int(port_text) + index}{sep}{options}"


def worker_arguments(raw: Sequence[str], settings: Settings, index: int, families: Sequence[str]) -> list[str]:
    """A worker's chatd options: the parent's, less what the parent does itself."""
    own = {"--workers", "--listen", "--metrics"}
    args: list[str] = []
    skip = False
    for arg in raw:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in own:
            skip = "=" not in arg
            continue
        args.append(arg)
    args += ["--workers", "1"]
    for offset, family in enumerate(families):
        args += ["--inherit-fd", f"{FIRST_FD + offset}:{family}"]
    if settings.metrics is not None:
        args += ["--metrics", metrics_for_worker(settings.metrics, index)]
    return args


class _Reset(Protocol):
    def connectionMade(self) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]


class ForWorkers(Factory):
    """
    What the parent does with a connection it accepts: only on the socket of
    a worker that is down, and then it resets it.  (Its ports stop reading
    at once otherwise: the workers accept.)
    """

    protocol = _Reset
    noisy = False


class _Listener:
    """One ``--listen`` of the parent: a socket for all workers, or one each."""

    def __init__(self, ports: list[Any], family: str) -> None:
        self.ports = ports
        self.family = family

    def fd_for(self, index: int) -> int:
        port = self.ports[index] if len(self.ports) > 1 else self.ports[0]
        return int(port.fileno())

    def worker_down(self, index: int, down: bool) -> None:
        """Reset what comes in on a down worker's own socket, meanwhile."""
        if len(self.ports) > 1:
            port = self.ports[index]
            if down:
                port.startReading()
            else:
                port.stopReading()


class _Worker(ProcessProtocol):
    def __init__(self, pool: "WorkerPool", index: int) -> None:
        self.pool = pool
        self.index = index
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.pool._ended(self, reason)


class WorkerPool(MultiService):
    """The parent of ``--workers N``: binds, runs the workers, drains them."""

    _log = Logger()

    def __init__(
        self, settings: Settings, raw_args: Sequence[str], reactor: Any,
        notifier: Optional[Notifier] = None,
    ) -> None:
        super().__init__()
        for description in settings.listen:
            if description.startswith("ssl:"):
                raise ConfigError(
                    "--workers with an ssl: listener is not supported: terminate TLS in "
                    "front of chatd (or run one worker)")
        if settings.metrics is not None:
            metrics_for_worker(settings.metrics, 0)  # refused now, not in a worker
        self.settings = settings
        self.raw_args = list(raw_args)
        self._reactor = reactor
        self.notifier = notifier if notifier is not None else Notifier()
        self.listeners: list[_Listener] = []
        self.workers: dict[int, _Worker] = {}
        self._delays: dict[int, float] = {}
        self._stopping = False
        self._watchdog: Optional[Any] = None

    def privilegedStartService(self) -> None:
        for description in self.settings.listen:
            listener = self._bind(description)
            self.listeners.append(listener)
            host = listener.ports[0].getHost()
            self._log.info(
                "Listening on {host} for {workers} workers ({how})",
                host=f"{getattr(host, 'host', '')}:{getattr(host, 'port', getattr(host, 'name', ''))}",
                workers=self.settings.workers, event="listening",
                how="a socket each" if len(listener.ports) > 1 else "one shared socket")
        super().privilegedStartService()

    def _bind(self, description: str) -> _Listener:
        if description.startswith(PROXY_PREFIX):
            # The parent binds the socket; each worker reads the PROXY header.
            listener = self._bind(description[len(PROXY_PREFIX):])
            listener.family += ":haproxy"
            return listener
        address = reuseport_address(self._reactor, description)
        if address is not None:
            family, interface, port_number, backlog = address
            try:
                handles = bind_reuseport(family, interface, port_number, backlog, self.settings.workers)
            except OSError as e:
                raise SystemExit(f"chatd: cannot listen on {description}: {e}") from None
            ports = []
            for handle in handles:
                port = self._reactor.adoptStreamPort(handle.fileno(), family, ForWorkers())
                handle.close()  # the port has its own copy
                port.stopReading()  # the worker accepts, not the parent
                ports.append(port)
            return _Listener(ports, family_name(ports[0]))
        d = serverFromString(self._reactor, with_backlog(description)).listen(ForWorkers())
        result: list[Any] = []
        d.addBoth(result.append)
        if not result:
            raise SystemExit(f"chatd: {description}: cannot hand this listener to workers")
        if isinstance(result[0], Failure):
            error = result[0].value
            raise SystemExit(f"chatd: cannot listen on {description}: {getattr(error, 'socketError', error)}")
        port = result[0]
        port.stopReading()  # the workers accept, not the parent
        return _Listener([port], family_name(port))

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        if self.settings.log_format == "json":
            use_json_logs(parent, self._reactor)

    def startService(self) -> None:
        super().startService()
        for index in range(self.settings.workers):
            self._spawn(index)
        self.notifier.notify("READY=1")
        self._watchdog = self.notifier.keep_alive(self._reactor)
        fastpath.exit_zero_on_sigterm(self._reactor)

    def _spawn(self, index: int) -> None:
        families = [listener.family for listener in self.listeners]
        args = worker_arguments(self.raw_args, self.settings, index, families)
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "--nodaemon", "--pidfile=", "chatd", *args]
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC")}
        child_fds: dict[int, Any] = {0: 0, 1: 1, 2: 2}
        for offset, listener in enumerate(self.listeners):
            child_fds[FIRST_FD + offset] = listener.fd_for(index)
            listener.worker_down(index, False)
        worker = _Worker(self, index)
        self.workers[index] = worker
        self._reactor.spawnProcess(worker, sys.executable, argv, env=env, childFDs=child_fds)
        self._log.info("Started worker {index} (pid {pid})", index=index,
                       pid=worker.transport.pid, event="worker_started")

    def _ended(self, worker: _Worker, reason: Failure) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if self._stopping:
            return
        for listener in self.listeners:
            listener.worker_down(worker.index, True)
        code = getattr(reason.value, "exitCode", None)
        delay = self._delays.get(worker.index, RESTART_DELAY)
        self._delays[worker.index] = min(delay * 2, 60.0)
        self._log.warn(
            "Worker {index} exited ({why}); starting it again in {delay} s",
            index=worker.index, why=f"status {code}" if code is not None else reason.getErrorMessage(),
            delay=delay, event="worker_died")
        self._reactor.callLater(delay, self._respawn, worker.index)

    def _respawn(self, index: int) -> None:
        if not self._stopping and index not in self.workers:
            self._spawn(index)

    def stopService(self) -> "Deferred[None]":
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        await super().stopService()
        self.notifier.notify("STOPPING=1")
        workers = list(self.workers.values())
        for worker in workers:
            _signal(worker, signal.SIGTERM)
        # Each worker drains (at most --shutdown-timeout) and leaves Redis.
        killer = self._reactor.callLater(
            self.settings.shutdown_timeout + self.settings.redis_timeout + 5, self._kill, workers)
        await DeferredList([worker.ended for worker in workers])
        if killer.active():
            killer.cancel()
        for listener in self.listeners:
            for port in listener.ports:
                await port.stopListening()
        fastpath.forget_sigterm(self._reactor)  # an orderly stop: exit 0

    def _kill(self, workers: list[_Worker]) -> None:
        for worker in workers:
            if not worker.ended.called:
                self._log.warn("Worker {index} did not stop in time: killing it", index=worker.index)
                _signal(worker, signal.SIGKILL)


def _signal(worker: _Worker, signum: int) -> None:
    try:
        worker.transport.signalProcess(signum)
    except Exception:
        pass  # already gone

