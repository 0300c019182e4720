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
    """Where Redis is: from ``redis://[[user]:password@]host[:port][/db]``
    or ``unix:///path/to/redis.sock[?db=N]``."""

    host: Optional[str] = None
    port: int = 6379
    path: Optional[str] = None
    db: int = 0
    username: Optional[str] = None
    password: Optional[str] = None

    def __str__(self) -> str:
        where = f"unix://{self.path}" if self.path else f"redis://{self.host}:{self.port}"
        return f"{where}/{self.db}"


def parse_url(url: str) -> RedisAddress:
    """A Redis URL, checked; ValueError says what is wrong with it."""
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
        raise ValueError(f"{url!r} must start with redis:// or unix://")
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host")
    db_text = parts.path.lstrip("/") or "0"
    return RedisAddress(
        host=parts.hostname, port=port or 6379, db=_db(db_text, url),
        username=_secret(parts.username), password=_secret(parts.password),
    )


def _db(text: str, url: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{url!r}: the database must be a number, not {text!r}")
    return int(text)


def _secret(value: Optional[str]) -> Optional[str]:
    return unquote(value) if value else None
