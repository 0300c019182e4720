"""
Structured logs: the JSON format, the events the core reports, and what the
real daemon writes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from chatd.core import ChatCore, CoreEvents
import io

from twisted.internet.task import Clock

from chatd.logs import JSONLogObserver, format_json
from tests.fakes import FakeSink
from tests.support.clients import two_in_a_room


def test_format_json_is_one_object_a_line_with_the_fields() -> None:
    line = format_json({
        "log_time": 1_764_142_000.25, "log_level": LogLevel.info,
        "log_namespace": "chatd.ws", "log_format": "{client_id} connected",
        "event": "connect", "client_id": "abc12345", "peer": "tcp4:127.0.0.1:5",
        "unserialisable": object(),
    })
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    assert record["time"] == "2025-11-26T07:26:40.250Z"
    assert record["level"] == "info"
    assert record["namespace"] == "chatd.ws"
    assert record["text"] == "abc12345 connected"
    assert (record["event"], record["client_id"]) == ("connect", "abc12345")
    assert record["unserialisable"].startswith("<object object")


def test_format_json_includes_a_traceback_for_failures() -> None:
    try:
        raise KeyError("boom")
    except KeyError:
        failure = Failure()
    record = json.loads(format_json({
        "log_time": 0, "log_level": LogLevel.critical, "log_namespace": "x",
        "log_format": "it broke", "log_failure": failure,
    }))
    assert record["level"] == "critical"
    assert "KeyError" in record["traceback"]


def event(level: LogLevel, text: str) -> dict[str, Any]:
    return {"log_time": 0, "log_level": level, "log_namespace": "x", "log_format": text}


def test_the_observer_writes_once_per_reactor_iteration() -> None:
    out, clock = io.BytesIO(), Clock()
    observer = JSONLogObserver(out, clock)
    observer(event(LogLevel.info, "one"))
    observer(event(LogLevel.info, "two"))
    assert out.getvalue() == b""
    clock.advance(0)
    assert [json.loads(line)["text"] for line in out.getvalue().splitlines()] == ["one", "two"]


def test_the_observer_writes_warnings_and_late_events_at_once() -> None:
    out, clock = io.BytesIO(), Clock()
    observer = JSONLogObserver(out, clock)
    observer(event(LogLevel.info, "queued"))
    observer(event(LogLevel.error, "urgent"))
    # Order is kept: the queued line goes out with the urgent one.
    assert [json.loads(line)["text"] for line in out.getvalue().splitlines()] == ["queued", "urgent"]
    observer.detach()  # the reactor has stopped: nothing waits any more
    observer(event(LogLevel.info, "after"))
    assert json.loads(out.getvalue().splitlines()[-1])["text"] == "after"


def test_the_observer_writes_text_streams_through_their_buffer() -> None:
    raw = io.BytesIO()
    text = io.TextIOWrapper(raw, encoding="utf-8")
    JSONLogObserver(text)(event(LogLevel.info, "caf\u00e9"))
    assert json.loads(raw.getvalue())["text"] == "caf\u00e9"


class RecordingEvents(CoreEvents):
    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def room_created(self, room: Any, client: Any) -> None:
        self.seen.append(("created", room.room_id, client.client_id))

    def room_deleted(self, room: Any) -> None:
        self.seen.append(("deleted", room.room_id))

    def message_sent(self, room: Any, sender: Any, message: Any, recipients: int, size: int) -> None:
        self.seen.append(("message", room.room_id, sender.client_id, message["body"], recipients, size))


def test_the_core_reports_rooms_and_broadcasts() -> None:
    events = RecordingEvents()
    ids = iter(["alice001", "bob00002", "carol003", "room0001"])
    core = ChatCore(new_id=lambda: next(ids), events=events)
    alice, bob, carol = (core.connect(FakeSink()) for _ in range(3))
    core.create(alice, "r", 0.0)
    core.join(bob, "room0001")
    core.join(carol, "room0001")
    core.message(alice, "hi", 0.0)
    for client in (alice, bob):
        core.leave(client)
    core.disconnect(carol)
    payload_size = len(b'{"from": "alice001", "body": "hi", "timestamp": "1970-01-01T00:00:00.000Z", "id": 1}')
    assert events.seen == [
        ("created", "room0001", "alice001"),
        ("message", "room0001", "alice001", "hi", 2, payload_size),
        ("deleted", "room0001"),
    ]


async def session(daemon_factory: Any, *args: str) -> list[dict[str, Any]]:
    """Run the real daemon through a short session; its JSON log lines."""
    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--log-format", "json", *args)
    a, a_id, b = await two_in_a_room(await chatd.wait_listening(), "Logged")
    room_id = (await a.request({"action": "members"}))["room_id"]
    await a.request({"action": "message", "body": "top secret body"})
    await b.next()
    await a.request({"action": "join", "body": "not an object"})
    await a.close()
    await b.close()
    await chatd.wait_for(rb'"event": ?"room_deleted"', "the room_deleted event")
    chatd.signal("TERM")
    assert await chatd.wait_exit() == 0
    lines = chatd.output.decode().splitlines()
    records = [json.loads(line) for line in lines]  # every line is JSON
    return [r | {"_a": a_id, "_room": room_id} for r in records]


@pytest_twisted.ensureDeferred
async def test_the_daemon_logs_one_json_event_per_happening_and_no_bodies(daemon_factory) -> None:
    records = await session(daemon_factory)
    a_id, room_id = records[0]["_a"], records[0]["_room"]
    events = [r for r in records if "event" in r]
    kinds = [r["event"] for r in events]
    assert kinds.count("connect") == 2
    assert kinds.count("disconnect") == 2
    created = next(r for r in events if r["event"] == "room_created")
    assert (created["room_id"], created["client_id"]) == (room_id, a_id)
    rejected = next(r for r in events if r["event"] == "rejected")
    assert (rejected["client_id"], rejected["kind"]) == (a_id, "shape")
    disconnect = next(r for r in events if r["event"] == "disconnect" and r["client_id"] == a_id)
    assert (disconnect["code"], disconnect["clean"]) == (1000, True)
    assert any(r["event"] == "room_deleted" and r["room_id"] == room_id for r in events)
    assert all(r["level"] in ("debug", "info", "warn", "error", "critical") for r in records)
    everything = json.dumps(records)
    assert "top secret body" not in everything
    assert "not an object" not in everything


@pytest_twisted.ensureDeferred
async def test_log_messages_logs_bodies(daemon_factory) -> None:
    records = await session(daemon_factory, "--log-messages")
    [message] = [r for r in records if r.get("event") == "message"]
    assert (message["body"], message["recipients"]) == ("top secret body", 1)


def test_the_hot_path_logger_emits_what_twisteds_logger_does() -> None:
    from twisted.logger import Logger

    from chatd.logs import HotPathLogger

    seen: list[dict[str, Any]] = []
    for cls in (Logger, HotPathLogger):
        cls(namespace="chatd.x", observer=seen.append).info("{a} happened", event="e", a=1)
    ours, twisteds = seen[1], seen[0]
    assert set(ours) == set(twisteds)
    for key in ours:
        if key != "log_time" and key != "log_logger":
            assert ours[key] == twisteds[key], key


def test_log_times_are_utc_to_the_millisecond() -> None:
    from chatd.logs import _time

    assert _time(1764650000.1234) == "2025-12-02T04:33:20.123Z"
    assert _time(1764650000.1239) == "2025-12-02T04:33:20.123Z"  # the same millisecond: the same text
    assert _time(1764650000.9999) == "2025-12-02T04:33:20.999Z"
    assert _time(1764650001.0) == "2025-12-02T04:33:21.000Z"
    assert _time(0.0) == "1970-01-01T00:00:00.000Z"


def test_events_of_one_call_site_keep_their_own_fields() -> None:
    from chatd.logs import encode_json

    # The same keys in the same order (the fields are sorted out once per
    # kind of event), then other keys: each record has its own.
    for value in ("one", "two"):
        event = {"event": "e", "x": value, "log_level": LogLevel.info, "log_format": "{x}", "log_time": 0.0,
                 "log_namespace": "chatd.t"}
        assert json.loads(encode_json(event)) == {
            "time": "1970-01-01T00:00:00.000Z", "level": "info", "namespace": "chatd.t", "text": value,
            "event": "e", "x": value}
    event = {"y": 1, "log_level": LogLevel.warn, "log_format": "y", "log_time": 0.0, "log_namespace": "chatd.t",
             "log_extra": "skipped"}
    assert json.loads(encode_json(event)) == {
        "time": "1970-01-01T00:00:00.000Z", "level": "warn", "namespace": "chatd.t", "text": "y", "y": 1}
