"""
The durable message log: batching, order, failures that never stop
delivery, schema migrations, and every message found after a restart.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from chatd.messagelog import MIGRATIONS, MessageLogError, SQLiteLog, migrate
from tests.support.clients import two_in_a_room


def message(n: int, body: Any = None) -> dict[str, Any]:
    return {"from": "abcd1234", "body": body if body is not None else f"m{n}",
            "timestamp": "2026-01-01T00:00:00.000Z", "id": n}


class FakePool:
    """runInteraction against a list, or failing, or held until released."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.failing = False
        self.held: list[Deferred] = []
        self.hold = False

    def runInteraction(self, interaction: Any, batch: list[tuple]) -> Deferred:
        if self.failing:
            return fail(OSError("database or disk is full"))
        if self.hold:
            d: Deferred = Deferred()
            d.addCallback(lambda _: self.rows.extend(batch))
            self.held.append(d)
            return d
        self.rows.extend(batch)
        return succeed(None)

    def close(self) -> None:
        pass


def opened(tmp_path: Path, pool: FakePool, **kw: Any) -> tuple[SQLiteLog, Clock, list]:
    clock = Clock()
    counts: list[tuple[str, int]] = []
    log = SQLiteLog(str(tmp_path / "m.db"), clock, counted=lambda what, n: counts.append((what, n)),
                    pool=pool, **kw)
    log.open()
    return log, clock, counts


def test_messages_are_written_in_batches_on_the_flush_interval(tmp_path: Path) -> None:
    pool = FakePool()
    log, clock, counts = opened(tmp_path, pool, flush_interval=0.2, batch_size=100)
    for n in range(1, 4):
        log.record("room0001", "r", message(n))
    assert pool.rows == []  # nothing written on the delivery path
    clock.advance(0.2)
    assert [row[2] for row in pool.rows] == [1, 2, 3]
    assert pool.rows[0] == ("room0001", "r", 1, "abcd1234", None, '"m1"', "2026-01-01T00:00:00.000Z", 0, None)
    assert counts == [("written", 3)]


def test_a_full_batch_is_written_at_once_and_order_is_kept_while_one_is_in_flight(tmp_path: Path) -> None:
    pool = FakePool()
    pool.hold = True
    log, clock, counts = opened(tmp_path, pool, batch_size=3)
    for n in range(1, 8):
        log.record("r1", "r", message(n))
    # The first batch is in flight; the rest waits for it, not beside it.
    assert len(pool.held) == 1
    pool.held[0].callback(None)
    assert len(pool.held) == 2  # what queued meanwhile (4 rows) followed at once
    pool.held[1].callback(None)
    clock.advance(0.2)
    assert len(pool.held) == 2  # nothing left to write
    assert [row[2] for row in pool.rows] == list(range(1, 8))


def test_a_failing_disk_is_logged_and_counted_and_recording_goes_on(tmp_path: Path) -> None:
    pool = FakePool()
    log, clock, counts = opened(tmp_path, pool)
    pool.failing = True
    log.record("r1", "r", message(1))  # never raises into delivery
    clock.advance(0.2)
    assert counts == [("failed", 1)]
    pool.failing = False
    log.record("r1", "r", message(2))
    clock.advance(0.2)
    assert counts == [("failed", 1), ("written", 1)]
    assert [row[2] for row in pool.rows] == [2]


def test_the_queue_is_bounded_while_writes_cannot_keep_up(tmp_path: Path) -> None:
    pool = FakePool()
    pool.hold = True
    log, clock, counts = opened(tmp_path, pool, batch_size=1000, max_pending=5)
    for n in range(1, 9):
        log.record("r1", "r", message(n))
    assert ("dropped", 1) in counts and sum(n for what, n in counts if what == "dropped") == 3
    clock.advance(0.2)
    pool.held[0].callback(None)
    assert [row[2] for row in pool.rows] == [4, 5, 6, 7, 8]  # the newest were kept


def test_migrations_are_versioned_and_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    connection = sqlite3.connect(path)
    assert migrate(connection) == len(MIGRATIONS)
    assert migrate(connection) == len(MIGRATIONS)  # again: nothing to do
    assert connection.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
    connection.execute("PRAGMA user_version = 99")
    with pytest.raises(MessageLogError, match="schema version 99, newer than this chatd knows"):
        migrate(connection)
    connection.close()


def test_an_unopenable_path_is_a_clear_error(tmp_path: Path) -> None:
    log = SQLiteLog(str(tmp_path / "no" / "such" / "dir" / "m.db"), Clock())
    with pytest.raises(MessageLogError, match="cannot open .*unable to open database file"):
        log.open()


async def chat(port: int, room: str, bodies: list[Any]) -> None:
    a, _, b = await two_in_a_room(port, room)
    for body in bodies:
        await a.request({"action": "message", "body": body})
    await a.close()
    await b.close()


@pytest_twisted.ensureDeferred
async def test_every_message_is_in_the_database_after_a_restart(tmp_path: Path, daemon_factory) -> None:
    db = tmp_path / "messages.db"
    first = [f"first run {i}" for i in range(250)] + [{"custom": ["json", 1]}]
    second = [f"second run {i}" for i in range(40)]
    for room, bodies in (("one", first), ("two", second)):
        chatd = daemon_factory(
            "--listen", "tcp:0:interface=127.0.0.1", "--message-log", f"sqlite:{db}",
            "--rate-messages", "0",
        )
        await chat(await chatd.wait_listening(), room, bodies)
        chatd.signal("TERM")  # the queue is flushed before exit
        assert await chatd.wait_exit() == 0
    connection = sqlite3.connect(db)
    rows = connection.execute(
        "SELECT room_name, message_id, body FROM messages ORDER BY seq").fetchall()
    connection.close()
    assert [(name, json.loads(body)) for name, _, body in rows] == (
        [("one", b) for b in first] + [("two", b) for b in second]
    )
    assert [mid for name, mid, _ in rows if name == "one"] == list(range(1, len(first) + 1))


@pytest_twisted.ensureDeferred
async def test_an_unopenable_message_log_stops_startup(tmp_path: Path, daemon_factory) -> None:
    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1",
                        "--message-log", f"sqlite:{tmp_path}/missing/dir/m.db")
    assert await chatd.wait_exit() != 0
    assert b"chatd: the store: cannot open" in chatd.output
    assert b"starting on" not in chatd.output



@pytest_twisted.ensureDeferred
async def test_retention_deletes_old_messages_a_chunk_at_a_time(tmp_path: Path) -> None:
    from twisted.internet import reactor

    from chatd.codec import timestamp

    counts: list[tuple[str, int]] = []
    log = SQLiteLog(str(tmp_path / "m.db"), reactor, keep_days=7, prune_chunk=3, prune_interval=3600,
                    counted=lambda what, n: counts.append((what, n)))
    now = reactor.seconds()
    for n, age_days in enumerate([30, 10, 8, 8, 8, 6, 1, 0]):
        log.record("r", "room", {**message(n), "timestamp": timestamp(now - age_days * 86400)})
    log.open()  # prunes at once, before anything was written
    await log.flush()
    assert await log.prune() == 5
    assert counts[-2:] == [("pruned", 3), ("pruned", 2)]
    await log.close()
    connection = sqlite3.connect(tmp_path / "m.db")
    assert [row[0] for row in connection.execute("SELECT body FROM messages ORDER BY seq")] == [
        json.dumps(f"m{n}") for n in (5, 6, 7)]
    connection.close()


@pytest_twisted.ensureDeferred
async def test_the_daemon_prunes_its_message_log(tmp_path: Path, daemon_factory) -> None:
    db = tmp_path / "messages.db"
    connection = sqlite3.connect(db)
    migrate(connection)
    with connection:
        connection.executemany(
            "INSERT INTO messages (room_id, room_name, message_id, client_id, body, timestamp)"
            " VALUES ('r', 'old', ?, 'abcd1234', '\"old\"', '2020-01-01T00:00:00.000Z')", [(i,) for i in range(50)])
    connection.close()
    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--message-log", f"sqlite:{db}",
                           "--message-log-keep", "30")
    await chat(await chatd.wait_listening(), "new", ["fresh"])
    await chatd.wait_for(rb"Pruned 50 messages older than", "the pruning")
    chatd.signal("TERM")
    assert await chatd.wait_exit() == 0
    connection = sqlite3.connect(db)
    assert connection.execute("SELECT room_name, body FROM messages").fetchall() == [("new", '"fresh"')]
    connection.close()
