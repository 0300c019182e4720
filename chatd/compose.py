"""
The composition root: everything a chatd process serves, built in one
place from its settings, and handed to the WebSocket factory
(:class:`chatd.ws.ChatFactory`), as magic-wormhole's factory is handed its
server.

:func:`compose` builds the observers (metrics, logs, the message log), the
core and the chat (this process's, or a cluster node's on Redis), the
moderation chain, the portal that checks tokens, and the admission
limits; nothing else builds any of them.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from chatd.admission import Admission
from chatd.auth import build_portal
from chatd.chat import Chat, LocalChat
from chatd.core import ChatCore
from chatd.delivery.frames import Broadcast, Broadcasts, text_frame
from chatd.delivery.outbox import Flusher
from chatd.errors import CLOSE_TRY_AGAIN_LATER, Unavailable
from chatd.metrics import Metrics
from chatd.moderation import Moderation, build
from chatd.observers import Observers
from chatd.rooms.state import Client, Limits
from chatd.settings import Settings

_log = Logger()


class Server:
    """What a factory serves: built by :func:`compose`."""

    def __init__(
        self, settings: Settings, clock: IReactorTime, metrics: Metrics, events: Observers, core: ChatCore,
        flusher: Flusher, chat: Chat, moderation: Moderation, portal: Optional[Any], admission: Admission,
        shards: Optional[Any] = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.events = events
        self.core = core
        self.flusher = flusher  # sends what the connections queued, once per reactor iteration
        self.chat = chat  # what the connections talk to
        self.moderation = moderation
        self.portal = portal  # checks tokens (None: no authentication)
        self.admission = admission
        self.shards = shards  # a cluster node's Redis shards (None: one process)


def limits_of(settings: Settings) -> Limits:
    """The per-client limits and history bounds the settings give."""
    return Limits(
        messages_per_second=settings.rate_messages,
        messages_burst=settings.rate_messages_burst,
        creates_per_minute=settings.rate_creates,
        creates_burst=settings.rate_creates_burst,
        commands_per_second=settings.rate_commands,
        commands_burst=settings.rate_commands_burst,
        history_size=settings.history_size,
        history_bytes=settings.history_bytes,
        history_memory=settings.history_memory,
        rooms_per_connection=settings.max_rooms_per_connection,
    )


def _sink_error(client: Client, error: BaseException) -> None:
    _log.failure("Delivery to {client_id} failed; removed it", client_id=client.client_id)


def compose(
    settings: Settings,
    clock: IReactorTime,
    reactor: Any = None,
    metrics: Optional[Metrics] = None,
    message_log: Optional[Any] = None,
    moderators: Optional[Sequence[Any]] = None,
    portal: Optional[Any] = None,
    cluster: bool = True,
    durable: Optional[Any] = None,
) -> Server:
    """
    Everything a chatd process serves.  ``moderators`` and ``portal`` are
    made already by ``twistd chatd`` (which reports their errors at
    start-up), else here; ``durable`` is the store of lasting rooms (None:
    none last), which ``twistd chatd`` opens before it listens; with ``settings.redis`` (and ``cluster``), the
    chat is a cluster node's, whose shards the service starts.
    """
    metrics = metrics if metrics is not None else Metrics()
    events = Observers(settings, metrics, message_log, durable)
    core = ChatCore(
        # Each broadcast is framed once, whatever the number of recipients,
        # by the same framer as replies (with --permessage-deflate, once
        # plain and once compressed); a batch is joined into one delivery
        # per member.
        prepare=Broadcast if settings.permessage_deflate else text_frame,
        join=Broadcasts if settings.permessage_deflate else b"".join,
        on_sink_error=_sink_error,
        events=events,
        limits=limits_of(settings),
        durable=durable,
        persistent_rooms=settings.persistent_rooms,
    )
    flusher = Flusher(clock)
    chat: Chat = LocalChat(
        core,
        timer=metrics.timer,
        observe_fanout=metrics.fanout_seconds.observe,
        clock=clock,
        on_fanout_error=lambda: _log.failure("Unexpected error fanning out a read's messages"),
    )
    shards = None
    if settings.redis and cluster:
        shards, chat = cluster_chat(
            settings, reactor if reactor is not None else clock, core, metrics, flusher, durable)
    moderation = Moderation(
        list(moderators) if moderators is not None else [build(spec) for spec in settings.moderators],
        clock,
        on_failure=settings.moderation_failure,
        timeout=settings.moderation_timeout,
        counted=lambda outcome: metrics.moderation.labels(outcome).inc(),
    )
    if portal is None and settings.auth is not None:
        portal = build_portal(settings.auth)
    admission = Admission(
        settings.max_connections, settings.max_connections_per_ip, settings.rate_connections_per_ip,
        trusted=settings.trusted_proxies, limit_loopback=settings.limit_loopback,
        forwarded_header=settings.forwarded_header)
    return Server(settings, clock, metrics, events, core, flusher, chat, moderation, portal, admission, shards)


def cluster_chat(
    settings: Settings, reactor: Any, core: ChatCore, metrics: Metrics, flusher: Flusher,
    durable: Optional[Any] = None,
) -> tuple[Any, Chat]:
    """A node of the cluster on ``settings.redis`` (one Redis, or several
    shards): (its shards, its chat)."""
    from chatd.backplane.address import parse_url
    from chatd.backplane.cluster import ClusterChat
    from chatd.backplane.redis import RedisBackplane, node_name
    from chatd.backplane.shards import Shards

    node = node_name()  # one name on every shard
    shards = Shards([
        RedisBackplane(
            parse_url(url), reactor, lease=settings.redis_lease, timeout=settings.redis_timeout,
            node=node, at_once=flusher.send_now, connect_failed=metrics.redis_connect_failures.inc,
        )
        for url in settings.redis
    ])
    metrics.redis_available.set_function(lambda: 1.0 if shards.available else 0.0)
    chat = ClusterChat(
        core, shards, reactor,
        refuse=lambda client: client.sink.close(CLOSE_TRY_AGAIN_LATER, Unavailable().message),
        wait=settings.redis_timeout,
        flusher=flusher,
        durable=durable,
        persistent_rooms=settings.persistent_rooms,
    )
    return shards, chat


def log_in_store(settings: Settings) -> bool:
    """Whether the message log is kept in the store's database."""
    return settings.message_log is not None and settings.message_log == settings.store


def open_store(settings: Settings, reactor: Any, counted: Callable[[str, int], None]) -> Optional[Any]:
    """The durable store the settings name (a
    :class:`~chatd.storage.durable.Durable`, not yet opened), or None for
    ``memory``."""
    target = settings.store or "memory"
    options: dict[str, Any] = {
        "counted": counted, "keep_days": settings.history_keep,
        "log_keep_days": settings.message_log_keep if log_in_store(settings) else None,
    }
    if target.startswith("sqlite:"):
        from chatd.storage.sqlite import open_sqlite

        return open_sqlite(target.partition(":")[2], reactor, **options)
    if target.startswith(("postgresql://", "postgres://")):
        from chatd.storage.postgres import open_postgresql

        return open_postgresql(target, reactor, **options)
    return None
