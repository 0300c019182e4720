"""
The Redis backplane: two connections (commands, and the room channels),
the node's lease, and the reaping of nodes whose lease ran out.

Built on txredisapi, which runs on the reactor and reconnects on its own
with a backoff.  Commands are never queued while Redis is away: the node
answers "Service temporarily unavailable" at once instead of hanging, and
every command has a reply timeout.  When both connections are back the node
re-subscribes its rooms and makes Redis agree with it again (RESYNC), and
only then takes commands.
"""

from __future__ import annotations

import hashlib
import os
import socket
from typing import Any, Callable, Optional

import txredisapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatd import fastpath
from chatd.backplane import Listener, scripts
from chatd.backplane.address import RedisAddress
from chatd.errors import Unavailable

PREFIX = "chatd:"


def endpoint_of(address: RedisAddress, reactor: Any) -> Any:
    """The Twisted client endpoint that reaches ``address``."""
    if address.path is not None:
        return UNIXClientEndpoint(reactor, address.path, timeout=5)
    return HostnameEndpoint(reactor, address.host, address.port, timeout=5)


@implementer(IStreamClientEndpoint)
class _Watched:
    """An endpoint that tells the backplane why each attempt to connect
    failed (txredisapi's reconnecting service logs only that it will retry)."""

    def __init__(self, endpoint: Any, backplane: "RedisBackplane") -> None:
        self._endpoint = endpoint
        self._backplane = backplane

    def connect(self, factory: Any) -> "Deferred[Any]":
        d: Deferred[Any] = self._endpoint.connect(factory)
        return d.addErrback(self._backplane._connect_failed)


def node_name() -> str:
    """This process's name in the cluster: host, pid and a random part."""
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


class _Tells:
    """What a connection's factory tells the backplane: when the connection
    is usable (a Sentinel service's: once it is the master), and when it is
    lost.  The factory reconnects with a backoff."""

    noisy = False
    maxDelay = 2  # a node without Redis is degraded: come back soon
    backplane: "RedisBackplane"
    role: str
    master_only = False

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)  # type: ignore[misc]
        protocol.whenConnected().addCallback(self._up)
        return protocol

    def _up(self, protocol: Any) -> None:
        # Commands and replies are small and answered at once: without this,
        # Nagle's algorithm holds each behind the previous one's ACK.
        if hasattr(protocol.transport, "setTcpNoDelay"):
            protocol.transport.setTcpNoDelay(True)
        # AUTH and SELECT are sent here rather than by txredisapi, which
        # stops reconnecting for good when either fails, even when all that
        # failed was the connection (a master killed at that moment).
        address = self.backplane.address
        d: Deferred[Any] = succeed(None)
        if address.password is not None:
            credentials = [address.username, address.password] if address.username else [address.password]
            d.addCallback(lambda _: protocol.execute_command("AUTH", *credentials))
        if address.db and self.role == "commands":
            d.addCallback(lambda _: protocol.execute_command("SELECT", address.db))
        if self.master_only:
            # Sentinel named it the master, but a failover may have turned
            # it into a replica since: only a master will do.
            d.addCallback(lambda _: protocol.execute_command("ROLE")).addCallback(self._role)
        d.addCallbacks(lambda _: self._ready(protocol), self._not_ready, errbackArgs=(protocol,))

    @staticmethod
    def _role(reply: Any) -> None:
        role = reply[0] if isinstance(reply, list) and reply else None
        if role not in ("master", b"master"):
            raise _NotMaster()  # asked again, the sentinels know better

    def _not_ready(self, failure: Failure, protocol: Any) -> None:
        if failure.check(txredisapi.ResponseError):
            self.backplane._log.error(
                "Redis at {address} refused the connection's set-up: {error}",
                address=str(self.backplane.address), error=failure.getErrorMessage())
        protocol.transport.loseConnection()  # the factory tries again

    def _ready(self, protocol: Any) -> None:
        protocol.whenDisconnected().addCallback(self._down)
        self.backplane._connection_up(self.role, protocol)

    def _down(self, protocol: Any) -> None:
        self.backplane._connection_down(self.role, protocol)


class _NotMaster(Exception):
    """A server the sentinels named is not (or no longer) the master."""


class _Factory(_Tells, txredisapi.RedisFactory):
    """A connection to one Redis."""

    def __init__(self, backplane: "RedisBackplane", role: str, **kwargs: Any) -> None:
        super().__init__(None, None, 1, isLazy=True, **kwargs)
        self.backplane = backplane
        self.role = role


class _SentinelFactory(_Tells, txredisapi.SentinelConnectionFactory):
    """A connection to a Sentinel service's master: txredisapi asks the
    sentinels where it is before each attempt (``Sentinel.master_for``)."""

    master_only = True

    def __init__(self, backplane: "RedisBackplane", role: str, protocol: Any, **kwargs: Any) -> None:
        super().__init__(isLazy=True, **kwargs)
        self.backplane = backplane
        self.role = role
        self.protocol = protocol
        backplane._factories.append(self)


def _resp(parts: list[bytes]) -> bytes:
    """One command in Redis's protocol."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _encoded(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


class _Commands(txredisapi.RedisProtocol):
    """
    The command connection.  Scripts go by their SHA1 (worked out once, not
    per call as ``eval`` does), each command is built in one go, and the
    commands sent and answered are counted for the backplane's stall watch
    (instead of a timer per command: a DelayedCall made and cancelled for
    every broadcast).
    """

    sent = 0
    replies = 0

    def run_script(self, sha: bytes, script: bytes, args: tuple[Any, ...]) -> "Deferred[Any]":
        encoded = [_encoded(a) for a in args]
        d = self._send([b"EVALSHA", sha, b"0", *encoded])
        return d.addErrback(self._not_loaded, script, encoded)

    def load_script(self, script: bytes) -> "Deferred[Any]":
        return self._send([b"SCRIPT", b"LOAD", script])

    def _send(self, parts: list[bytes]) -> "Deferred[Any]":
        if not self.connected:
            return fail(txredisapi.ConnectionError("Not connected"))
        self.sent += 1
        return fastpath.redis_command(self, parts, _resp).addBoth(self._answered)

    def _answered(self, result: Any) -> Any:
        self.replies += 1
        return result

    def _not_loaded(self, failure: Failure, script: bytes, encoded: list[bytes]) -> "Deferred[Any]":
        failure.trap(txredisapi.ResponseError)
        message = failure.value.args[0] if failure.value.args else ""
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        if not str(message).startswith("NOSCRIPT"):
            return failure  # type: ignore[return-value]
        # First use on this connection (or Redis restarted): EVAL loads it.
        return self._send([b"EVAL", script, b"0", *encoded])


def _call(function: Callable[..., Any], *args: Any) -> Any:
    return function(*args)


class _Subscriber(txredisapi.SubscriberProtocol):
    # Whether the next reply is the first of the current read.
    _first = False

    def dataReceived(self, data: bytes, *more: Any) -> None:
        self._first = True
        super().dataReceived(data, *more)

    def messageReceived(self, pattern: Any, channel: bytes, message: bytes) -> None:
        # Alone: the first reply of the read, with nothing buffered after it.
        alone = self._first and not fastpath.more_buffered(self)
        self._first = False
        self.factory.backplane._message(channel, message, alone)


class RedisBackplane:
    """
    A node's link to Redis.  ``start`` connects (and keeps reconnecting);
    ``stop`` removes the node's clients from the shared state and closes.
    """

    _log = Logger()

    def __init__(
        self,
        address: RedisAddress,
        reactor: Any,
        lease: float = 15.0,
        timeout: float = 5.0,
        node: Optional[str] = None,
        prefix: str = PREFIX,
        at_once: Callable[..., Any] = _call,
        connect_failed: Callable[[], None] = lambda: None,
    ) -> None:
        self.address = address
        # Counts each failed attempt to connect (a metric).
        self._count_failure = connect_failed
        #: Why this node is not in step with this Redis (None: it is), for
        #: /readyz; each change is logged once.
        self.problem: Optional[str] = f"connecting to Redis at {address}"
        self.reactor = reactor
        self.lease = lease
        self.timeout = timeout
        self.node = node or node_name()
        self.prefix = prefix
        # Runs the handling of a read from Redis that held one message and
        # nothing after it, so that what it delivers leaves at once rather
        # than at the end of the iteration (the service passes the outbox's
        # Flusher.send_now).
        self._at_once = at_once
        self._listener: Optional[Listener] = None
        self._commands: Any = None  # the connected protocols, or None
        self._subscriber: Any = None
        self._synced = False
        self._syncing = False
        self._stopping = False
        # The channels this node wants, confirmed or not: re-subscribed after
        # a reconnection.
        self._channels: set[str] = set()
        self._factories: list[Any] = []
        self._sentinel: Any = None  # txredisapi.Sentinel, for a sentinel:// address
        self._waiting_for_sync: list[Deferred[None]] = []
        self._waiting_for_loss: list[Deferred[None]] = []
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = reactor
        self._scripts: dict[str, tuple[bytes, bytes]] = {}
        # A Redis that takes commands but does not answer (stopped, or cut
        # off without a reset) is given up after ``timeout`` seconds.
        self._stall_watch = LoopingCall(self._check_stall)
        self._stall_watch.clock = reactor
        self._seen_replies = 0
        self._stalled_since = 0.0

    # -- lifecycle -------------------------------------------------------------

    def start(self, listener: Listener) -> None:
        self._listener = listener
        address = self.address
        if address.sentinels:
            self._sentinel = txredisapi.Sentinel(list(address.sentinels))
            # While a failover is under way no sentinel names a master, and
            # txredisapi waits this long for one before trying again: the
            # sentinels themselves answer at once.
            fastpath.sentinel_discovery_timeout(self._sentinel, 1.0)
            self._factories = []
            self._sentinel.master_for(
                address.service, factory_class=_SentinelFactory,
                backplane=self, role="commands", protocol=_Commands, convertNumbers=False)
            self._sentinel.master_for(
                address.service, factory_class=_SentinelFactory,
                backplane=self, role="subscriber", protocol=_Subscriber, charset=None, convertNumbers=False)
        else:
            commands = _Factory(self, "commands", convertNumbers=False)
            commands.protocol = _Commands
            subscriber = _Factory(self, "subscriber", charset=None, convertNumbers=False)
            subscriber.protocol = _Subscriber
            self._factories = [commands, subscriber]
            for factory in self._factories:
                factory.startConnecting(_Watched(endpoint_of(address, self.reactor), self))
        # Renew the lease and look for dead nodes three times per lease.
        self._ticker.start(self.lease / 3, now=False)
        self._stall_watch.start(min(1.0, self.timeout / 2), now=False)

    def stop(self) -> "Deferred[None]":
        """Take this node's clients out of the shared state, then disconnect."""
        self._stopping = True
        for timer in (self._ticker, self._stall_watch):
            if timer.running:
                timer.stop()
        if self._commands is not None and self._synced:
            d = self.call(scripts.GOODBYE, self.node)
            d.addErrback(lambda f: self._log.warn(
                "Could not remove this node's clients from Redis: {error}", error=f.getErrorMessage()))
        else:
            d = succeed(None)
        self._synced = False

        def disconnect(_: Any) -> "Deferred[Any]":
            return Deferred.fromCoroutine(self._disconnect())

        return d.addCallback(disconnect)

    async def _disconnect(self) -> None:
        for factory in self._factories:
            try:
                await factory.disconnect()
            except Exception:
                pass
        if self._sentinel is not None:
            try:
                await self._sentinel.disconnect()
            except Exception:
                pass

    # -- what the node uses ------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._synced and self._commands is not None and self._subscriber is not None

    @property
    def connected(self) -> bool:
        """The command connection is up, in step or on its way there: what is
        sent now is ordered with any resync on the same connection."""
        return self._commands is not None

    def when_unavailable(self) -> "Deferred[None]":
        """Fires once the node has lost Redis (at once if it has)."""
        if not self.available:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiting_for_loss.append(waiter)
        return waiter

    def when_available(self) -> "Deferred[None]":
        """Fires once the node is (or is again) in step with Redis."""
        if self.available:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiting_for_sync.append(waiter)
        return waiter

    def call(self, script: str, *args: Any) -> "Deferred[Any]":
        protocol = self._commands
        if protocol is None:
            return fail(Unavailable())
        sha, body = self._script(script)
        return protocol.run_script(sha, body, (self.prefix, *args))

    def _script(self, script: str) -> tuple[bytes, bytes]:
        """A script's SHA1 and text, worked out once."""
        loaded = self._scripts.get(script)
        if loaded is None:
            body = script.encode("utf-8")
            loaded = self._scripts[script] = (hashlib.sha1(body).hexdigest().encode("ascii"), body)
        return loaded

    def resync(self, state: str) -> "Deferred[Any]":
        """Make Redis agree with this node's state (RESYNC); the client IDs refused."""
        return self.call(scripts.RESYNC, self.node, int(self.lease * 1000), state)

    def subscribe(self, room_id: str) -> "Deferred[None]":
        protocol = self._subscriber
        if protocol is None:
            return fail(Unavailable())
        self._channels.add(room_id)
        return protocol.subscribe(self._channel(room_id)).addErrback(self._unavailable)

    def unsubscribe(self, room_id: str) -> None:
        self._channels.discard(room_id)
        protocol = self._subscriber
        if protocol is not None:
            protocol.unsubscribe(self._channel(room_id)).addErrback(lambda _: None)

    # -- connections ----------------------------------------------------------------

    def _channel(self, room_id: str) -> str:
        return f"{self.prefix}r:{room_id}"

    def _connect_failed(self, failure: Failure) -> Failure:
        """An attempt to connect failed: said once per new reason, counted each time."""
        self._count_failure()
        if not self._stopping:
            error = failure.getErrorMessage().rstrip(".")
            self._set_problem(
                f"cannot reach Redis at {self.address}: {error}", "redis_unreachable",
                "Cannot reach Redis at {address}: {error}; trying again, every {every} s at most",
                error=error, every=_Tells.maxDelay)
        return failure

    def _set_problem(self, problem: Optional[str], event: str, text: str, **fields: Any) -> None:
        if problem != self.problem:
            self.problem = problem
            self._log.warn(text, address=str(self.address), event=event, **fields)

    def _connection_up(self, role: str, protocol: Any) -> None:
        if self._stopping:
            protocol.transport.loseConnection()
            return
        self._log.info("Connected to Redis at {address} ({role})", address=str(self.address), role=role,
                       event="redis_connected")
        if role == "commands":
            self._commands = protocol
            # Loaded first, so that the calls after them (the start-up's
            # joins, all at once) run by SHA1 rather than each failing with
            # NOSCRIPT and being sent again with its text.
            for script in scripts.ALL:
                protocol.load_script(self._script(script)[1]).addErrback(lambda _: None)
        else:
            self._subscriber = protocol
            # This node's direct messages, and the rooms it has members in.
            protocol.subscribe(f"{self.prefix}d:{self.node}").addErrback(lambda _: None)
            for room_id in self._channels:
                protocol.subscribe(self._channel(room_id)).addErrback(lambda _: None)
        self._maybe_sync()

    def _connection_down(self, role: str, protocol: Any) -> None:
        if role == "commands" and self._commands is protocol:
            self._commands = None
            # The other connection may be as stale (a frozen Redis leaves it
            # open): both start afresh, so nothing is half in step.
            if self._subscriber is not None:
                self._subscriber.transport.abortConnection()
        elif role == "subscriber" and self._subscriber is protocol:
            self._subscriber = None
        else:
            return
        was_synced, self._synced = self._synced, False
        if was_synced and not self._stopping:
            self._set_problem(
                f"lost the connection to Redis at {self.address}", "redis_lost",
                "Lost Redis at {address}: cluster actions are unavailable until it is back")
            if self._listener is not None:
                self._listener.backplane_down()
            waiting, self._waiting_for_loss = self._waiting_for_loss, []
            for waiter in waiting:
                waiter.callback(None)

    def _maybe_sync(self) -> None:
        """Both connections up and not in step: make Redis agree with this node."""
        if self._synced or self._syncing or self._commands is None or self._subscriber is None:
            return
        if self._listener is None:
            return
        self._syncing = True
        d = self._listener.backplane_up(self)

        def done(_: Any) -> None:
            self._syncing = False
            if self._commands is not None and self._subscriber is not None:
                self._synced = True
                self.problem = None
                self._log.info("In step with Redis at {address}: cluster actions available",
                               address=str(self.address), event="redis_synced", node=self.node)
                waiting, self._waiting_for_sync = self._waiting_for_sync, []
                for waiter in waiting:
                    waiter.callback(None)

        def failed(failure: Failure) -> None:
            self._syncing = False
            self._set_problem(
                f"could not bring Redis at {self.address} in step: {failure.getErrorMessage()}", "redis_sync_failed",
                "Could not bring Redis at {address} in step: {error}", error=failure.getErrorMessage())

        d.addCallbacks(done, failed)

    def _unavailable(self, failure: Failure) -> None:
        raise Unavailable()

    def _message(self, channel: bytes, message: bytes, alone: bool = False) -> None:
        if self._listener is None:
            return
        kind, room_id = channel[len(self.prefix):len(self.prefix) + 1], channel[len(self.prefix) + 2:].decode("utf-8")
        try:
            if kind == b"d":
                self._listener.direct_message(message)
            elif alone and message[:1] == b"M" and b"\n" not in message:
                # One broadcast, and nothing after it in this read: its
                # frames leave at once, like a lone message from a client.
                self._at_once(self._listener.channel_message, room_id, message)
            else:
                self._listener.channel_message(room_id, message)
        except Exception:
            self._log.failure("Handling a message from Redis failed")

    def _check_stall(self) -> None:
        protocol = self._commands
        now = self.reactor.seconds()
        if protocol is None or protocol.sent == protocol.replies or protocol.replies != self._seen_replies:
            self._seen_replies = protocol.replies if protocol is not None else 0
            self._stalled_since = now
            return
        if now - self._stalled_since >= self.timeout:
            self._log.warn("Redis has not answered for {seconds} s: reconnecting",
                           seconds=round(now - self._stalled_since, 1), event="redis_stalled")
            self._stalled_since = now
            protocol.transport.abortConnection()

    # -- the lease ---------------------------------------------------------------------

    def _tick(self) -> None:
        if self._commands is None:
            return
        if not self._synced:
            self._maybe_sync()
            return
        lease_ms = int(self.lease * 1000)
        d = self.call(scripts.HEARTBEAT, self.node, lease_ms)

        def renewed(result: Any) -> None:
            if int(result) == 0 and self._synced:
                # The lease was gone: Redis restarted, or this node was taken
                # for dead and its clients removed.  Put them back.
                self._log.warn("This node's lease had run out in Redis: bringing it in step again")
                self._synced = False
                self._maybe_sync()

        d.addCallbacks(renewed, lambda _: None)
        self.call(scripts.REAP).addCallbacks(self._reaped, lambda _: None)

    def _reaped(self, flat: list[Any]) -> None:
        for i in range(0, len(flat), 2):
            self._log.warn(
                "Node {node} stopped renewing its lease: removed its {clients} clients",
                node=flat[i], clients=int(flat[i + 1]), event="node_reaped")
