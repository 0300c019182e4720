"""
Where Redis is: its URL, parsed and checked without I/O (the configuration
uses this to refuse a bad ``--redis`` before anything starts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is: from ``redis://[[user]:password@]host[:port][/db]``,
    ``unix:///path/to/redis.sock[?db=N]``, or the master of a Sentinel
    service, ``sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``
    (the password is the master's)."""

    host: Optional[str] = None
    port: int = 6379
    path: Optional[str] = None
    db: int = 0
    username: Optional[str] = None
    password: Optional[str] = None
    sentinels: tuple[tuple[str, int], ...] = ()
    service: Optional[str] = None

    def __str__(self) -> str:
        if self.sentinels:
            where = "sentinel://" + ",".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"{where}/{self.service}/{self.db}"
        where = f"unix://{self.path}" if self.path else f"redis://{self.host}:{self.port}"
        return f"{where}/{self.db}"


def parse_url(url: str) -> RedisAddress:
    """A Redis URL, checked; ValueError says what is wrong with it."""
    if url.startswith("sentinel://"):
        return _sentinel(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"{url!r} is not a Redis URL: {e}") from None
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"{url!r}: a unix:// URL needs the socket's path")
        db_text = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p).get("db", "0")
        return RedisAddress(path=parts.path, db=_db(db_text, url), password=_secret(parts.password))
    if parts.scheme != "redis":
        raise ValueError(f"{url!r} must start with redis://, unix:// or sentinel://")
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host")
    db_text = parts.path.lstrip("/") or "0"
    return RedisAddress(
        host=parts.hostname, port=port or 6379, db=_db(db_text, url),
        username=_secret(parts.username), password=_secret(parts.password),
    )


def _sentinel(url: str) -> RedisAddress:
    # urlsplit cannot take several host:port pairs: the netloc is split here.
    rest = url[len("sentinel://"):]
    netloc, _, path = rest.partition("/")
    credentials, at, hosts = netloc.rpartition("@")
    if not at:
        credentials, hosts = "", netloc
    username, _, password = credentials.partition(":") if ":" in credentials else ("", "", credentials)
    sentinels = []
    for entry in hosts.split(","):
        host, colon, port_text = entry.strip().rpartition(":")
        host = host.strip("[]")
        if not colon or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{url!r}: each sentinel must be HOST:PORT, not {entry!r}")
        sentinels.append((host, int(port_text)))
    service, _, db_text = path.strip("/").partition("/")
    if not service:
        raise ValueError(f"{url!r} names no service: sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB]")
    return RedisAddress(
        sentinels=tuple(sentinels), service=unquote(service), db=_db(db_text or "0", url),
        username=_secret(username), password=_secret(password),
    )


def _db(text: str, url: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{url!r}: the database must be a number, not {text!r}")
    return int(text)


def _secret(value: Optional[str]) -> Optional[str]:
    return unquote(value) if value else None
