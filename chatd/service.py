"""
The chat service: the factory holding the rooms, its listening ports, the
metrics endpoint, systemd notifications, and an orderly shutdown.
"""

from __future__ import annotations

import os
from typing import Any, NoReturn, Optional, Sequence

from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.haproxy import proxyEndpoint
from twisted.web.server import Site
from zope.interface import implementer

from chatd import __version__, fastpath
from chatd.apps.api import api_site, read_keys
from chatd.config import sqlite_path
from chatd.listening import PROXY_PREFIX, WorkerSocketEndpoint, with_backlog
from chatd.storage.sqlite import StoreError, open_sqlite
from chatd.metrics import Metrics, metrics_root
from chatd.runtime import CollectorTuning, use_json_logs
from chatd.settings import Settings
from chatd.systemd import Notifier
from chatd.compose import compose, log_in_store, open_store
from chatd.ws import ChatFactory


class MetricsSite(Site):
    """The metrics and health site; scrapes are not access-logged."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


@implementer(IStreamServerEndpoint)
class _Announced:
    """A server endpoint that says, once it listens, the address a person
    would open: chatd's first log line worth reading."""

    _log = Logger(namespace="chatd")

    def __init__(self, endpoint: Any, description: str) -> None:
        self.endpoint = endpoint
        self.description = description

    def listen(self, factory: Any) -> "Deferred[Any]":
        d: Deferred[Any] = self.endpoint.listen(factory)
        return d.addCallback(self._listening)

    def _listening(self, port: Any) -> Any:
        self._log.info("chatd {version} serving {url}", version=__version__, url=served_at(
            port.getHost(), self.description), event="serving", listen=self.description)
        return port


def served_at(address: Any, description: str) -> str:
    """What a person opens for a listener on ``address`` (its description
    says whether it is TLS, or behind a PROXY-protocol proxy)."""
    proxied = description.startswith(PROXY_PREFIX)
    plain = description.removeprefix(PROXY_PREFIX)
    secure = plain.startswith("ssl:")
    if isinstance(address, UNIXAddress):
        where = f"the UNIX socket {address.name.decode() if isinstance(address.name, bytes) else address.name}"
    else:
        host = address.host
        anywhere = host in ("0.0.0.0", "::")
        shown = "localhost" if anywhere or host in ("127.0.0.1", "::1") else (
            f"[{host}]" if ":" in host else host)
        page = f"{'https' if secure else 'http'}://{shown}:{address.port}/"
        where = f"{page} (the web page; WebSocket clients: {'wss' if secure else 'ws'}://{shown}:{address.port})"
        if anywhere:
            where += ", on every interface"
    if proxied:
        where += ", behind a proxy that speaks the PROXY protocol"
    return where


class StartupFailed(Exception):
    """
    chatd cannot start (a port it cannot listen on, a message log it cannot
    open).  Raised instead of SystemExit when twistd runs as a daemon: its
    launching process waits for the daemon's word on a pipe, and twistd
    writes that word only for an Exception, so a SystemExit would leave the
    launcher waiting forever.  The launcher prints this message and exits 1.
    """


class ChatService(MultiService):
    """
    Listens on every endpoint in ``settings.listen`` (and ``settings.metrics``).

    Stopping is a drain: ``/readyz`` turns 503, the chat ports close, systemd
    hears ``STOPPING=1``, every client gets close 1001 and is waited for (at
    most ``settings.shutdown_timeout`` seconds), and the metrics endpoint
    closes last.
    """

    _log = Logger()

    def __init__(
        self, settings: Settings, reactor: Any, notifier: Optional[Notifier] = None,
        inherited: Sequence[tuple[int, int, bool]] = (),
        moderators: Optional[Sequence[Any]] = None,
        portal: Optional[Any] = None,
        daemon: bool = False,
    ) -> None:
        super().__init__()
        self.settings = settings
        # Whether twistd daemonized (see StartupFailed).
        self.daemon = daemon
        self.draining = False
        self._reactor = reactor
        self.notifier = notifier if notifier is not None else Notifier()
        self.ready = False
        self.metrics = Metrics()
        # The durable store (None: --store memory), opened before listening.
        self.durable = open_store(
            settings, reactor, counted=lambda outcome, rows: self.metrics.store_rows.labels(outcome).inc(rows))
        self.metrics.store_available.set_function(
            lambda: 1.0 if self.durable is None or self.durable.problem is None else 0.0)
        self.message_log: Optional[Any] = None
        if log_in_store(settings):
            self.message_log = self.durable  # one database, one writer
        elif settings.message_log is not None:
            # Beside a store in PostgreSQL or memory: an SQLite file of the
            # store's schema, only its message log used; opened in
            # privilegedStartService, before anything listens.
            self.message_log = open_sqlite(
                sqlite_path(settings.message_log), reactor, log_keep_days=settings.message_log_keep,
                counted=lambda outcome, rows: self.metrics.message_log.labels(outcome).inc(rows),
            )
        server = compose(settings, reactor, reactor, self.metrics, self.message_log, moderators, portal,
                         durable=self.durable)
        self.core = server.core
        self.factory = ChatFactory(settings, clock=reactor, reactor=reactor, server=server)
        # A cluster node's Redis shards, and its chat (None: one process).
        self.backplane: Optional[Any] = server.shards
        self.chat = server.chat
        self.listeners = MultiService()
        self.listeners.setServiceParent(self)
        for description in (() if inherited else settings.listen):
            # strports.service raises a bind failure synchronously at start-up,
            # so twistd exits with a message instead of running deaf.
            listener = strports.service(with_backlog(description), self.factory, reactor=reactor)
            listener.endpoint = _Announced(listener.endpoint, description)
            listener.setServiceParent(self.listeners)
        for fd, family, proxied in inherited:
            # A worker of --workers: the parent bound the socket.
            endpoint: Any = WorkerSocketEndpoint(reactor, fd, family)
            if proxied:
                endpoint = proxyEndpoint(endpoint)
            StreamServerEndpointService(endpoint, self.factory).setServiceParent(self.listeners)
        self._orphan_watch: Optional[LoopingCall] = None
        if inherited:
            # A worker outlives its parent only by mistake (the parent was
            # killed): it then stops, as if told to.
            self._parent_pid = os.getppid()
            self._orphan_watch = LoopingCall(self._check_parent)
            self._orphan_watch.clock = reactor
        self.metrics_listener: Optional[Service] = None
        if settings.metrics is not None:
            site = MetricsSite(metrics_root(self.metrics, self.not_ready))
            self.metrics_listener = strports.service(settings.metrics, site, reactor=reactor)
            self.metrics_listener.setServiceParent(self)
        self.api_listener: Optional[Service] = None
        if settings.api is not None:
            assert settings.api_keys is not None  # the configuration says so
            self.api_listener = strports.service(
                settings.api, api_site(self.chat, read_keys(settings.api_keys)), reactor=reactor)
            self.api_listener.setServiceParent(self)
        self._watchdog: Optional[LoopingCall] = None
        self.collector = CollectorTuning()

    def _check_parent(self) -> None:
        if os.getppid() != self._parent_pid:
            self._log.warn("The --workers parent is gone: stopping", event="orphaned")
            self._reactor.stop()

    def is_ready(self) -> bool:
        """Listening, and (in a cluster) in step with Redis: with several
        shards, with one at least (a shard that is away takes only its rooms
        down, on every node alike)."""
        return self.not_ready() is None

    def not_ready(self) -> Optional[str]:
        """Why the node is not ready (None: it is), as /readyz says it."""
        if not self.ready:
            return "draining" if self.draining else "starting"
        if self.backplane is not None and not self.backplane.partly_available:
            return "; ".join(self.backplane.problems()) or "not in step with Redis"
        if self.durable is not None and self.durable.problem is not None:
            return self.durable.problem
        return None

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        if self.settings.log_format == "json":
            use_json_logs(parent, self._reactor)

    def privilegedStartService(self) -> None:
        if self.durable is not None:
            # Before listening: a store that cannot be opened stops start-up.
            try:
                snapshot = self.durable.open()
            except StoreError as e:
                self._cannot_start(f"chatd: the store: {e}")
            one_process = self.backplane is None
            if one_process:
                self.core.load(snapshot)  # a cluster's live in Redis, put back from the store on first join
            made = self.core.declare(self.settings.rooms, snapshot, self._reactor.seconds(), live=one_process)
            self._log.info("Keeping persistent rooms in {store} ({rooms} rooms)", store=self.durable.name,
                           rooms=len(snapshot.rooms) + made, event="store_opened")
        if self.message_log is not None and self.message_log is not self.durable:
            # Before listening: a log that cannot be opened stops start-up.
            try:
                self.message_log.open()
            except StoreError as e:
                self._cannot_start(f"chatd: --message-log: {e}")
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            # One clear line and a non-zero exit instead of a traceback.
            where = f"{e.interface}:{e.port}" if e.interface else str(e.port)
            self._cannot_start(f"chatd: cannot listen on {where}: {e.socketError}")
        except OSError as e:
            # A UNIX socket's lock file, say.
            where = f" {e.filename}" if e.filename else ""
            self._cannot_start(f"chatd: cannot listen on{where}: {e.strerror or e}")

    def _cannot_start(self, message: str) -> NoReturn:
        if self.daemon:
            raise StartupFailed(message.removeprefix("chatd: "))
        raise SystemExit(message)

    def startService(self) -> None:
        if self.backplane is not None:
            self.backplane.start(self.chat)
        super().startService()
        # Every port is bound by now (a failure would have stopped start-up).
        self.ready = True
        if self.backplane is None:
            self.notifier.notify("READY=1")
        else:
            # A cluster node is ready once it is in step with Redis (until
            # then, new connections wait for it).
            self.backplane.when_available().addCallback(lambda _: self.notifier.notify("READY=1"))
        if self._orphan_watch is not None:
            self._orphan_watch.start(1.0, now=False)
        self._watchdog = self.notifier.keep_alive(self._reactor)
        self.collector.start()
        fastpath.exit_zero_on_sigterm(self._reactor)

    def stopService(self) -> "Deferred[None]":
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        Service.stopService(self)
        self.ready = False
        self.draining = True
        self.notifier.notify("STOPPING=1")
        await self.listeners.stopService()
        if self.api_listener is not None:
            await self.api_listener.stopService()  # no more calls from applications either
        count = len(self.factory.connections)
        self._log.info(
            "Draining: closing {count} connections", event="draining", count=count
        )
        await self.factory.shutdown(self.settings.shutdown_timeout)
        if self.backplane is not None:
            await self.backplane.stop()  # what is left of this node goes from Redis
        for timer in (self._watchdog, self._orphan_watch):
            if timer is not None and timer.running:
                timer.stop()
        if self.message_log is not None and self.message_log is not self.durable:
            await self.message_log.close()  # everything broadcast is written
        if self.durable is not None:
            await self.durable.close()  # everything asked for is written
        if self.metrics_listener is not None:
            await self.metrics_listener.stopService()
        self.collector.stop()
        # SIGTERM is chatd's orderly stop: once drained, exit 0 (SIGINT and
        # others keep twistd's behaviour).
        fastpath.forget_sigterm(self._reactor)
