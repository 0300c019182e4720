"""
The message log, a part of the durable store: its rows with the next transaction, order, failures that never stop
delivery, schema migrations, and every message found after a restart.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from chatd.errors import StoreUnavailable
from chatd.storage.schema import SQLITE, SchemaError, migrate_sqlite
from chatd.storage.sqlite import StoreError, open_sqlite
from tests.support.clients import two_in_a_room
from tests.test_durable import durable


def message(n: int, body: Any = None) -> dict[str, Any]:
    return {"from": "abcd1234", "body": body if body is not None else f"m{n}",
            "timestamp": "2026-01-01T00:00:00.000Z", "id": n}


def test_log_rows_go_with_the_next_transaction_and_nobody_waits_for_them() -> None:
    store, pool, clock, counts = durable()
    for n in range(1, 4):
        store.record("room0001", "r", message(n))
    assert pool.transactions == []  # nothing written on the delivery path
    clock.advance(0)
    (kind, rows), = pool.transactions[0]
    assert kind == "INSERT many" and [row[2] for row in rows] == [1, 2, 3]
    assert rows[0] == ("room0001", "r", 1, "abcd1234", None, '"m1"', "2026-01-01T00:00:00.000Z", 0, None, None, 0)
    pool.held[0].callback(None)
    assert counts == [("written", 3)]


def test_order_is_kept_while_a_transaction_is_in_flight() -> None:
    store, pool, clock, _ = durable()
    for n in range(1, 4):
        store.record("r1", "r", message(n))
    clock.advance(0)
    for n in range(4, 8):
        store.record("r1", "r", message(n))
    clock.advance(0)
    assert len(pool.transactions) == 1  # the rest waits for it, not beside it
    pool.held[0].callback(None)
    clock.advance(0)
    assert [row[2] for t in pool.transactions for _, rows in t for row in rows] == list(range(1, 8))


def test_a_failing_disk_is_logged_and_counted_and_recording_goes_on() -> None:
    store, pool, clock, counts = durable()
    store.record("r1", "r", message(1))  # never raises into delivery
    clock.advance(0)
    pool.held[0].errback(OSError("database or disk is full"))
    assert counts == [("failed", 1)] and store.problem is not None
    store.record("r1", "r", message(2))
    clock.advance(0)
    pool.held[1].callback(None)
    assert counts == [("failed", 1), ("written", 1)] and store.problem is None


def test_the_log_is_bounded_while_writes_cannot_keep_up() -> None:
    store, pool, clock, counts = durable(max_pending=5)
    for n in range(1, 9):
        store.record("r1", "r", message(n))
    assert sum(n for what, n in counts if what == "dropped") == 3
    clock.advance(0)
    assert [row[2] for row in pool.transactions[0][0][1]] == [4, 5, 6, 7, 8]  # the newest were kept
    with pytest.raises(StoreUnavailable):  # a lasting room's writes are refused instead, never dropped
        for n in range(6):
            store.append("r1", "r", message(n))


def test_migrations_are_versioned_and_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    connection = sqlite3.connect(path)
    assert migrate_sqlite(connection) == len(SQLITE)
    assert migrate_sqlite(connection) == len(SQLITE)  # again: nothing to do
    assert connection.execute("PRAGMA user_version").fetchone() == (len(SQLITE),)
    connection.execute("PRAGMA user_version = 99")
    with pytest.raises(SchemaError, match="schema version 99, newer than this chatd knows"):
        migrate_sqlite(connection)
    connection.close()


def test_an_unopenable_path_is_a_clear_error(tmp_path: Path) -> None:
    from twisted.internet import reactor

    log = open_sqlite(str(tmp_path / "no" / "such" / "dir" / "m.db"), reactor)
    with pytest.raises(StoreError, match="cannot open .*unable to open database file"):
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
    log = open_sqlite(str(tmp_path / "m.db"), reactor, log_keep_days=7, prune_chunk=3,
                      counted=lambda what, n: counts.append((what, n)))
    log.open()  # prunes at once, before anything was written
    assert await log.prune() == 0
    now = reactor.seconds()
    for n, age_days in enumerate([30, 10, 8, 8, 8, 6, 1, 0]):
        log.record("r", "room", {**message(n), "timestamp": timestamp(now - age_days * 86400)})
    await log.synced(force=True)
    assert await log.prune() == 5
    assert counts[-2:] == [("pruned", 3), ("pruned", 2)]
    await log.close()
    connection = sqlite3.connect(tmp_path / "m.db")
    assert [row[0] for row in connection.execute("SELECT body FROM messages ORDER BY seq")] == [
        json.dumps(f"m{n}") for n in (5, 6, 7)]
    connection.close()


@pytest_twisted.ensureDeferred
async def test_beside_a_store_in_memory_the_log_is_its_own_file(tmp_path: Path, daemon_factory) -> None:
    db = tmp_path / "messages.db"
    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--store", "memory",
                           "--message-log", f"sqlite:{db}")
    await chat(await chatd.wait_listening(), "room", ["kept"])
    chatd.signal("TERM")
    assert await chatd.wait_exit() == 0
    connection = sqlite3.connect(db)
    assert connection.execute("SELECT room_name, body, kept FROM messages").fetchall() == [("room", '"kept"', 0)]
    connection.close()


@pytest_twisted.ensureDeferred
async def test_the_daemon_prunes_its_message_log(tmp_path: Path, daemon_factory) -> None:
    db = tmp_path / "messages.db"
    connection = sqlite3.connect(db)
    migrate_sqlite(connection)
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


@pytest_twisted.ensureDeferred
async def test_beside_a_postgresql_store_the_log_keeps_persistent_rooms_messages_too(
        tmp_path: Path, daemon_factory, postgres_server, secret_file) -> None:
    from tests.test_lasting import signed_in

    db = tmp_path / "messages.db"
    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--store", postgres_server.new_database(),
                           "--message-log", f"sqlite:{db}", "--auth", f"jwt:key={secret_file}")
    port = await chatd.wait_listening()
    alice, _ = await signed_in(port, "alice")
    await alice.request({"action": "create", "body": {"name": "Team", "persistent": True}})
    assert (await alice.request({"action": "message", "body": "kept twice"}))["message"] == "Message sent"
    chatd.signal("TERM")
    assert await chatd.wait_exit() == 0
    connection = sqlite3.connect(db)
    assert connection.execute("SELECT room_name, body, kept FROM messages").fetchall() == [
        ("Team", '"kept twice"', 0)]
    connection.close()
