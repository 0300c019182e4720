"""
One process's durable store: an SQLite database in WAL mode, through
``twisted.enterprise.adbapi``: two connections on two threads, so that a
history page is read while a group of writes commits (the store writes
one group at a time).  A committed transaction is in the operating
system's hands, so a killed chatd loses nothing it acknowledged
(``synchronous = NORMAL``; a power cut may lose the last groups).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from twisted.enterprise import adbapi

from chatd.storage.durable import Durable, Snapshot, read_snapshot
from chatd.storage.schema import SchemaError, migrate_sqlite


class StoreError(Exception):
    """The store cannot be opened; the message says why."""


def configure(connection: sqlite3.Connection) -> None:
    """Every connection's settings: WAL, and wait for a writer rather than fail."""
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    connection.execute("PRAGMA busy_timeout = 5000")


def load(path: str) -> Snapshot:
    """Migrate the database at ``path`` and read what it keeps."""
    try:
        connection = sqlite3.connect(path)
        try:
            configure(connection)
            migrate_sqlite(connection)
            return read_snapshot(connection.cursor())
        finally:
            connection.close()
    except (sqlite3.Error, SchemaError) as e:
        raise StoreError(f"cannot open {path}: {e}") from None


def open_sqlite(path: str, reactor: Any, **options: Any) -> Durable:
    """The store in the SQLite database at ``path``."""
    pool = adbapi.ConnectionPool(
        "sqlite3", path, check_same_thread=False, cp_min=1, cp_max=2,
        cp_openfun=configure, cp_reactor=reactor)
    return Durable(f"sqlite:{path}", pool, "?", lambda: load(path), reactor, **options)
