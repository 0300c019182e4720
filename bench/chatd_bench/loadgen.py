"""
The load generator: many minimal WebSocket clients in one process on uvloop,
speaking the seed protocol to any server, checking every delivery.

It has to be faster than the servers it measures, so it does as little as a
client can: frames are masked with a zero key (allowed, and free), reads
are parsed in batches, and a broadcast is checked by slicing its body, a
fixed-width string the generator wrote itself:
``~B<room>.<sender>.<seq>.<send time ns>~E``, not by decoding JSON.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional, cast

from chatd_bench import checker

HANDSHAKE = (
    "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)
ZERO_MASK = b"\x00\x00\x00\x00"  # masking with zeros leaves the payload as it is
BODY_LEN = 44  # len of "~B" + 3 + 1 + 5 + 1 + 9 + 1 + 20 + "~E"
#: Up to this many clients, deliveries are checked in C (chatd_bench.checker).
MAX_C_CLIENTS = 2000


def frame(payload: bytes) -> bytes:
    """A masked text frame, as clients must send."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 65536:
        head = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + ZERO_MASK + payload


def message_frame(room: int, sender: int, seq: int) -> bytes:
    body = f"~B{room:03d}.{sender:05d}.{seq:09d}.{time.monotonic_ns():020d}~E"
    return frame(b'{"action": "message", "body": "' + body.encode() + b'"}')


@dataclass
class Stats:
    """What the receivers saw."""

    delivered: int = 0
    acks: int = 0
    errors: list[str] = field(default_factory=list)
    latencies_ns: list[int] = field(default_factory=list)
    record_latency: bool = True

    def error(self, text: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(text)


class Client(asyncio.Protocol):
    """One connection: handshake, then frames."""

    def __init__(self, bench: "Bench", index: int) -> None:
        self.bench = bench
        self.index = index
        self.transport: Optional[asyncio.Transport] = None
        self.buf = b""
        self.open = False
        self.client_id = b""
        self.room = -1  # which room it is a member of
        self.expected: dict[int, int] = {}  # sender -> next seq expected from it
        self.replies: asyncio.Queue[Any] = asyncio.Queue()
        self.closing = False  # this client sent a close frame
        self.gone: Optional[asyncio.Future[None]] = None  # made once connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        self.gone = asyncio.get_running_loop().create_future()
        transport.write(HANDSHAKE.format(port=self.bench.port).encode())

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.gone is not None and not self.gone.done():
            self.gone.set_result(None)

    async def close(self) -> None:
        """The closing handshake (code 1000), then the server closes the TCP
        connection, as RFC 6455 has it."""
        self.closing = True
        self.send(bytes((0x88, 0x82)) + ZERO_MASK + (1000).to_bytes(2, "big"))
        assert self.gone is not None
        await self.gone

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.bench.stats.error(f"handshake refused: {buf[:60]!r}")
                assert self.transport is not None
                self.transport.close()
                return
            self.open = True
            buf = buf[end + 4:]
        pos, n = 0, len(buf)
        on_text = self.on_text
        fast = self.bench.check_fast if self.bench.check is not None else None
        while n - pos >= 2:
            if fast is not None:
                # The C checker takes every delivery and ack it can; this
                # loop takes the frame it stopped at, if it is complete.
                pos = fast(self, buf, pos, n)
                if n - pos < 2:
                    break
            length = buf[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > n:
                break
            opcode = buf[pos] & 0x0F
            if opcode == 1:
                on_text(buf[start:end])
            elif opcode == 9:  # ping: pong with the same payload
                payload = buf[start:end]
                self.send(bytes((0x8A, 0x80 | len(payload))) + ZERO_MASK + payload)
            elif opcode == 8:
                code = int.from_bytes(buf[start:start + 2], "big") if length >= 2 else None
                if self.closing:
                    pos = end
                    continue  # the answer to ours: the server closes the connection next
                self.bench.stats.error(f"closed by the server ({code}): {buf[start + 2:end]!r}")
                self.replies.put_nowait({"status": "closed", "code": code, "client_id": ""})
                assert self.transport is not None
                self.transport.close()
            pos = end
        self.buf = buf[pos:]

    def on_text(self, payload: bytes) -> None:
        marker = payload.find(b"~B")
        if marker >= 0 and payload.startswith(b'{"from"'):
            self.bench.on_delivery(self, payload, marker)
        elif b"Message sent" in payload:
            self.bench.on_ack(self)
        else:
            self.replies.put_nowait(json.loads(payload))

    async def request(self, obj: Any) -> Any:
        self.send(frame(json.dumps(obj).encode()))
        return await self.replies.get()


#: Whether the rooms are created persistent (a server with a durable store).
PERSISTENT_ROOMS = False


class Bench:
    """A set of clients against one server, and what they observed."""

    def __init__(self, port: int, record_latency: bool = True) -> None:
        self.port = port
        self.clients: list[Client] = []
        self.room_ids: list[str] = []  # room r of rooms(), by its ID
        self.ids: list[bytes] = []
        self.stats = Stats(record_latency=record_latency)
        # Every member of a room receives the same bytes: the fields parsed
        # from a broadcast are kept (briefly) for the other members' copies.
        self._parsed: dict[bytes, tuple[int, int, int, int, bool]] = {}
        # The C checker (chatd_bench.checker), once the rooms are made.
        self.check: Optional[Any] = None
        self.checker = "python"

    def use_c_checker(self) -> None:
        """Check deliveries in C from now on, if it is available (and every
        client ID is 8 bytes, as the checker reads them)."""
        count = len(self.clients)
        if count > MAX_C_CLIENTS or any(len(i) != 8 for i in self.ids):
            return  # its tables grow with the square of the clients
        check = checker.load()
        if check is None:
            return
        for client in self.clients:
            expected = (ctypes.c_int32 * count)()
            old = client.expected
            for sender, seq in (old.items() if isinstance(old, dict) else enumerate(old)):
                expected[sender] = seq
            client.expected = expected  # type: ignore[assignment]
        self._ids = b"".join(self.ids)
        self._out = (ctypes.c_int64 * 2)()
        self._lat = (ctypes.c_int64 * 4096)()
        self._lat_n = ctypes.c_long(0)
        self._addresses = (ctypes.addressof(self._lat), ctypes.addressof(self._lat_n), ctypes.addressof(self._out))
        self.check = check
        self.checker = "c"

    def check_fast(self, client: "Client", buf: bytes, pos: int, n: int) -> int:
        out = self._out
        out[0] = out[1] = 0
        stats = self.stats
        lat, lat_n, out_address = self._addresses
        record = stats.record_latency
        pos = self.check(
            buf, pos, n, client.room, client.index, ctypes.addressof(client.expected),
            len(self.ids), self._ids, time.monotonic_ns() if record else 0,
            lat, 4096 if record else 0, lat_n, out_address,
        )
        stats.delivered += out[0]
        if self._lat_n.value:
            stats.latencies_ns.extend(self._lat[: self._lat_n.value])
            self._lat_n.value = 0
        for _ in range(out[1]):
            self.on_ack(client)
        return pos

    async def connect(self, count: int, concurrency: int = 200) -> list[Client]:
        """``count`` clients, each welcomed (``concurrency`` handshakes at a time)."""
        loop = asyncio.get_running_loop()
        semaphore = asyncio.Semaphore(concurrency)

        async def one(index: int) -> Client:
            async with semaphore:
                _, client = await loop.create_connection(
                    lambda: Client(self, index), "127.0.0.1", self.port)
                welcome = await client.replies.get()
                if welcome.get("status") != "connected":
                    raise RuntimeError(f"not welcomed: {welcome}")
                client.client_id = welcome["client_id"].encode()
                return client

        start = len(self.clients)
        made = await asyncio.gather(*(one(start + i) for i in range(count)))
        self.clients.extend(made)
        self.ids.extend(c.client_id for c in made)
        return list(made)

    async def rooms(self, members: list[list[Client]]) -> None:
        """Make room r of ``members[r]``: the first creates it, the others join."""
        for r, group in enumerate(members):
            body: Any = {"name": f"bench {r}", "persistent": True} if PERSISTENT_ROOMS else f"bench {r}"
            reply = await group[0].request({"action": "create", "body": body})
            if reply.get("status") != "success":
                raise RuntimeError(f"create failed: {reply}")
            room_id = reply["room_id"]
            self.room_ids.append(room_id)
            group[0].room = r
            joins = [c.request({"action": "join", "body": {"room_id": room_id}}) for c in group[1:]]
            for c, answer in zip(group[1:], await asyncio.gather(*joins), strict=True):
                if answer.get("status") != "success":
                    raise RuntimeError(f"join failed: {answer}")
                c.room = r
        self.use_c_checker()

    def on_delivery(self, receiver: Client, payload: bytes, i: int) -> None:
        stats = self.stats
        stats.delivered += 1
        fields = self._parsed.get(payload)
        if fields is not None:
            room, sender, seq, sent_ns, right_sender = fields
        else:
            room = int(payload[i + 2:i + 5])
            sender = int(payload[i + 6:i + 11])
            seq = int(payload[i + 12:i + 21])
            sent_ns = int(payload[i + 22:i + 42])
            start = payload.find(b'"from"') + 6
            quote = payload.index(b'"', start) + 1
            right_sender = payload[quote:quote + 8] == self.ids[sender]
            if len(self._parsed) > 20_000:
                self._parsed.clear()
            self._parsed[payload] = (room, sender, seq, sent_ns, right_sender)
        if stats.record_latency:
            stats.latencies_ns.append(time.monotonic_ns() - sent_ns)
        if room != receiver.room:
            stats.error(f"client {receiver.index} in room {receiver.room} got a message for room {room}")
        if sender == receiver.index:
            stats.error(f"client {sender} received its own message")
        if not 0 <= sender < len(self.ids):
            stats.error(f"client {receiver.index} got a message from unknown sender {sender}")
            return
        expected = receiver.expected.get(sender, 0) if isinstance(receiver.expected, dict) else receiver.expected[sender]
        if seq != expected:
            kind = "duplicate or reordered" if seq < expected else "lost"
            stats.error(f"client {receiver.index} from {sender}: seq {seq}, expected {expected} ({kind})")
        receiver.expected[sender] = seq + 1
        if not right_sender:
            stats.error(f"wrong sender id on a message from {sender}")

    def on_ack(self, client: Client) -> None:
        """A "Message sent" reply (the max scenario replaces this to keep its window full)."""
        self.stats.acks += 1

    async def close(self) -> None:
        for client in self.clients:
            if client.transport is not None:
                client.transport.abort()


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process descended from it (the workers of --workers)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue  # gone meanwhile
    tree, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        tree += children
        frontier += children
    return tree


def core_busy() -> dict[int, tuple[float, float]]:
    """Per core: (busy, total) jiffies since boot."""
    cores = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *values = line.split()
                numbers = [int(v) for v in values]
                idle = numbers[3] + numbers[4]
                cores[int(name[3:])] = (float(sum(numbers) - idle), float(sum(numbers)))
    return cores


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")
