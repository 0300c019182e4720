"""
What the chat reports (rooms made and gone, owners' actions, messages sent,
deliveries), turned into structured log events, metrics and the message
log: the chat decides, the adapter frames, and this counts.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.logger import Logger

from chatd.codec import Manage
from chatd.rooms.events import CoreEvents
from chatd.rooms.state import Client, Room
from chatd.metrics import Metrics
from chatd.settings import Settings


class Observers(CoreEvents):
    """What the core reports, as structured log events, metrics and the
    message log."""

    _log = Logger(namespace="chatd.rooms")

    def __init__(
        self, settings: Settings, metrics: Metrics, message_log: Optional[Any], store: Optional[Any] = None,
    ) -> None:
        self._log_messages = settings.log_messages
        self._metrics = metrics
        self._message_log = message_log  # a chatd.storage.durable.Durable, or None
        # Whether the log is the store itself, which keeps a lasting room's
        # messages already (as the room's history, in the same table).
        self._log_is_store = message_log is not None and message_log is store

    def room_created(self, room: Room, client: Client) -> None:
        self._log.info(
            "{client_id} created room {room_id}",
            event="room_created", room_id=room.room_id, client_id=client.client_id,
        )

    def room_action(self, room: Room, client: Client, command: Manage) -> None:
        self._metrics.room_actions.labels(command.action).inc()
        self._log.info(
            "{client_id} in {room_id}: {action} {target}",
            event="room_action", client_id=client.client_id, room_id=room.room_id, action=command.action,
            target=command.target, reason=command.reason or None,
        )

    def room_deleted(self, room: Room) -> None:
        self._log.info("room {room_id} deleted", event="room_deleted", room_id=room.room_id)

    def delivered(self, copies: int, size: int) -> None:
        self._metrics.deliveries.inc(copies)
        self._metrics.bytes_sent.inc(size)

    def direct_sent(self, sender: Client, message: dict[str, Any], recipients: int, size: int) -> None:
        self._metrics.messages_received.inc()
        if recipients:
            self.delivered(recipients, size * recipients)
        if self._message_log is not None:
            self._message_log.record("", "", message)
        if self._log_messages:
            self._log.info(
                "{client_id} to {to}: {body!r}",
                event="direct", client_id=sender.client_id, to=message["to"], body=message["body"],
                recipients=recipients,
            )

    def message_sent(
        self, room: Room, sender: Client, message: dict[str, Any], recipients: int, size: int
    ) -> None:
        metrics = self._metrics
        metrics.messages_received.inc()
        if recipients:
            self.delivered(recipients, size * recipients)
        log = self._message_log
        if log is not None and not (room.persistent and self._log_is_store):
            log.record(room.room_id, room.name, message)
        if self._log_messages:
            self._log.info(
                "{client_id} in {room_id}: {body!r}",
                event="message", client_id=sender.client_id, room_id=room.room_id,
                body=message["body"], message_id=message["id"], recipients=recipients,
            )
