"""
``twistd chatd``: command-line options and the service they describe.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.python import usage

from chatd.service import ChatService
from chatd.settings import DEFAULT_LISTEN, Settings


def _positive_int(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"--{name} must be a whole number of bytes, not {text!r}") from None
        if value <= 0:
            raise ValueError(f"--{name} must be greater than 0, not {value}")
        return value

    parse.coerceDoc = "A whole number greater than 0."  # type: ignore[attr-defined]
    return parse


def _seconds(name: str, allow_zero: bool) -> Callable[[str], float]:
    # Autobahn's timers have whole-second granularity: below 1 s a value
    # cannot be honoured, so it is refused rather than silently rounded.
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"--{name} must be a number of seconds, not {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")) or value < 0:
            raise ValueError(f"--{name} must be a finite number of seconds >= 0, not {text}")
        if value == 0 and allow_zero:
            return value
        if value < 1:
            raise ValueError(
                f"--{name} must be at least 1 second"
                + (" (or 0 to turn it off)" if allow_zero else "")
                + f", not {text}"
            )
        return value

    parse.coerceDoc = "Seconds, at least 1" + (" (0 turns it off)." if allow_zero else ".")  # type: ignore[attr-defined]
    return parse


_D = Settings()


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the chatd multi-room WebSocket chat server. "
        f"By default it listens on {DEFAULT_LISTEN} (ws://localhost:8765)."
    )

    optParameters = [
        ["max-message-size", None, _D.max_message_size,
         "Largest message a client may send, in bytes; over it: close 1009.",
         _positive_int("max-message-size")],
        ["max-outgoing-buffer", None, _D.max_outgoing_buffer,
         "Bytes that may queue for a client that is not reading before it is "
         "dropped with close 1008.",
         _positive_int("max-outgoing-buffer")],
        ["ping-interval", None, _D.ping_interval,
         "Seconds between WebSocket pings to each client.",
         _seconds("ping-interval", allow_zero=True)],
        ["ping-timeout", None, _D.ping_timeout,
         "Seconds to wait for a pong before dropping the client.",
         _seconds("ping-timeout", allow_zero=True)],
        ["handshake-timeout", None, _D.handshake_timeout,
         "Seconds a client has to complete the opening handshake.",
         _seconds("handshake-timeout", allow_zero=False)],
        ["close-timeout", None, _D.close_timeout,
         "Seconds to wait for a client's close frame after sending ours.",
         _seconds("close-timeout", allow_zero=False)],
        ["shutdown-timeout", None, _D.shutdown_timeout,
         "Seconds to wait on shutdown for clients to close before aborting them.",
         _seconds("shutdown-timeout", allow_zero=False)],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """
        Listen on a Twisted server endpoint, e.g. tcp:8765, ssl:8443:...,
        unix:/run/chatd.sock, systemd:domain=INET:name=chatd. Repeatable;
        replaces the default tcp:8765:interface=127.0.0.1.
        """
        self["listen"].append(description)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]

    def settings(self) -> Settings:
        return Settings(
            listen=tuple(self["listen"]),
            max_message_size=self["max-message-size"],
            max_outgoing_buffer=self["max-outgoing-buffer"],
            ping_interval=self["ping-interval"],
            ping_timeout=self["ping-timeout"],
            handshake_timeout=self["handshake-timeout"],
            close_timeout=self["close-timeout"],
            shutdown_timeout=self["shutdown-timeout"],
        )


def makeService(options: Options, reactor: Optional[Any] = None) -> ChatService:
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    return ChatService(options.settings(), reactor)
