"""
systemd's service notification protocol (``sd_notify``): one datagram of
``KEY=VALUE`` lines to the socket named by ``$NOTIFY_SOCKET``.

It is a few lines, so chatd carries them rather than depend on an
unmaintained package.  Outside systemd (no ``$NOTIFY_SOCKET``) every call
does nothing.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Mapping, Optional

from twisted.logger import Logger

_log = Logger()


class Notifier:
    """Sends notifications to systemd, if chatd runs under it."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        # "@name" is a socket in the abstract namespace.
        self.address: Optional[str] = "\0" + address[1:] if address.startswith("@") else address or None
        self.watchdog_seconds: Optional[float] = None
        usec = environ.get("WATCHDOG_USEC")
        pid = environ.get("WATCHDOG_PID")
        if usec and (pid is None or pid == str(os.getpid())):
            try:
                self.watchdog_seconds = int(usec) / 1_000_000
            except ValueError:
                _log.warn("Ignoring WATCHDOG_USEC={usec!r}: not a number", usec=usec)

    def notify(self, state: str) -> bool:
        """Send ``state`` (e.g. ``"READY=1"``); True if it was sent."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)  # never stall the reactor on systemd
                sock.connect(self.address)
                sock.send(state.encode("utf-8"))
        except OSError as e:
            _log.warn("Could not notify systemd ({state}): {error}", state=state, error=e)
            return False
        return True

    def keep_alive(self, clock: Any) -> Optional[Any]:
        """Under a systemd watchdog, a running LoopingCall sending WATCHDOG=1
        twice per interval (stop it on shutdown); otherwise None."""
        if not self.watchdog_seconds:
            return None
        from twisted.internet.task import LoopingCall

        beat = LoopingCall(self.notify, "WATCHDOG=1")
        beat.clock = clock
        beat.start(self.watchdog_seconds / 2)
        return beat
