"""
What chatd's PUBLISH script costs Redis per message, alone: a private
``redis-server`` on core 0 runs the script for batches of messages from one
member of a room with a full history, as a node under load sends them,
with a subscriber draining the room's channel.

    taskset -c 1 .venv/bin/python bench/publish_cost.py [CALLS] [BATCH] [REVISION]

Prints Redis's CPU (user and system, from /proc) per message.  REVISION: the
script as it was at that git revision, to compare.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from typing import Any

import hiredis

from chatd.backplane import scripts
from chatd.backplane.redis import _encoded, _resp

PREFIX = "chatd:"
HEAD = ('{"type": "message", "from": "abcd1234", "body": "~B000.00000.000000000.00000000000000000000~E", '
        '"timestamp": "2026-12-02T06:30:00.000Z", "id": ')


class Connection:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.reader = hiredis.Reader()

    def call(self, *args: Any) -> Any:
        # Each command built as a node builds it.
        self.sock.sendall(_resp([_encoded(a) for a in args]))
        while (reply := self.reader.gets()) is False:
            self.reader.feed(self.sock.recv(1 << 20))
        return reply


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def publish_script(revision: str | None) -> str:
    if revision is None:
        return scripts.PUBLISH
    source = subprocess.run(["git", "show", f"{revision}:chatd/backplane/scripts.py"],
                            check=True, capture_output=True, text=True).stdout
    namespace: dict[str, Any] = {}
    exec(compile(source, f"{revision}:scripts.py", "exec"), namespace)  # noqa: S102 - our own file, as it was
    return str(namespace["PUBLISH"])


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 6000
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(["taskset", "-c", "0", "redis-server", "--port", str(port), "--save", "",
                               "--appendonly", "no"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert server.stdout is not None
        for line in server.stdout:
            if b"Ready to accept connections" in line:
                break
        redis, subscriber = Connection(port), Connection(port)
        sha = redis.call("SCRIPT", "LOAD", publish_script(sys.argv[3] if len(sys.argv) > 3 else None))
        # The sender in the room: as the scripts keep it now, and as older revisions did.
        redis.call("SADD", PREFIX + "client-rooms:abcd1234", "room0001")
        redis.call("HSET", PREFIX + "client:abcd1234", "room", "room0001")
        subscriber.call("SUBSCRIBE", PREFIX + "r:room0001")
        threading.Thread(target=lambda: [None for _ in iter(lambda: subscriber.sock.recv(1 << 20), b"")],
                         daemon=True).start()
        # prefix, node, room, history size and bytes (chatd's defaults), then sender, head, tail per message
        args: list[Any] = [PREFIX, "node", "room0001", 100, 512 * 1024]
        for _ in range(batch):
            args += ["abcd1234", HEAD, "}"]
        for _ in range(200):  # the history full, as in a busy room
            redis.call("EVALSHA", sha, 0, *args)
        started = cpu_seconds(server.pid)
        for _ in range(calls):
            redis.call("EVALSHA", sha, 0, *args)
        spent = cpu_seconds(server.pid) - started
        print(f"{spent / (calls * batch) * 1e6:.2f} us of Redis per message")  # noqa: T201 - a script's output
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
