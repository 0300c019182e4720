"""
The chat service: the factory holding the rooms, its listening ports, and an
orderly shutdown.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from chatd.logs import json_observer

from chatd.settings import Settings
from chatd.ws import ChatFactory


class ChatService(MultiService):
    """
    Listens on every endpoint in ``settings.listen``; on stop, closes the
    ports first, then sends every client close 1001 and waits for them (at
    most ``settings.shutdown_timeout`` seconds).
    """

    _log = Logger()

    def __init__(self, settings: Settings, reactor: Any) -> None:
        super().__init__()
        self.settings = settings
        self._reactor = reactor
        self.factory = ChatFactory(settings, clock=reactor, reactor=reactor)
        for description in settings.listen:
            # strports.service raises a bind failure synchronously at start-up,
            # so twistd exits with a message instead of running deaf.
            strports.service(description, self.factory, reactor=reactor).setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        # twistd takes its log observer from the application, if it has one.
        if self.settings.log_format == "json" and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, json_observer(sys.stdout))

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            # One clear line and a non-zero exit instead of a traceback.
            where = f"{e.interface}:{e.port}" if e.interface else str(e.port)
            raise SystemExit(f"chatd: cannot listen on {where}: {e.socketError}") from None

    def stopService(self) -> "Deferred[Any]":
        d: Deferred[Any] = Deferred.fromCoroutine(self._stop())
        return d

    async def _stop(self) -> None:
        await super().stopService()
        count = len(self.factory.connections)
        self._log.info("Shutting down: closing {count} connections", count=count)
        await self.factory.shutdown(self.settings.shutdown_timeout)
        # SIGTERM is chatd's orderly stop: once drained, exit 0.  twistd would
        # otherwise re-raise the signal after the reactor stops and die of it
        # (exit status 143); SIGINT and others keep that behaviour.
        if getattr(self._reactor, "_exitSignal", None) == signal.SIGTERM:
            self._reactor._exitSignal = None
