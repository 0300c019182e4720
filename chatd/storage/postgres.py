"""
A cluster's durable store: PostgreSQL through ``twisted.enterprise.adbapi``
over psycopg (as Synapse reaches it), a few connections on their own
threads.  Every node of a cluster shares it; the schema is migrated under
an advisory lock, so nodes that start together migrate once.
"""

from __future__ import annotations

from typing import Any

from twisted.enterprise import adbapi

from chatd.storage.durable import MESSAGE_COLUMNS, Durable, Snapshot, read_snapshot
from chatd.storage.schema import SchemaError, migrate_postgresql
from chatd.storage.sqlite import StoreError

#: Seconds to wait for the server to accept a connection, and for a statement.
CONNECT_TIMEOUT = 5
STATEMENT_TIMEOUT_MS = 10_000


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - a dependency of chatd
        raise StoreError("PostgreSQL needs psycopg (pip install 'psycopg[binary]')") from None
    return psycopg


def _connect(url: str) -> Any:
    psycopg = _psycopg()
    return psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT,
                           options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}")


def load(url: str) -> Snapshot:
    """Migrate the database at ``url`` and read what it keeps."""
    psycopg = _psycopg()
    try:
        with _connect(url) as connection:
            migrate_postgresql(connection)
            with connection.transaction():
                return read_snapshot(connection.cursor(), "%s")
    except (psycopg.Error, SchemaError) as e:
        raise StoreError(f"cannot open {safe(url)}: {str(e).strip()}") from None


_COPY = f"COPY messages ({MESSAGE_COLUMNS}) FROM STDIN"


def copy_rows(cursor: Any, rows: list[tuple[Any, ...]]) -> None:
    """Message rows in one COPY: a third of an executemany's work per row
    in the server's thread and two thirds of it in PostgreSQL (measured
    with rows of 50; docs/performance.md)."""
    with cursor.copy(_COPY) as copy:
        for row in rows:
            copy.write_row(row)


def safe(url: str) -> str:
    """The URL without its password, for logs and errors."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"


def open_postgresql(url: str, reactor: Any, **options: Any) -> Durable:
    """The store in the PostgreSQL database at ``url``."""
    _psycopg()
    pool = adbapi.ConnectionPool(
        "psycopg", url, connect_timeout=CONNECT_TIMEOUT,
        options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
        cp_min=1, cp_max=4, cp_reconnect=True, cp_reactor=reactor)
    return Durable(safe(url), pool, "%s", lambda: load(url), reactor, bulk=copy_rows, **options)
