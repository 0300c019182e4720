"""
Every chatd option, from the command line or a TOML file, validated in one
place.

Each option has one parser that takes either command-line text or a TOML
value and returns the checked value or raises ``ValueError`` with the
problem.  The command line wins over the file.  Errors name the key and where
it came from, so ``twistd chatd`` can stop before anything listens.
"""

from __future__ import annotations

import dataclasses

import ipaddress
import math
import tomllib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional
from urllib.parse import urlsplit

from chatd.backplane.address import parse_url
from chatd.settings import DEFAULT_LISTEN, DEFAULT_TRUSTED_PROXIES, Settings, parse_moderator


class ConfigError(Exception):
    """An option that cannot be used; the message says which and why."""


Parser = Callable[[Any, bool], Any]  # (value, is_text) -> checked value


@dataclass(frozen=True)
class Option:
    name: str  # the command-line name and the TOML key
    field: str  # the Settings attribute
    parse: Parser
    help: str
    kind: str = "value"  # "value", "list" (repeatable) or "flag"


def _number(value: Any, is_text: bool, integral: bool) -> float:
    if is_text:
        try:
            return int(value) if integral else float(value)
        except ValueError:
            what = "a whole number" if integral else "a number"
            raise ValueError(f"must be {what}, not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number, not {_toml_type(value)}")
    if integral and not isinstance(value, int):
        raise ValueError(f"must be a whole number, not {value!r}")
    return value


def size(minimum: int) -> Parser:
    def parse(value: Any, is_text: bool) -> int:
        number = int(_number(value, is_text, integral=True))
        if number < minimum:
            raise ValueError(f"must be at least {minimum}, not {number}")
        return number

    return parse


def seconds(allow_zero: bool) -> Parser:
    # Autobahn's timers have whole-second granularity: below 1 s a value
    # cannot be honoured, so it is refused rather than silently rounded.
    def parse(value: Any, is_text: bool) -> float:
        number = float(_number(value, is_text, integral=False))
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"must be a finite number of seconds >= 0, not {value}")
        if number == 0 and allow_zero:
            return 0.0
        if number < 1:
            off = " (or 0 to turn it off)" if allow_zero else ""
            raise ValueError(f"must be at least 1 second{off}, not {value}")
        return number

    return parse


def _endpoint(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be an endpoint description such as 'tcp:8765', not {value!r}")
    kind, _, rest = value.partition(":")
    if kind == "haproxy":
        # The PROXY protocol (Twisted's haproxy: prefix) over another endpoint.
        _endpoint(rest)
        return value
    if kind in ("tcp", "tcp6", "ssl"):
        port_text = rest.split(":", 1)[0]
        if port_text.startswith("port="):
            port_text = port_text[len("port="):]
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"{value!r}: the port must be a number, not {port_text!r}") from None
        if not 0 <= port <= 65535:
            raise ValueError(f"{value!r}: port {port} is out of range (0-65535)")
    return value


def endpoints(value: Any, is_text: bool) -> tuple[str, ...]:
    items = [value] if is_text else value
    if not isinstance(items, list) or not items:
        raise ValueError(f"must be a non-empty list of endpoint descriptions, not {_toml_type(value)}")
    return tuple(_endpoint(item) for item in items)


def networks(value: Any, is_text: bool) -> tuple[str, ...]:
    items = [value] if is_text else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"must be a list of addresses or networks like '10.0.0.0/8', not {_toml_type(value)}")
    result = []
    for item in items:
        try:
            result.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network like 10.0.0.0/8") from None
    return tuple(result)


def rate(value: Any, is_text: bool) -> float:
    number = float(_number(value, is_text, integral=False))
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"must be a finite number >= 0 (0 turns the limit off), not {value}")
    return number


def endpoint(value: Any, is_text: bool) -> str:
    return _endpoint(value)


DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_origin(origin: str) -> Optional[str]:
    """
    ``scheme://host:port`` in lower case with the port filled in, or None if
    ``origin`` is not an http(s) origin.  Browsers send ``https://example.org``
    for port 443; both spellings must match.
    """
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return None
    return f"{scheme}://{parts.hostname.lower()}:{port or DEFAULT_PORTS[scheme]}"


def origins(value: Any, is_text: bool) -> tuple[str, ...]:
    items = [value] if is_text else value
    if not isinstance(items, list):
        raise ValueError(f"must be a list of origins, not {_toml_type(value)}")
    result = []
    for item in items:
        normal = normalise_origin(item) if isinstance(item, str) else None
        if normal is None:
            raise ValueError(f"{item!r} is not an origin like https://chat.example.org")
        result.append(normal)
    return tuple(result)


def moderators(value: Any, is_text: bool) -> tuple[str, ...]:
    items = [value] if is_text else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"must be a list of moderators like 'banned-words:file=words.txt', not {_toml_type(value)}")
    # Their syntax here; twistd chatd makes each once before it listens, so
    # that a bad name, option or word file stops start-up too.
    for spec in items:
        parse_moderator(spec)
    return tuple(items)


def declared_rooms(value: Any, is_text: bool) -> tuple[tuple[str, bool, Optional[str]], ...]:
    """Rooms the operator declares: ``NAME[:private][:owner=USER]`` on the
    command line, or tables ``{name = "...", private = true, owner = "..."}``
    (or those strings) in the config file."""
    items = [value] if is_text else value
    if not isinstance(items, list):
        raise ValueError(f"must be a list of rooms like {{name = \"Team\", owner = \"alice\"}}, not {_toml_type(value)}")
    rooms = []
    for item in items:
        name: Any
        if isinstance(item, str):
            name, *flags = item.split(":")
            private, owner = "private" in flags, None
            for flag in flags:
                if flag.startswith("owner="):
                    owner = flag.removeprefix("owner=")
                elif flag != "private":
                    raise ValueError(f"must be NAME[:private][:owner=USER], not {item!r}")
        elif isinstance(item, dict) and set(item) <= {"name", "private", "owner"}:
            name, private, owner = item.get("name"), item.get("private", False), item.get("owner")
            if not isinstance(private, bool) or not (owner is None or isinstance(owner, str)):
                raise ValueError("room: 'private' must be true or false, 'owner' a user name")
        else:
            raise ValueError(f"must be rooms like {{name = \"Team\", private = true, owner = \"alice\"}}, not {item!r}")
        if not isinstance(name, str) or not name.strip() or len(name) > 100 or not name.isprintable():
            raise ValueError(f"room name must be 1 to 100 printable characters, not {name!r}")
        if owner == "":
            raise ValueError(f"room {name!r}: owner must be a user name")
        rooms.append((name, private, owner))
    names = [room[0] for room in rooms]
    if len(set(names)) != len(names):
        raise ValueError("declares a room name twice")
    return tuple(rooms)


def sqlite_path(target: str) -> str:
    """The path of a ``sqlite:PATH`` message log; ValueError for anything else."""
    kind, sep, path = target.partition(":")
    if kind != "sqlite" or not sep or not path:
        raise ValueError(f"must be sqlite:PATH, not {target!r}")
    return path


def message_log(value: Any, is_text: bool) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be sqlite:PATH, not {_toml_type(value)}")
    sqlite_path(value)
    return value


def key_file(value: Any, is_text: bool) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be the path of a file of keys, one a line, not {_toml_type(value)}")
    return value


def store(value: Any, is_text: bool) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be memory, sqlite:PATH or postgresql://..., not {_toml_type(value)}")
    if value == "memory" or value.startswith(("postgresql://", "postgres://")):
        return value
    try:
        sqlite_path(value)
    except ValueError:
        raise ValueError(f"must be memory, sqlite:PATH or postgresql://USER@HOST:PORT/DB, not {value!r}") from None
    return value


def days(value: Any, is_text: bool) -> float:
    number = float(_number(value, is_text, integral=False))
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"must be a number of days above 0, not {value}")
    return number


def redis_urls(value: Any, is_text: bool) -> tuple[str, ...]:
    items = [value] if is_text or isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(item, str) for item in items):
        raise ValueError(f"must be a URL like redis://localhost:6379/0 or a list of them, not {_toml_type(value)}")
    for item in items:
        parse_url(item)
    return tuple(items)


def auth_spec(value: Any, is_text: bool) -> str:
    # Its syntax here; twistd chatd builds the checker before it listens, so
    # that a missing key file or an unknown algorithm stops start-up too.
    # (The options after NAME: are the checker's own to parse.)
    if not isinstance(value, str) or not value.partition(":")[0].strip():
        raise ValueError(f"must be a checker like 'jwt:key=/etc/chatd/jwt.key', not {value!r}")
    return value


def choice(*choices: str) -> Parser:
    def parse(value: Any, is_text: bool) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")
        return str(value)

    return parse


def flag(value: Any, is_text: bool) -> bool:
    if is_text:
        return True
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {_toml_type(value)}")
    return value


OPTIONS: tuple[Option, ...] = (
    Option("listen", "listen", endpoints,
           "Listen on a Twisted server endpoint, e.g. tcp:8765, ssl:8443:..., "
           "unix:/run/chatd.sock, systemd:domain=INET:name=chatd. Repeatable; "
           f"replaces the default {DEFAULT_LISTEN}.", kind="list"),
    Option("max-message-size", "max_message_size", size(1),
           "Largest message a client may send, in bytes; over it: close 1009."),
    Option("max-outgoing-buffer", "max_outgoing_buffer", size(1),
           "Bytes that may queue for a client that is not reading before it is "
           "dropped with close 1008."),
    Option("ping-interval", "ping_interval", seconds(allow_zero=True),
           "Seconds between WebSocket pings to each client (0: never)."),
    Option("ping-timeout", "ping_timeout", seconds(allow_zero=True),
           "Seconds to wait for a pong before dropping the client (0: never drop it)."),
    Option("max-connections", "max_connections", size(0),
           "Most connections at once, handshakes included; over it a new "
           "connection gets HTTP 503 (0: no limit)."),
    Option("max-connections-per-ip", "max_connections_per_ip", size(0),
           "Most connections at once from one IP address; over it: HTTP 503 "
           "(0: no limit)."),
    Option("allowed-origin", "allowed_origins", origins,
           "Accept browsers only from this origin, e.g. https://chat.example.org. "
           "Repeatable; a handshake from another Origin gets HTTP 403. Clients "
           "that send no Origin (not browsers), and chatd's own web page, are "
           "not affected. Default: any.",
           kind="list"),
    Option("rate-messages", "rate_messages", rate,
           "Chat messages a second each connection may send (0: no limit); "
           "over it: a 'Rate limit exceeded' error with retry_after."),
    Option("rate-messages-burst", "rate_messages_burst", size(1),
           "Messages a connection may send at once before --rate-messages "
           "applies; refused twice this many in a row: close 1008."),
    Option("rate-creates", "rate_creates", rate,
           "Rooms a minute each connection may create (0: no limit)."),
    Option("rate-creates-burst", "rate_creates_burst", size(1),
           "Rooms a connection may create at once before --rate-creates applies."),
    Option("rate-commands", "rate_commands", rate,
           "Commands other than chat and direct messages (history, members, list, "
           "join, room actions, ...) a second per connection (0: no limit); a "
           "reply costs one more for each 16 KiB of it."),
    Option("rate-commands-burst", "rate_commands_burst", size(1),
           "Commands a connection may send at once before --rate-commands applies."),
    Option("rate-connections-per-ip", "rate_connections_per_ip", rate,
           "New connections a minute from one IP address, and as many at once "
           "(0: no limit); over it: HTTP 503."),
    Option("trusted-proxy", "trusted_proxies", networks,
           "A reverse proxy's address or network (CIDR): for its connections the "
           "client's address is taken from the --forwarded-header, or from the "
           "PROXY protocol header of a haproxy: listener (a PROXY header from "
           "any other address is refused). Repeatable; "
           f"replaces the default {', '.join(DEFAULT_TRUSTED_PROXIES)}.", kind="list"),
    Option("forwarded-header", "forwarded_header", choice("x-forwarded-for", "forwarded"),
           "The header the trusted proxies set with the client's address: "
           "x-forwarded-for, or forwarded (RFC 7239). Only that one is read: the "
           "other may come from the client, through a proxy that passes it on."),
    Option("limit-loopback", "limit_loopback", flag,
           "Hold clients that connect directly from a loopback address (tests, "
           "bots on the same host) to the per-address limits too; by default "
           "only clients that come through a proxy are.", kind="flag"),
    Option("max-rooms-per-connection", "max_rooms_per_connection", size(1),
           "Rooms one connection may be in at once, joining with \"keep\"."),
    Option("history-size", "history_size", size(0),
           "Messages each room keeps for the history action (0: none)."),
    Option("history-bytes", "history_bytes", size(0),
           "Bytes of messages each room keeps at most (the oldest go first)."),
    Option("history-memory", "history_memory", size(0),
           "Bytes of memory the history of all rooms may take together; past it, the "
           "rooms that have gone longest without a message lose their oldest messages "
           "first (0: no limit but each room's)."),
    Option("moderator", "moderators", moderators,
           "Run each chat message past this moderator before it is broadcast: "
           "NAME[:key=value...], e.g. banned-words:file=/etc/chatd/words.txt:mode=mask; "
           "a Twisted plugin name or a dotted path. Repeatable; run in order.",
           kind="list"),
    Option("moderation-failure", "moderation_failure", choice("reject", "pass"),
           "What happens to a message when a moderator fails or times out."),
    Option("moderation-timeout", "moderation_timeout", seconds(allow_zero=False),
           "Seconds a moderator may take before it counts as failing."),
    Option("auth", "auth", auth_spec,
           "Check users' tokens with this checker: jwt:key=PATH[:algorithms=HS256,...]"
           "[:audience=A][:issuer=I][:leeway=SECONDS], or a twisted.cred checker "
           "plugin for chatd tokens by name. Default: no authentication."),
    Option("guests", "guests", choice("allow", "deny"),
           "Whether clients that have not authenticated may do anything but 'auth' "
           "(deny needs --auth)."),
    Option("store", "store", store,
           "Keep persistent rooms, memberships, read markers and their history here: memory "
           "(nothing lasts), sqlite:PATH (one process) or postgresql://USER@HOST:PORT/DB. "
           "Default: sqlite:chatd.db in the working directory, or memory with --redis."),
    Option("persistent-rooms", "persistent_rooms", choice("users", "anyone"),
           "Who may create persistent rooms: users (signed in) or anyone (guests too)."),
    Option("room", "rooms", declared_rooms,
           "A persistent room to create on first start and keep: NAME[:private][:owner=USER] "
           "(in the config file, tables like {name = \"Team\", private = true, owner = \"alice\"}). "
           "Repeatable. Needs a store.", kind="list"),
    Option("history-keep", "history_keep", days,
           "Days persistent rooms keep their messages; older ones are deleted in the "
           "background (default: all are kept)."),
    Option("message-log", "message_log", message_log,
           "Keep every broadcast message in this SQLite database: "
           "sqlite:/var/lib/chatd/messages.db (off unless given); with an SQLite store, "
           "the store's own file."),
    Option("message-log-keep", "message_log_keep", days,
           "Days the message log keeps messages; older ones are deleted in the "
           "background (default: all are kept)."),
    Option("handshake-timeout", "handshake_timeout", seconds(allow_zero=False),
           "Seconds a client has to complete the opening handshake."),
    Option("close-timeout", "close_timeout", seconds(allow_zero=False),
           "Seconds to wait for a client's close frame after sending ours."),
    Option("shutdown-timeout", "shutdown_timeout", seconds(allow_zero=False),
           "Seconds to wait on shutdown for clients to close before aborting them."),
    Option("log-format", "log_format", choice("text", "json"),
           "text: twistd's log format; json: one JSON object per line on "
           "standard output (for journald or a log shipper)."),
    Option("metrics", "metrics", endpoint,
           "Serve Prometheus /metrics, /healthz and /readyz on this endpoint, "
           "e.g. tcp:9108:interface=127.0.0.1 (off unless given)."),
    Option("api", "api", endpoint,
           "Serve the HTTP server API (/v1/...) on this endpoint, e.g. tcp:8766:interface=127.0.0.1 "
           "(off unless given; needs --api-keys)."),
    Option("api-keys", "api_keys", key_file,
           "The server API's keys: a file of one key a line, each sent as Authorization: Bearer KEY."),
    Option("redis", "redis", redis_urls,
           "Run as one node of a cluster whose rooms live in this Redis: "
           "redis://[[user]:password@]host[:port][/db], unix:///path/redis.sock[?db=N], or a "
           "Sentinel service's master: sentinel://[[user]:password@]host:port[,host:port...]/service[/db] "
           "(off unless given: this process is the whole service). Repeatable: each room lives on one "
           "of them, by a hash of its ID; every node must list the same ones in the same order.",
           kind="list"),
    Option("redis-lease", "redis_lease", seconds(allow_zero=False),
           "Seconds a node's lease in Redis lasts; a node killed without a goodbye "
           "has its clients removed from their rooms within this time."),
    Option("redis-timeout", "redis_timeout", seconds(allow_zero=False),
           "Seconds to wait for Redis before an action answers 'Service temporarily unavailable'."),
    Option("workers", "workers", size(1),
           "Worker processes sharing the listening sockets, one per core (more than 1 needs --redis)."),
    Option("permessage-deflate", "permessage_deflate", flag,
           "Let clients negotiate permessage-deflate: each broadcast is compressed "
           "once for all of them (no context takeover); off by default, it costs CPU "
           "per broadcast and saves bandwidth on big messages.", kind="flag"),
    Option("log-messages", "log_messages", flag,
           "Log message bodies too (they are never logged otherwise).", kind="flag"),
)

BY_NAME = {option.name: option for option in OPTIONS}


def _toml_type(value: Any) -> str:
    return {bool: "a boolean", str: "a string", list: "a list", dict: "a table",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def read_file(path: str) -> dict[str, Any]:
    """The top-level table of a TOML config file."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


#: The sections of ``--help``, each option in one, in the order shown.
SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Listening", ("listen", "metrics", "workers", "permessage-deflate")),
    ("Server API", ("api", "api-keys")),
    ("Who may connect", (
        "max-connections", "max-connections-per-ip", "rate-connections-per-ip", "allowed-origin",
        "trusted-proxy", "forwarded-header", "limit-loopback", "handshake-timeout")),
    ("Identity", ("auth", "guests")),
    ("Limits per connection", (
        "max-message-size", "max-outgoing-buffer", "rate-messages", "rate-messages-burst", "rate-creates",
        "rate-creates-burst", "rate-commands", "rate-commands-burst", "ping-interval", "ping-timeout",
        "close-timeout")),
    ("Rooms and messages", (
        "max-rooms-per-connection", "history-size", "history-bytes", "history-memory", "moderator",
        "moderation-failure",
        "moderation-timeout", "message-log", "message-log-keep")),
    ("Rooms that last", ("store", "persistent-rooms", "room", "history-keep")),
    ("Cluster", ("redis", "redis-lease", "redis-timeout")),
    ("Logs and shutdown", ("log-format", "log-messages", "shutdown-timeout")),
)


def load(command_line: Mapping[str, Any], config_path: Optional[str] = None) -> Settings:
    """
    Settings from the options given on the command line (raw text, by option
    name; lists for repeatable options) over those in the config file.
    """
    values: dict[str, Any] = {}
    if config_path is not None:
        for key, value in read_file(config_path).items():
            option = BY_NAME.get(key)
            if option is None:
                raise ConfigError(f"{config_path}: unknown key {key!r}")
            if option.kind == "list" and isinstance(value, str):
                value = [value]  # one item, written without the brackets
            values[option.field] = _checked(option, value, False, config_path)
    for name, value in command_line.items():
        option = BY_NAME[name]
        if option.kind == "list":
            items = [_checked(option, item, True, "command line") for item in value]
            values[option.field] = tuple(x for item in items for x in item)
        elif option.kind == "flag":
            values[option.field] = True
        else:
            values[option.field] = _checked(option, value, True, "command line")
    settings = Settings(**values)
    twice = {url for url in settings.redis if settings.redis.count(url) > 1}
    if twice:
        raise ConfigError(f"--redis names {sorted(twice)[0]!r} twice: each shard is one Redis")
    if settings.workers > 1 and not settings.redis:
        raise ConfigError(
            f"--workers {settings.workers} needs --redis: workers share their rooms through Redis")
    if settings.message_log_keep is not None and settings.message_log is None:
        raise ConfigError("--message-log-keep needs --message-log")
    if settings.api is not None and settings.api_keys is None:
        raise ConfigError("--api needs --api-keys PATH: a file of keys, one a line")
    if settings.api is not None and settings.workers > 1:
        raise ConfigError(
            "--api with --workers is not supported: serve the API from a chatd without --workers "
            "(any node of a cluster acts on the whole cluster)")
    settings = _with_store(settings)
    if settings.guests == "deny" and settings.auth is None:
        raise ConfigError("--guests deny needs --auth: nobody could authenticate")
    return settings


def _with_store(settings: Settings) -> Settings:
    """The store the settings name, or the default: the message log's
    database (the log becomes a part of the store), else sqlite:chatd.db;
    memory with --redis.  One database per job: a store in SQLite is one
    process's, and the message log, if on, is in it."""
    chosen = settings.store
    if chosen is None:
        chosen = "memory" if settings.redis else settings.message_log or DEFAULT_STORE
    if chosen.startswith("sqlite:"):
        if settings.redis:
            raise ConfigError(
                "--store sqlite: is one process's; a cluster (--redis) keeps its rooms in "
                "--store postgresql://... (or memory)")
        if settings.message_log is not None and settings.message_log != chosen:
            raise ConfigError(
                f"--message-log {settings.message_log} is not the store ({chosen}): the message "
                "log is kept in the store's database; leave it out or name the same one")
    if settings.rooms and chosen == "memory":
        raise ConfigError("--room needs a store (--store sqlite:PATH or postgresql://...)")
    if settings.history_keep is not None and chosen == "memory":
        raise ConfigError("--history-keep needs a store (--store sqlite:PATH or postgresql://...)")
    return dataclasses.replace(settings, store=chosen)


#: The store of ``twistd chatd`` without --store or --redis.
DEFAULT_STORE = "sqlite:chatd.db"


def _checked(option: Option, value: Any, is_text: bool, source: str) -> Any:
    try:
        return option.parse(value, is_text)
    except ValueError as e:
        where = f"--{option.name}" if is_text else f"{source}: {option.name}"
        raise ConfigError(f"{where} {e}") from None
