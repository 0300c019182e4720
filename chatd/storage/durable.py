"""
The durable store: what a lasting room *is* (its name, owner, moderators,
privacy, invitations and bans), who its members are and how far each has
read, and its messages; one interface over SQLite (one process) and
PostgreSQL (several), reached through ``twisted.enterprise.adbapi``, so the
reactor never waits on a disk or a network.

Writes are queued in order and written in one transaction per reactor
iteration (group commit): each write is cheap to ask for, and whoever must
not answer before it is kept (a message's sender, an owner's action)
waits on :meth:`Durable.synced`, which fires once everything asked for
until then is committed.  One transaction is in flight at a time, so the
rows keep their order.  A failed transaction fails its waiters with
:class:`~chatd.errors.StoreUnavailable`, is logged and counted, and makes
:attr:`Durable.problem` say why until a later one commits; nothing is
retried behind the waiters' backs.  At most ``max_pending`` writes wait:
past that, new ones are refused at once (a stalled database must not take
the memory).

Reads (a history page, unread counts) run beside the writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from twisted.internet.defer import Deferred, DeferredLock, fail, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from chatd.errors import StoreUnavailable, StoreUnreadable
from chatd.replies import timestamp

#: Seconds between checks of a store that failed to write, until it answers.
PROBE_INTERVAL = 5.0

#: A statement and its parameters, written with ``?`` placeholders.
Write = tuple[str, tuple[Any, ...]]


class _Messages:
    """Lasting rooms' messages asked for one after another: written with
    one ``executemany``, and each room's last id once."""

    __slots__ = ("rows", "last_ids")

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self.last_ids: dict[str, int] = {}


@dataclass
class StoredRoom:
    """A lasting room as the store keeps it."""

    room_id: str
    name: str
    created_at: str
    created_by: str
    seq: int
    private: bool
    owner: str
    last_id: int = 0
    declared: Optional[str] = None
    lists_v: int = 0  # the room's version its roles and lists were last written at (a cluster's)
    moderators: set[str] = field(default_factory=set)
    invited: set[str] = field(default_factory=set)
    banned: set[str] = field(default_factory=set)


@dataclass
class Snapshot:
    """Everything the store keeps but the messages, as read at start-up."""

    rooms: list[StoredRoom] = field(default_factory=list)
    # By user: the rooms they are members of, and the last id they read there.
    memberships: dict[str, dict[str, int]] = field(default_factory=dict)


#: The fewest message rows written with ``bulk`` (a COPY's own round trips
#: cost more than a few INSERTs sent together).
BULK_ROWS = 8

#: The columns of a message row (message_row), in order.
MESSAGE_COLUMNS = ("room_id, room_name, message_id, client_id, nick, body, timestamp, direct, recipient,"
                   " user_name, kept")
_INSERT_MESSAGE = f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_LAST_ID = "UPDATE rooms SET last_id = ? WHERE room_id = ? AND last_id < ?"
_COLUMNS = "message_id, client_id, nick, user_name, body, timestamp"


def message_row(room_id: str, room_name: str, message: dict[str, Any], kept: bool) -> tuple[Any, ...]:
    """A broadcast (or a direct message) as a row of ``messages``."""
    return (
        room_id, room_name, message.get("id", 0), message["from"], message.get("nick"),
        json.dumps(message["body"]), message["timestamp"], 1 if message.get("direct") else 0,
        message.get("to"), message.get("user"), 1 if kept else 0,
    )


def _message(row: tuple[Any, ...]) -> dict[str, Any]:
    """A row of ``messages`` as the broadcast it was."""
    message_id, client_id, nick, user, body, at = row
    message: dict[str, Any] = {"from": client_id, "body": json.loads(body), "timestamp": at, "id": message_id}
    if nick is not None:
        message["nick"] = nick
    if user is not None:
        message["user"] = user
    return message


class Durable:
    """
    :param pool: an adbapi ``ConnectionPool`` for the database.
    :param placeholder: the database's parameter marker (``?`` or ``%s``).
    :param load: reads the :class:`Snapshot` (and migrates) synchronously,
        before chatd listens.
    :param counted: told ``"written"``, ``"failed"``, ``"refused"`` or
        ``"pruned"`` with a number of rows, for the metrics.
    """

    _log = Logger()

    def __init__(
        self, name: str, pool: Any, placeholder: str, load: Callable[[], Snapshot], reactor: Any,
        counted: Callable[[str, int], None] = lambda what, rows: None,
        max_pending: int = 100_000, keep_days: Optional[float] = None, log_keep_days: Optional[float] = None,
        prune_interval: float = 3600.0, prune_chunk: int = 10_000,
        bulk: Optional[Callable[[Any, list[tuple[Any, ...]]], None]] = None,
    ) -> None:
        self.name = name  # what the logs and /readyz call it: "sqlite:PATH", "postgresql://..."
        self._pool = pool
        self._placeholder = placeholder
        self._load = load
        self.reactor = reactor
        self._counted = counted
        self.max_pending = max_pending
        self.keep_days = keep_days
        self.log_keep_days = log_keep_days
        self.prune_chunk = prune_chunk
        # Writes many rows of ``messages`` at once (PostgreSQL's COPY);
        # None: an executemany of INSERTs.
        self._bulk = bulk
        self._queue: list[Union[Write, _Messages]] = []
        self._waiters: list[Deferred[None]] = []  # for what is queued
        self._in_flight: Optional[list[Deferred[None]]] = None  # for what is being written
        self._scheduled: Any = None
        self._log_rows: list[tuple[Any, ...]] = []  # the message log's (not waited for)
        #: How many writes were ever asked for (whoever asks compares it
        #: before and after, to know whether to wait for :meth:`synced`).
        self.asked = 0
        #: How many transactions were begun: what is asked for while it
        #: stays the same is written in one.
        self.generation = 0
        self._pending = 0  # writes queued, not yet begun
        self._probe: Any = None  # the next check of a failing store
        #: Why the store cannot write (None: it can), for /readyz and the logs.
        self.problem: Optional[str] = None
        self._prune = LoopingCall(self.prune)
        self._prune.clock = reactor
        self._prune_interval = prune_interval
        self._pruning = DeferredLock()

    # -- start and stop ------------------------------------------------------

    def open(self) -> Snapshot:
        """Migrate and read what is kept: call before listening."""
        snapshot = self._load()
        if self.keep_days is not None or self.log_keep_days is not None:
            self._prune.start(self._prune_interval, now=True)
        return snapshot

    async def close(self) -> None:
        """Write everything queued, then close the database."""
        if self._prune.running:
            self._prune.stop()
        if self._probe is not None and self._probe.active():
            self._probe.cancel()
        self._probe = None
        await self._pruning.acquire()  # a pruning under way ends first
        self._pruning.release()
        while self._queue or self._log_rows or self._in_flight is not None:
            try:
                await self.synced(force=True)
            except StoreUnavailable:
                break
        self._pool.close()

    # -- writes ----------------------------------------------------------------

    def write(self, statement: str, *parameters: Any) -> None:
        """Queue one statement; it is written with the next group."""
        self._take_one()
        self._queue.append((statement, parameters))
        self._schedule()

    def delete_room(self, room_id: str) -> None:
        """Queue the deletion of a lasting room and everything kept of it
        (its messages, memberships, lists and roles)."""
        for table in ("messages", "memberships", "room_lists", "room_moderators", "rooms"):
            condition = " AND kept = 1" if table == "messages" else ""
            self.write(f"DELETE FROM {table} WHERE room_id = ?{condition}", room_id)

    def record(self, room_id: str, room_name: str, message: dict[str, Any]) -> None:
        """The message log: keep a broadcast or a direct message (not a
        lasting room's, which :meth:`append` keeps), with the next group;
        nobody waits for it, and past ``max_pending`` the oldest go."""
        self._log_rows.append(message_row(room_id, room_name, message, False))
        if len(self._log_rows) > self.max_pending:
            excess = len(self._log_rows) - self.max_pending
            del self._log_rows[:excess]
            self._counted("dropped", excess)
        self._schedule()

    def append(self, room_id: str, room_name: str, message: dict[str, Any]) -> None:
        """Keep a lasting room's message, and its id as the room's last."""
        self._take_one()
        queue = self._queue
        group = queue[-1] if queue else None
        if not isinstance(group, _Messages):
            group = _Messages()
            queue.append(group)
        group.rows.append(message_row(room_id, room_name, message, True))
        group.last_ids[room_id] = message["id"]
        self._schedule()

    def _take_one(self) -> None:
        """Count one more write waiting, or refuse it past ``max_pending``."""
        if self._pending >= self.max_pending:
            self._counted("refused", 1)
            raise StoreUnavailable()
        self._pending += 1
        self.asked += 1

    def synced(self, force: bool = False) -> "Deferred[None]":
        """Fires once everything asked for so far is committed; fails with
        StoreUnavailable if it could not be."""
        if not self._queue and not (force and self._log_rows):
            if self._in_flight is None:
                return succeed(None)
            d: Deferred[None] = Deferred()
            self._in_flight.append(d)
            return d
        d = Deferred()
        self._waiters.append(d)
        return d

    def _schedule(self) -> None:
        if self._scheduled is None and self._in_flight is None:
            # The end of this reactor iteration: whatever else this
            # iteration asks for is written in the same transaction.
            self._scheduled = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._scheduled = None
        if self._in_flight is not None or not (self._queue or self._log_rows):
            return
        self.generation += 1
        self._pending = 0
        batch, self._queue = self._queue, []
        log_rows, self._log_rows = self._log_rows, []
        waiters, self._waiters = self._waiters, []
        self._in_flight = waiters
        rows = sum(len(item.rows) if isinstance(item, _Messages) else 1 for item in batch) + len(log_rows)
        d = self._pool.runInteraction(self._transaction, batch, log_rows)
        d.addCallbacks(self._committed, self._failed, (rows,), errbackArgs=(rows,))

    def _transaction(
        self, cursor: Any, batch: "list[Union[Write, _Messages]]", log_rows: list[tuple[Any, ...]],
    ) -> None:
        mark = self._placeholder
        insert = _INSERT_MESSAGE if mark == "?" else _INSERT_MESSAGE.replace("?", mark)
        last_id = _LAST_ID if mark == "?" else _LAST_ID.replace("?", mark)
        bulk = self._bulk
        for item in batch:
            if isinstance(item, _Messages):
                if bulk is not None and len(item.rows) >= BULK_ROWS:
                    bulk(cursor, item.rows)
                else:
                    cursor.executemany(insert, item.rows)
                cursor.executemany(last_id, [(i, room_id, i) for room_id, i in item.last_ids.items()])
            else:
                statement, parameters = item
                cursor.execute(statement if mark == "?" else statement.replace("?", mark), parameters)
        if log_rows:
            if bulk is not None and len(log_rows) >= BULK_ROWS:
                bulk(cursor, log_rows)
            else:
                cursor.executemany(insert, log_rows)

    def _committed(self, _: Any, rows: int) -> None:
        if self.problem is not None:
            self._log.info("The store {name} writes again", name=self.name, event="store_recovered")
            self.problem = None
        self._counted("written", rows)
        self._done(None)

    def _trouble(self, problem: str) -> None:
        """The store fails: reported (``problem``, for /readyz) until it
        answers again."""
        self.problem = problem
        if self._probe is None:
            # Asked again every few seconds, so that a server nobody writes
            # to is not reported unready after the database came back.
            self._probe = self.reactor.callLater(PROBE_INTERVAL, self._check)

    def _failed(self, failure: Any, rows: int) -> None:
        self._trouble(f"the store cannot write: {failure.getErrorMessage()}")
        self._log.failure("Could not write {rows} rows to the store {name}", failure, rows=rows,
                          name=self.name, event="store_failure")
        self._counted("failed", rows)
        self._done(StoreUnavailable())

    def _done(self, error: Optional[Exception]) -> None:
        waiters, self._in_flight = self._in_flight or [], None
        if self._queue or self._log_rows:
            self._schedule()
        for d in waiters:
            if error is None:
                d.callback(None)
            else:
                d.errback(error)

    def _check(self) -> None:
        self._probe = None
        if self.problem is None:
            return

        def answered(_: Any) -> None:
            if self.problem is not None and self._in_flight is None:
                self._log.info("The store {name} answers again", name=self.name, event="store_recovered")
                self.problem = None

        def still(_: Any) -> None:
            if self.problem is not None and self._probe is None:
                self._probe = self.reactor.callLater(PROBE_INTERVAL, self._check)

        self._run_query("SELECT 1").addCallbacks(answered, still)

    # -- reads -----------------------------------------------------------------

    def _run_query(self, sql: str, *parameters: Any) -> "Deferred[list[Any]]":
        mark = self._placeholder
        try:
            return self._pool.runQuery(sql if mark == "?" else sql.replace("?", mark), parameters)
        except Exception as e:  # a closed pool
            return fail(e)

    def _read(self, d: "Deferred[Any]") -> "Deferred[Any]":
        """A read's failure as StoreUnreadable (a client's error); logged
        and reported when it is news, not once per client's request."""

        def failed(failure: Any) -> None:
            if self.problem is None:
                self._trouble(f"the store cannot be read: {failure.getErrorMessage()}")
                self._log.failure("Could not read the store {name}", failure, name=self.name,
                                  event="store_failure")
            raise StoreUnreadable()

        return d.addErrback(failed)

    def query(self, sql: str, *parameters: Any) -> "Deferred[list[Any]]":
        """Rows of one read (``?`` marks the parameters, whatever the
        database); fails with StoreUnreadable."""
        return self._read(self._run_query(sql, *parameters))

    def rooms(self, where: str = "", *parameters: Any, limit: Optional[int] = None) -> "Deferred[list[StoredRoom]]":
        """The lasting rooms ``where`` picks (a condition on ``rooms``, ``?``
        marking its parameters; the first ``limit``), with their roles and lists."""
        try:
            d = self._pool.runInteraction(read_rooms, self._placeholder, where, parameters, limit)
        except Exception as e:  # a closed pool
            d = fail(e)
        return self._read(d)

    def history(
        self, room_id: str, limit: int, before: Optional[int], after: Optional[int] = None,
    ) -> "Deferred[list[dict[str, Any]]]":
        """At most ``limit`` of a lasting room's kept messages with ids below
        ``before`` (and above ``after``), oldest first: the latest ones
        (``after`` None), or the first ones after ``after``."""
        where = "room_id = ? AND kept = 1"
        parameters: list[Any] = [room_id]
        if before is not None:
            where += " AND message_id < ?"
            parameters.append(before)
        if after is not None:
            where += " AND message_id > ?"
            parameters.append(after)
        order = "DESC" if after is None else "ASC"
        d = self.query(
            f"SELECT {_COLUMNS} FROM messages WHERE {where} ORDER BY message_id {order} LIMIT ?",
            *parameters, limit)

        def decoded(rows: list[Any]) -> list[dict[str, Any]]:
            messages = [_message(tuple(row)) for row in rows]
            return messages if after is not None else messages[::-1]

        return d.addCallback(decoded)

    def unread(self, user: str, markers: dict[str, int]) -> "Deferred[dict[str, int]]":
        """By room: how many messages others sent after ``user``'s marker."""
        if not markers:
            return succeed({})
        clauses = " OR ".join("(room_id = ? AND message_id > ?)" for _ in markers)
        parameters: list[Any] = [p for room_id, last_read in markers.items() for p in (room_id, last_read)]
        d = self.query(
            f"SELECT room_id, COUNT(*) FROM messages WHERE kept = 1 AND ({clauses})"
            " AND (user_name IS NULL OR user_name <> ?) GROUP BY room_id", *parameters, user)
        return d.addCallback(lambda rows: {room_id: int(count) for room_id, count in rows})

    # -- retention ---------------------------------------------------------------

    def prune(self) -> "Deferred[int]":
        """Delete the lasting rooms' messages older than ``keep_days``, and
        the message log's older than ``log_keep_days``, a chunk per
        transaction; fires with how many went.  One pruning at a time: a
        call during one prunes after it."""
        return self._pruning.run(lambda: Deferred.fromCoroutine(self._prune_all()))

    async def _prune_all(self) -> int:
        pruned = 0
        now = self.reactor.seconds()
        for kept, days, what in ((1, self.keep_days, "persistent rooms"), (0, self.log_keep_days, "the message log")):
            if days is None:
                continue
            cutoff = timestamp(now - days * 86400)
            count = await self._prune_before(kept, cutoff)
            if count:
                self._log.info("Pruned {rows} messages older than {cutoff} from {what}",
                               rows=count, cutoff=cutoff, what=what, event="store_pruned")
            pruned += count
        return pruned

    async def _prune_before(self, kept: int, cutoff: str) -> int:
        pruned = 0
        while True:
            try:
                count = await self._pool.runInteraction(self._delete_before, kept, cutoff)
            except Exception:
                self._log.failure("Could not prune the store {name}", name=self.name, event="store_failure")
                return pruned
            pruned += count
            if count:
                self._counted("pruned", count)
            if count < self.prune_chunk:
                return pruned

    def _delete_before(self, cursor: Any, kept: int, cutoff: str) -> int:
        sql = ("DELETE FROM messages WHERE seq IN"
               " (SELECT seq FROM messages WHERE kept = ? AND timestamp < ? LIMIT ?)")
        mark = self._placeholder
        cursor.execute(sql if mark == "?" else sql.replace("?", mark), (kept, cutoff, self.prune_chunk))
        return int(cursor.rowcount)


def read_rooms(
    cursor: Any, mark: str = "?", where: str = "", parameters: tuple[Any, ...] = (), limit: Optional[int] = None,
) -> list[StoredRoom]:
    """The lasting rooms ``where`` picks (all: ""), in creation order (the
    first ``limit``), with their roles and lists."""
    rooms: dict[str, StoredRoom] = {}
    condition = f" WHERE {where}" if where else ""
    first = f" LIMIT {int(limit)}" if limit is not None else ""
    cursor.execute(
        ("SELECT room_id, name, created_at, created_by, seq, private, owner, last_id, declared, lists_v"
         f" FROM rooms{condition} ORDER BY seq{first}").replace("?", mark), parameters)
    for room_id, name, created_at, created_by, seq, private, owner, last_id, declared, lists_v in cursor.fetchall():
        rooms[room_id] = StoredRoom(room_id, name, created_at, created_by, int(seq), bool(private), owner,
                                    int(last_id), declared, int(lists_v))
    if not rooms:
        return []
    # Every room's lists, or those of the few picked.
    ids = list(rooms) if where else []
    only = f" WHERE room_id IN ({', '.join(mark for _ in ids)})" if ids else ""
    cursor.execute(f"SELECT room_id, user_name FROM room_moderators{only}", ids)
    for room_id, user in cursor.fetchall():
        if room_id in rooms:
            rooms[room_id].moderators.add(user)
    cursor.execute(f"SELECT room_id, list, entry FROM room_lists{only}", ids)
    for room_id, which, entry in cursor.fetchall():
        if room_id in rooms:
            (rooms[room_id].invited if which == "invited" else rooms[room_id].banned).add(entry)
    return list(rooms.values())


def read_snapshot(cursor: Any, mark: str = "?") -> Snapshot:
    """Every lasting room, its roles and lists, and every membership."""
    snapshot = Snapshot(read_rooms(cursor, mark))
    known = {room.room_id for room in snapshot.rooms}
    cursor.execute("SELECT room_id, user_name, last_read FROM memberships")
    for room_id, user, last_read in cursor.fetchall():
        if room_id in known:
            snapshot.memberships.setdefault(user, {})[room_id] = int(last_read)
    return snapshot
