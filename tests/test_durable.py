"""
The durable store's writing: one transaction per reactor iteration (group
commit), one in flight at a time and in order, answers only once committed,
a failing database reported and survived, and a bound on what may wait.
Then the same against a real SQLite file: what is kept is read back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from chatd.errors import StoreUnavailable
from chatd.storage.durable import Durable, Snapshot
from chatd.storage.sqlite import open_sqlite


class Cursor:
    def __init__(self) -> None:
        self.statements: list[tuple[str, Any]] = []

    def execute(self, sql: str, parameters: Any = ()) -> None:
        self.statements.append((sql.split()[0], parameters))

    def executemany(self, sql: str, rows: Any) -> None:
        self.statements.append((sql.split()[0] + " many", list(rows)))


class Pool:
    """runInteraction on a recording cursor, each transaction held until the test ends it."""

    def __init__(self) -> None:
        self.transactions: list[list[tuple[str, Any]]] = []
        self.held: list[Deferred] = []

    def runInteraction(self, interaction: Any, *args: Any) -> Deferred:
        cursor = Cursor()
        interaction(cursor, *args)
        self.transactions.append(cursor.statements)
        d: Deferred = Deferred()
        self.held.append(d)
        return d

    def close(self) -> None:
        pass


def durable(**options: Any) -> tuple[Durable, Pool, Clock, list[tuple[str, int]]]:
    pool, clock, counted = Pool(), Clock(), []
    store = Durable("test", pool, "?", Snapshot, clock, counted=lambda what, n: counted.append((what, n)), **options)
    return store, pool, clock, counted


def message(n: int) -> dict[str, Any]:
    return {"from": "abcd1234", "body": f"m{n}", "timestamp": "2026-12-07T00:00:00.000Z", "id": n}


def test_what_one_iteration_asks_for_is_one_transaction_answered_once_committed() -> None:
    store, pool, clock, counted = durable()
    store.write("INSERT INTO rooms VALUES (?)", "r1")
    store.append("r1", "Team", message(1))
    store.append("r1", "Team", message(2))
    store.write("UPDATE memberships SET last_read = ?", 2)
    answered: list[Any] = []
    store.synced().addCallback(answered.append)
    assert pool.transactions == []  # nothing before the iteration ends
    clock.advance(0)
    assert [kind for kind, _ in pool.transactions[0]] == ["INSERT", "INSERT many", "UPDATE many", "UPDATE"]
    assert [row[2] for row in pool.transactions[0][1][1]] == [1, 2]  # message ids, in order
    assert pool.transactions[0][2][1] == [(2, "r1", 2)]  # the room's last id, once
    assert answered == []
    pool.held[0].callback(None)
    assert answered == [None] and counted == [("written", 4)]


def test_one_transaction_at_a_time_the_next_gathering_what_came_meanwhile() -> None:
    store, pool, clock, _ = durable()
    store.append("r1", "Team", message(1))
    first, second = [], []
    store.synced().addCallback(first.append)
    clock.advance(0)
    store.append("r1", "Team", message(2))
    store.append("r1", "Team", message(3))
    store.synced().addCallback(second.append)
    clock.advance(0)
    assert len(pool.transactions) == 1  # the second waits for the first
    pool.held[0].callback(None)
    assert first == [None] and second == []
    clock.advance(0)
    assert [row[2] for row in pool.transactions[1][0][1]] == [2, 3]
    pool.held[1].callback(None)
    assert second == [None]


def test_a_failed_transaction_fails_its_waiters_and_is_reported_until_one_commits() -> None:
    store, pool, clock, counted = durable()
    store.append("r1", "Team", message(1))
    failed: list[Any] = []
    store.synced().addErrback(failed.append)
    clock.advance(0)
    pool.held[0].errback(OSError("database or disk is full"))
    assert failed[0].check(StoreUnavailable)
    assert store.problem == "the store cannot write: database or disk is full"
    assert counted == [("failed", 1)]
    store.append("r1", "Team", message(2))
    clock.advance(0)
    pool.held[1].callback(None)
    assert store.problem is None


def test_a_failed_store_is_checked_until_it_answers_though_nobody_writes() -> None:
    from twisted.internet.defer import fail, succeed

    store, pool, clock, _ = durable()
    answers = [fail(OSError("connection refused")), succeed([(1,)])]
    pool.runQuery = lambda sql, parameters: answers.pop(0)  # type: ignore[attr-defined]
    store.append("r1", "Team", message(1))
    store.synced().addErrback(lambda f: None)
    clock.advance(0)
    pool.held[0].errback(OSError("connection refused"))
    assert store.problem is not None
    clock.advance(5)  # still refused
    assert store.problem is not None
    clock.advance(5)  # answers
    assert store.problem is None and answers == []


def test_past_max_pending_writes_are_refused_at_once() -> None:
    store, pool, clock, counted = durable(max_pending=3)
    for n in range(1, 4):
        store.append("r1", "Team", message(n))
    with pytest.raises(StoreUnavailable):
        store.append("r1", "Team", message(4))
    with pytest.raises(StoreUnavailable):
        store.write("DELETE FROM rooms")
    assert counted == [("refused", 1), ("refused", 1)]
    clock.advance(0)  # once begun, there is room again
    store.append("r1", "Team", message(4))


@pytest_twisted.ensureDeferred
async def test_a_real_sqlite_store_keeps_history_unread_counts_and_the_last_id(tmp_path: Path) -> None:
    store = open_sqlite(str(tmp_path / "chatd.db"), reactor)
    assert store.open() == Snapshot()
    store.write("INSERT INTO rooms (room_id, name, created_at, created_by, seq, private, owner)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)", "r1", "Team", "2026-12-07T00:00:00.000Z", "", 1, 0, "ann")
    store.write("INSERT INTO memberships (room_id, user_name, last_read) VALUES (?, ?, ?)", "r1", "bob", 1)
    for n in range(1, 6):
        store.append("r1", "Team", {**message(n), "user": "ann" if n != 4 else "bob", "nick": "Ann"})
    await store.synced()
    page = await store.history("r1", 2, 5)
    assert [m["id"] for m in page] == [3, 4] and page[0] == {
        "from": "abcd1234", "body": "m3", "timestamp": "2026-12-07T00:00:00.000Z", "id": 3, "nick": "Ann",
        "user": "ann"}
    assert [m["id"] for m in await store.history("r1", 10, None, 3)] == [4, 5]
    assert await store.unread("bob", {"r1": 1}) == {"r1": 3}  # 2, 3, 5: not bob's own 4
    await store.close()
    again = open_sqlite(str(tmp_path / "chatd.db"), reactor)
    snapshot = again.open()
    assert [(r.room_id, r.owner, r.last_id) for r in snapshot.rooms] == [("r1", "ann", 5)]
    assert snapshot.memberships == {"bob": {"r1": 1}}
    await again.close()


class Recorded:
    """A durable store for the core's own tests: it records, and everything is kept at once."""

    def __init__(self) -> None:
        self.asked = 0
        self.generation = 0
        self.writes: list[tuple[str, tuple[Any, ...]]] = []

    def write(self, statement: str, *parameters: Any) -> None:
        self.asked += 1
        self.writes.append((statement, parameters))

    def synced(self) -> Deferred:
        from twisted.internet.defer import succeed

        return succeed(None)


def test_a_user_owns_and_belongs_to_a_bounded_number_of_lasting_rooms(monkeypatch: Any) -> None:
    from chatd.core import ChatCore
    from chatd.rooms import lasting
    from chatd.rooms.state import Limits
    from tests.fakes import FakeSink

    monkeypatch.setattr(lasting, "MAX_OWNED", 3)
    monkeypatch.setattr(lasting, "MAX_MEMBERSHIPS", 4)
    store = Recorded()
    core = ChatCore(durable=store, limits=Limits(creates_per_minute=0))
    ann = core.connect(FakeSink())
    core.set_user(ann, "ann")
    made = [core.create(ann, f"r{n}", 0.0, persistent=True)["room_id"] for n in range(3)]
    with pytest.raises(lasting.ChatError, match="You own 3 persistent rooms already; delete some first"):
        core.create(ann, "r3", 0.0, persistent=True)
    bob = core.connect(FakeSink())
    core.set_user(bob, "bob")
    made += [core.create(bob, f"b{n}", 0.0, persistent=True)["room_id"] for n in range(2)]
    for room_id in made[:3]:
        core.join(ann, room_id)
    core.join(ann, made[3])  # a fourth membership: the most
    core.join(ann, made[4])  # in the room, but not a lasting member of it
    assert sorted(core.memberships["ann"]) == sorted(made[:4])
    writes = [w for w in store.writes if w[0].startswith("INSERT INTO memberships")]
    assert len(writes) == 4 + 2  # ann's four, and bob's two as creator


@pytest_twisted.ensureDeferred
async def test_a_message_log_becomes_a_store_and_old_messages_are_pruned_by_kind(tmp_path: Path) -> None:
    import sqlite3

    from chatd.storage.schema import SQLITE

    # A message log as the three migrations before the store made it.
    path = tmp_path / "messages.db"
    connection = sqlite3.connect(path)
    for number, migration in enumerate(SQLITE[:3]):
        connection.executescript(f"BEGIN; {migration} PRAGMA user_version = {number + 1}; COMMIT;")
    connection.execute(
        "INSERT INTO messages (room_id, room_name, message_id, client_id, nick, body, timestamp)"
        " VALUES ('r0', 'Old', 1, 'abcd1234', NULL, '\"logged\"', '2020-01-01T00:00:00.000Z')")
    connection.commit()
    connection.close()
    from chatd.replies import timestamp

    now = reactor.seconds()
    store = open_sqlite(str(path), reactor, keep_days=30, log_keep_days=365 * 10)
    store.open()  # and prunes once at once
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone() == (len(SQLITE),)
    assert await store.prune() == 0  # after the first: nothing old yet
    store.write("INSERT INTO rooms (room_id, name, created_at, created_by, seq, private, owner)"
                " VALUES ('r1', 'Team', '2023-01-01T00:00:00.000Z', '', 1, 0, 'ann')")
    store.append("r1", "Team", {**message(1), "timestamp": timestamp(now - 60 * 86400)})  # older than 30 days
    store.append("r1", "Team", {**message(2), "timestamp": timestamp(now - 86400)})
    await store.synced()
    assert await store.prune() == 1  # the kept room's old message; the log's, within 10 years, stays
    assert [m["id"] for m in await store.history("r1", 10, None)] == [2]
    assert sqlite3.connect(path).execute("SELECT body FROM messages WHERE kept = 0").fetchall() == [('"logged"',)]
    await store.close()
