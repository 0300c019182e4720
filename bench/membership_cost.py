"""
What a room membership beyond the first costs chatd's memory, in process and
to the byte: CONNECTIONS clients of a chat core, each in one of ROOMS rooms,
then each keeps EXTRA more ("keep": true), with tracemalloc counting what
the extra memberships hold (the client's side and the room's); and, with
``redis-server`` on the PATH, what they hold in a cluster's Redis (a
private one, run by chatd's own scripts as nodes run them: its
``used_memory`` before and after).

    .venv/bin/python bench/membership_cost.py [CONNECTIONS] [ROOMS] [EXTRA]

Prints the bytes per extra membership, and per first membership to compare.
"""

from __future__ import annotations

import gc
import json
import shutil
import socket
import subprocess
import sys
import tracemalloc
from typing import Any

import hiredis

from chatd.backplane import scripts
from chatd.backplane.redis import _encoded, _resp
from chatd.core import ChatCore

P = "chatd:"


class Sink:
    def deliver(self, frame: Any) -> None:
        pass

    def close(self, code: int, reason: str) -> None:
        pass


def main() -> None:
    connections, rooms, extra = (int(a) for a in (sys.argv[1:] + ["1000", "100", "20"][len(sys.argv) - 1:]))
    core = ChatCore()
    owners = [core.connect(Sink()) for _ in range(rooms)]
    room_ids = [core.create(owner, f"room {n}", 0.0)["room_id"] for n, owner in enumerate(owners)]
    clients = [core.connect(Sink()) for _ in range(connections)]
    gc.collect()
    tracemalloc.start()
    first = tracemalloc.take_snapshot()
    for i, client in enumerate(clients):
        core.join(client, room_ids[i % rooms], 0.0)
    gc.collect()
    joined = tracemalloc.take_snapshot()
    for i, client in enumerate(clients):
        for k in range(extra):
            reply = core.join(client, room_ids[(i + 1 + k) % rooms], 0.0, keep=True)
            assert isinstance(reply, dict) and reply["status"] == "success", reply
    gc.collect()
    kept = tracemalloc.take_snapshot()
    one = sum(s.size_diff for s in joined.compare_to(first, "filename"))
    more = sum(s.size_diff for s in kept.compare_to(joined, "filename"))
    print(f"first membership: {one / connections:.0f} bytes each ({connections} clients)")  # noqa: T201
    print(f"extra membership: {more / (connections * extra):.0f} bytes each ({connections * extra} kept)")  # noqa: T201


def in_redis(connections: int, rooms: int, extra: int) -> None:
    """The same memberships in a private redis-server, made by REGISTER,
    CREATE and ENTER (``keep``: leaving nothing) as a node makes them."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert server.stdout is not None
        for line in server.stdout:
            if b"Ready to accept connections" in line:
                break
        sock, reader = socket.create_connection(("127.0.0.1", port)), hiredis.Reader()

        def call(*args: Any) -> Any:
            sock.sendall(_resp([_encoded(a) for a in args]))
            while (reply := reader.gets()) is False:
                reader.feed(sock.recv(1 << 20))
            return reply

        def used() -> int:
            info = call("INFO", "memory").decode()
            return int(next(line.split(":")[1] for line in info.splitlines() if line.startswith("used_memory:")))

        sha = {name: call("SCRIPT", "LOAD", getattr(scripts, name)) for name in ("RESYNC", "REGISTER", "CREATE", "ENTER")}
        call("EVALSHA", sha["RESYNC"], 0, P, "node", 600000, json.dumps({"clients": [], "rooms": {}, "sets": []}))
        who = ("0 ", "", "", "")
        room_ids = [f"room{n:04d}" for n in range(rooms)]
        for n, room_id in enumerate(room_ids):
            call("EVALSHA", sha["REGISTER"], 0, P, "node", f"own{n:05d}", "0 ")
            call("EVALSHA", sha["CREATE"], 0, P, "node", f"own{n:05d}", room_id, *who, 1, 0,
                 json.dumps(["name", room_id]), "[]", "[]", "*")
        clients = [f"cli{n:05d}" for n in range(connections)]

        def enter(client: str, room_id: str, leave: str) -> None:
            reply = call("EVALSHA", sha["ENTER"], 0, P, "node", client, room_id, -1, *who, "[]", "[]", "[]", "[]", leave)
            assert reply[0] == b"ok", reply

        for i, client in enumerate(clients):
            call("EVALSHA", sha["REGISTER"], 0, P, "node", client, "0 ")
            enter(client, room_ids[i % rooms], "*")
        before = used()
        for i, client in enumerate(clients):
            for k in range(extra):
                enter(client, room_ids[(i + 1 + k) % rooms], "")
        after = used()
        print(f"extra membership in Redis: {(after - before) / (connections * extra):.0f} bytes each")  # noqa: T201
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
    if shutil.which("redis-server"):
        counts = [int(a) for a in (sys.argv[1:] + ["1000", "100", "20"][len(sys.argv) - 1:])]
        in_redis(*counts)
