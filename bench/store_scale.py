"""
The durable store at size: a store holding 10,000 persistent rooms (five
members each) and 1,000,000 messages, all in one room, made directly in the
database (SQLite, or a private PostgreSQL on the server's core); then

- the time from ``twistd -n chatd`` starting to serving (its port accepting),
  three times;
- ``history`` pages of 100 from the middle of the 1,000,000-message room
  (ids 400,000 to 600,000, each page its own ``before``), through a real
  WebSocket client: the time from request to reply, p50 and p99 of 200.

    taskset -c 1 .venv/bin/python bench/store_scale.py sqlite|postgresql [--server-core 0]

Prints one JSON object; docs/performance.md has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from chatd.storage.schema import migrate_postgresql, migrate_sqlite

ROOMS, MEMBERS, MESSAGES = 10_000, 5, 1_000_000
BIG = "bigroom0"
TWISTD = str(Path(sys.executable).parent / "twistd")


def rooms() -> Iterator[tuple[Any, ...]]:
    for n in range(ROOMS):
        room_id = BIG if n == 0 else f"{n:08x}"
        yield (room_id, f"room {n}", "2026-12-01T00:00:00.000Z", "", n + 1, 0, f"user{n % 1000}",
               MESSAGES if n == 0 else 0)


def memberships() -> Iterator[tuple[Any, ...]]:
    for room_id, *_ in rooms():
        for m in range(MEMBERS):
            yield (room_id, f"user{(hash(room_id) + m) % 5000}", 0)


def messages(chunk: int) -> Iterator[list[tuple[Any, ...]]]:
    batch = []
    for i in range(1, MESSAGES + 1):
        batch.append((BIG, "room 0", i, "abcd1234", "ann", json.dumps(f"message {i}"),
                      "2026-12-01T00:00:00.000Z", 0, None, "ann", 1))
        if len(batch) == chunk:
            yield batch
            batch = []
    if batch:
        yield batch


ROOM_SQL = ("INSERT INTO rooms (room_id, name, created_at, created_by, seq, private, owner, last_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
MEMBER_SQL = "INSERT INTO memberships (room_id, user_name, last_read) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
MESSAGE_SQL = ("INSERT INTO messages (room_id, room_name, message_id, client_id, nick, body, timestamp, direct,"
               " recipient, user_name, kept) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def fill(connection: Any, mark: str) -> None:
    cursor = connection.cursor()
    cursor.executemany(ROOM_SQL.replace("?", mark), list(rooms()))
    cursor.executemany(MEMBER_SQL.replace("?", mark), list(memberships()))
    for batch in messages(50_000):
        cursor.executemany(MESSAGE_SQL.replace("?", mark), batch)
    connection.commit()


def sqlite_store(directory: str) -> str:
    path = f"{directory}/chatd.db"
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode = WAL")
    migrate_sqlite(connection)
    fill(connection, "?")
    connection.close()
    return f"sqlite:{path}"


def postgresql_store(directory: str, core: str) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from chatd_bench.cli import start_postgresql
    import chatd_bench.cli as cli
    import psycopg

    cli.server_cores = core
    _, url, stop = start_postgresql(directory)
    STOPS.append(stop)
    with psycopg.connect(url) as connection:
        migrate_postgresql(connection)
        fill(connection, "%s")
        connection.execute("ANALYZE")
    return url


STOPS: list[Any] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(store: str, core: str) -> tuple[subprocess.Popen[bytes], int, float]:
    """chatd on ``store``: the process, its port, and the seconds until it served."""
    port = free_port()
    started = time.monotonic()
    process = subprocess.Popen(
        ["taskset", "-c", core, TWISTD, "--nodaemon", "--pidfile=", "chatd", "--store", store,
         "--listen", f"tcp:{port}:interface=127.0.0.1", "--rate-commands", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port, time.monotonic() - started
        except OSError:
            if process.poll() is not None:
                raise RuntimeError("chatd exited") from None
            time.sleep(0.005)


async def history_pages(port: int, pages: int) -> list[float]:
    import websockets

    async with websockets.connect(f"ws://127.0.0.1:{port}", max_size=None) as ws:
        await ws.recv()
        await ws.send(json.dumps({"action": "join", "body": {"room_id": BIG}}))
        assert json.loads(await ws.recv())["status"] == "success"
        times = []
        for _ in range(pages):
            before = random.randint(400_000, 600_000)
            began = time.perf_counter()
            await ws.send(json.dumps({"action": "history", "body": {"limit": 100, "before": before}}))
            reply = json.loads(await ws.recv())
            times.append((time.perf_counter() - began) * 1000)
            ids = [m["id"] for m in reply["messages"]]
            assert ids == list(range(before - 100, before)), (before, ids[:3])
        return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["sqlite", "postgresql"])
    parser.add_argument("--server-core", default="0")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="chatd-scale-")
    try:
        made = time.monotonic()
        store = sqlite_store(directory) if args.kind == "sqlite" else postgresql_store(directory, args.server_core)
        made = time.monotonic() - made
        starts, pages = [], []
        for _ in range(3):
            process, port, seconds = start(store, args.server_core)
            starts.append(round(seconds, 2))
            if not pages:
                pages = asyncio.run(history_pages(port, 200))
            process.terminate()
            process.wait()
        pages.sort()
        print(json.dumps({  # noqa: T201 - the script's output
            "store": args.kind, "rooms": ROOMS, "memberships": ROOMS * MEMBERS, "messages": MESSAGES,
            "filled_s": round(made, 1), "start_to_serving_s": starts,
            "history_page_100_p50_ms": round(pages[len(pages) // 2], 2),
            "history_page_100_p99_ms": round(pages[int(len(pages) * 0.99)], 2),
        }))
    finally:
        for stop in STOPS:
            stop()
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
