"""
The daemon's tunables, with the defaults documented in docs/protocol.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

DEFAULT_LISTEN = "tcp:8765:interface=127.0.0.1"
DEFAULT_TRUSTED_PROXIES = ("127.0.0.0/8", "::1/128")


def read_entries(path: str, what: str) -> list[str]:
    """The entries of a file of one a line (blank lines and ``#`` comments
    are none): a word list, the API's keys.  ValueError, in words, when it
    cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ValueError(f"cannot read {what} {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not UTF-8 text") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def parse_moderator(spec: str) -> tuple[str, dict[str, str]]:
    """A moderator's ``NAME:key=value:key=value`` into the name and the
    options; ValueError says what is wrong with it."""
    name, *pairs = spec.split(":")
    if not name:
        raise ValueError(f"{spec!r}: the moderator needs a name, e.g. banned-words:file=words.txt")
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{spec!r}: options are key=value, not {pair!r}")
        options[key] = value
    return name, options


@dataclass(frozen=True)
class Settings:
    #: Twisted server endpoint descriptions to listen on.
    listen: tuple[str, ...] = field(default=(DEFAULT_LISTEN,))
    #: Largest incoming message (and frame) payload in bytes; over it: close 1009.
    max_message_size: int = 64 * 1024
    #: Bytes that may queue for one client while its socket is full; over it
    #: the client is dropped with close 1008.
    max_outgoing_buffer: int = 1024 * 1024
    #: Seconds between pings to a connection (0: never ping).
    ping_interval: float = 30.0
    #: Seconds to wait for a pong before dropping the peer (0: wait forever).
    ping_timeout: float = 30.0
    #: Most connections at once, handshakes included (0: no limit); over it
    #: a new connection gets HTTP 503.
    max_connections: int = 10_000
    #: Most connections at once from one IP address (0: no limit).
    max_connections_per_ip: int = 256
    #: Origins (scheme://host[:port]) a browser may connect from; empty: any.
    allowed_origins: tuple[str, ...] = ()
    #: Chat messages a second per connection (0: no limit), and the burst.
    rate_messages: float = 20.0
    rate_messages_burst: int = 40
    #: Rooms created a minute per connection (0: no limit), and the burst.
    rate_creates: float = 10.0
    rate_creates_burst: int = 10
    #: Other commands a second per connection (0: no limit), and the burst;
    #: a reply costs one more for each 16 KiB.
    rate_commands: float = 10.0
    rate_commands_burst: int = 20
    #: New connections a minute per IP address (0: no limit); also the burst.
    rate_connections_per_ip: float = 60.0
    #: Networks (CIDR) of the reverse proxies whose X-Forwarded-For or
    #: Forwarded header names the client.
    trusted_proxies: tuple[str, ...] = field(default=DEFAULT_TRUSTED_PROXIES)
    #: The header the trusted proxies set with the client's address
    #: ("x-forwarded-for" or "forwarded"); the other is never read.
    forwarded_header: str = "x-forwarded-for"
    #: Whether clients connecting directly from a loopback address are held
    #: to the per-address limits too.
    limit_loopback: bool = False
    #: Messages kept per room for "history" (0: none), and at most this many
    #: bytes of them per room.
    history_size: int = 100
    #: Rooms one connection may be in at once (joining with "keep").
    max_rooms_per_connection: int = 100
    history_bytes: int = 512 * 1024
    #: Memory all rooms' history may take together (0: no limit but the
    #: rooms' own); past it the quietest rooms lose their oldest messages.
    history_memory: int = 64 * 1024 * 1024
    #: Moderators, as NAME[:key=value...] specs, run in this order.
    moderators: tuple[str, ...] = ()
    #: What a failing (or too slow) moderator amounts to: "pass" or "reject".
    moderation_failure: str = "reject"
    #: Seconds a moderator may take before it counts as failing.
    moderation_timeout: float = 5.0
    #: The token checker, as NAME[:options] (None: no authentication).
    auth: Optional[str] = None
    #: Whether clients that have not authenticated may chat: "allow" or "deny".
    guests: str = "allow"
    #: Where lasting rooms are kept: "memory" (none last), "sqlite:PATH" or
    #: "postgresql://..." (None: memory; ``twistd chatd`` defaults to
    #: sqlite:chatd.db without --redis).
    store: Optional[str] = None
    #: Who may create lasting rooms: "users" (signed in) or "anyone".
    persistent_rooms: str = "users"
    #: Lasting rooms the operator declares: (name, private, owner user).
    rooms: tuple[tuple[str, bool, Optional[str]], ...] = ()
    #: Days lasting rooms keep their messages (None: forever).
    history_keep: Optional[float] = None
    #: Where every broadcast message is kept: "sqlite:PATH" (None: nowhere).
    message_log: Optional[str] = None
    #: Days the message log keeps messages (None: forever).
    message_log_keep: Optional[float] = None
    #: Seconds a client has to finish the opening handshake.
    handshake_timeout: float = 10.0
    #: Seconds to wait for the peer's close frame after ours.
    close_timeout: float = 5.0
    #: Seconds to wait on shutdown for clients to close before aborting them.
    shutdown_timeout: float = 10.0
    #: "text" (twistd's format) or "json" (one object per line on stdout).
    log_format: str = "text"
    #: Whether message bodies are logged (never, unless asked for).
    log_messages: bool = False
    #: Whether clients may negotiate permessage-deflate (broadcasts are then
    #: compressed once for all of them).
    permessage_deflate: bool = False
    #: Endpoint for /metrics, /healthz and /readyz (None: not served).
    metrics: Optional[str] = None
    #: Endpoint of the HTTP server API (None: not served), and its keys' file.
    api: Optional[str] = None
    api_keys: Optional[str] = None
    #: Redis URLs of the cluster's backplane, one per shard (none: this
    #: process is the whole service).
    redis: tuple[str, ...] = ()
    #: Seconds a node's lease lasts: a node that stops renewing it (killed) has
    #: its clients removed within this time.
    redis_lease: float = 15.0
    #: Seconds to wait for Redis to answer before a command counts as unavailable.
    redis_timeout: float = 5.0
    #: Worker processes sharing the listening sockets (more than 1 needs redis).
    workers: int = 1
