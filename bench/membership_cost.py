"""
What a room membership beyond the first costs chatd's memory, in process and
to the byte: CONNECTIONS clients of a chat core, each in one of ROOMS rooms,
then each keeps EXTRA more ("keep": true), with tracemalloc counting what
the extra memberships hold (the client's side and the room's).

    .venv/bin/python bench/membership_cost.py [CONNECTIONS] [ROOMS] [EXTRA]

Prints the bytes per extra membership, and per first membership to compare.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
from typing import Any

from chatd.core import ChatCore


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


if __name__ == "__main__":
    main()
