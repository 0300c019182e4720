"""
The durable message log: ``--message-log sqlite:PATH`` keeps every chat
message that was broadcast, for anyone who wants to keep their chats.

Writing never blocks or reorders delivery: messages are queued in memory
and written in batches on a thread (``twisted.enterprise.adbapi``), one
batch at a time so the rows keep their order.  If a write fails (a full or
broken disk), the batch is logged, counted and dropped, and delivery goes
on; if writes keep failing, the oldest queued rows are dropped past
``max_pending`` so memory stays bounded.  With ``keep_days``, messages
older than that are deleted, a chunk at a time on the same thread, between
the batches, at start-up and then every ``prune_interval`` seconds.

The schema is versioned (``PRAGMA user_version``); migrations run at
start-up, before chatd listens, so a bad path stops start-up with a message.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Callable, Optional

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from chatd.codec import timestamp
from chatd.storage.schema import SQLITE, SchemaError, migrate_sqlite

#: The log's schema is the durable store's (a log's database can become a
#: store's, and the other way round).
MIGRATIONS = SQLITE

_INSERT = (
    "INSERT INTO messages (room_id, room_name, message_id, client_id, nick, body, timestamp, direct, recipient)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

Row = tuple[str, str, int, str, Optional[str], str, str, int, Optional[str]]


class MessageLogError(Exception):
    """The log cannot be opened; the message says why."""


def migrate(connection: sqlite3.Connection) -> int:
    """Bring the schema up to date; the version it is now at."""
    try:
        return migrate_sqlite(connection)
    except SchemaError as e:
        raise MessageLogError(str(e)) from None


def _configure(connection: sqlite3.Connection) -> None:
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")


class SQLiteLog:
    """
    :param counted: told ``"written"``, ``"failed"`` or ``"dropped"`` with a
        number of rows, for the metrics.
    """

    _log = Logger()

    def __init__(
        self,
        path: str,
        reactor: Any,
        flush_interval: float = 0.2,
        batch_size: int = 500,
        max_pending: int = 100_000,
        counted: Callable[[str, int], None] = lambda what, rows: None,
        pool: Any = None,
        keep_days: Optional[float] = None,
        prune_interval: float = 3600.0,
        prune_chunk: int = 10_000,
    ) -> None:
        self.path = path
        self.reactor = reactor
        self.batch_size = batch_size
        self.max_pending = max_pending
        self._counted = counted
        self._pool = pool
        self._pending: list[Row] = []
        self._writing: Optional[Deferred[None]] = None
        self._loop = LoopingCall(self.flush)
        self._loop.clock = reactor
        self._flush_interval = flush_interval
        self.keep_days = keep_days
        self.prune_chunk = prune_chunk
        self._pruning: Optional[Deferred[int]] = None
        self._prune_loop = LoopingCall(self.prune)
        self._prune_loop.clock = reactor
        self._prune_interval = prune_interval

    def open(self) -> None:
        """Create or migrate the schema, synchronously: call before listening."""
        try:
            connection = sqlite3.connect(self.path)
            try:
                _configure(connection)
                migrate(connection)
            finally:
                connection.close()
        except sqlite3.Error as e:
            raise MessageLogError(f"cannot open {self.path}: {e}") from None
        if self._pool is None:
            # One connection, one thread: batches are written in order.
            self._pool = adbapi.ConnectionPool(
                "sqlite3", self.path, check_same_thread=False,
                cp_min=1, cp_max=1, cp_openfun=_configure, cp_reactor=self.reactor,
            )
        self._loop.start(self._flush_interval, now=False)
        if self.keep_days is not None:
            self._prune_loop.start(self._prune_interval, now=True)

    def prune(self) -> "Deferred[int]":
        """
        Delete the messages older than ``keep_days``, ``prune_chunk`` rows
        per transaction (the batches of new rows go in between); fires with
        how many went.  One pruning at a time.
        """
        if self._pruning is not None:
            return self._pruning
        assert self.keep_days is not None
        cutoff = timestamp(self.reactor.seconds() - self.keep_days * 86400)
        d = self._pruning = Deferred.fromCoroutine(self._prune(cutoff))

        def done(result: Any) -> Any:
            self._pruning = None
            return result

        return d.addBoth(done)

    async def _prune(self, cutoff: str) -> int:
        pruned = 0
        while True:
            try:
                count = await self._pool.runInteraction(_delete_before, cutoff, self.prune_chunk)
            except Exception:
                self._log.failure("Could not prune the message log {path}", path=self.path,
                                  event="message_log_failure")
                return pruned
            pruned += count
            if count:
                self._counted("pruned", count)
            if count < self.prune_chunk:
                if pruned:
                    self._log.info(
                        "Pruned {rows} messages older than {cutoff} from the message log",
                        rows=pruned, cutoff=cutoff, event="message_log_pruned")
                return pruned

    def record(self, room_id: str, room_name: str, message: dict[str, Any]) -> None:
        """Queue one broadcast message; it is written within a flush interval."""
        self._pending.append((
            room_id, room_name, message.get("id", 0), message["from"], message.get("nick"),
            json.dumps(message["body"]), message["timestamp"],
            1 if message.get("direct") else 0, message.get("to"),
        ))
        if len(self._pending) > self.max_pending:
            excess = len(self._pending) - self.max_pending
            del self._pending[:excess]
            self._counted("dropped", excess)
        if len(self._pending) >= self.batch_size:
            self.flush()

    def flush(self) -> "Deferred[None]":
        """Write what is queued, unless a write is under way (it follows that)."""
        if self._writing is not None or not self._pending:
            return self._writing if self._writing is not None else succeed(None)
        batch, self._pending = self._pending, []
        d: Deferred[None] = self._pool.runInteraction(_insert, batch)
        d.addCallback(lambda _: self._counted("written", len(batch)))
        d.addErrback(self._failed, len(batch))
        self._writing = d

        def done(result: None) -> None:
            self._writing = None
            if len(self._pending) >= self.batch_size:
                self.flush()

        d.addBoth(done)
        return d

    def _failed(self, failure: Any, rows: int) -> None:
        self._log.failure(
            "Could not write {rows} messages to the message log {path}; delivery goes on",
            failure, rows=rows, path=self.path, event="message_log_failure",
        )
        self._counted("failed", rows)

    async def close(self) -> None:
        """Write everything still queued, then close the database."""
        if self._loop.running:
            self._loop.stop()
        if self._prune_loop.running:
            self._prune_loop.stop()
        if self._pruning is not None:
            await self._pruning
        while self._writing is not None or self._pending:
            await (self._writing if self._writing is not None else self.flush())
        if self._pool is not None:
            self._pool.close()


def _insert(transaction: Any, batch: list[Row]) -> None:
    transaction.executemany(_INSERT, batch)


def _delete_before(transaction: Any, cutoff: str, limit: int) -> int:
    transaction.execute(
        "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages WHERE timestamp < ? LIMIT ?)",
        (cutoff, limit))
    return int(transaction.rowcount)
