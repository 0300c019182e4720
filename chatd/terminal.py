"""
How ``chatd-client`` shows what the server sends: one line per message or
event, in local time, with every control character and terminal escape a
peer could send made visible instead of acted on.
"""

from __future__ import annotations

import json
import time
import unicodedata
from typing import Any, Container

def visible(text: str) -> str:
    """
    ``text`` as it may reach a terminal: what a peer chose (a body, a nick,
    a room's name, a reason) must not control it.  Control and format
    characters (newlines, escape sequences, bidirectional overrides) are
    shown as escapes (``\\n``, ``\\x1b``, ``\\u202e``), other spaces as a space.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _shown(c) for c in text)


def _shown(char: str) -> str:
    if unicodedata.category(char) == "Zs":
        return " "
    return char.encode("unicode_escape").decode("ascii")


def _visible_all(value: Any) -> Any:
    """Every string of a parsed message (keys too) made :func:`visible`."""
    if isinstance(value, str):
        return visible(value)
    if isinstance(value, dict):
        return {visible(k): _visible_all(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_visible_all(v) for v in value]
    return value


def describe(message: Any) -> str:
    """One server message as a line (or lines of its own) for a person;
    nothing in it from the server or a peer can control the terminal."""
    return _describe(_visible_all(message))


def _describe(message: Any) -> str:
    if not isinstance(message, dict):
        return json.dumps(message)
    stamp = _local_time(message.get("timestamp"))
    if "from" in message:
        who = message.get("nick") or message["from"]
        body = message["body"] if isinstance(message["body"], str) else json.dumps(message["body"])
        if message.get("direct"):
            return f"[{stamp}] {who} (to you): {body}"
        return f"[{stamp}] {who}: {body}"
    if "event" in message:
        who = message.get("nick") or message.get("client_id")
        kind = message["event"]
        if kind == "deleted":
            return f"[{stamp}] * room {message.get('room_id')} was deleted by its owner"
        if kind == "read":
            return f"-- read up to {message.get('id')} in {message.get('room_id')} (elsewhere)"
        if kind == "kick":
            reason = message.get("reason")
            return (f"[{stamp}] * you were put out of room {message.get('room_id')} by {message.get('by')}"
                    + (f": {reason}" if reason else ""))
        text = {
            "join": f"{who} joined",
            "leave": f"{who} left",
            "nick": f"{message.get('client_id')} is now {message.get('nick')}",
            "owner": f"{who} now owns the room",
            "op": f"{who} is now a moderator",
            "deop": f"{who} is no longer a moderator",
        }.get(kind, f"{who}: {kind}")
        return f"[{stamp}] * {text}"
    if message.get("status") == "error":
        return f"!! {message.get('message')}"
    if "rooms" in message and all(isinstance(r, dict) and "unread" in r for r in message["rooms"] or []) \
            and message["rooms"]:
        return "-- your rooms:\n" + "\n".join(
            f"   {r['room_id']}  {r['name']}"
            + (f"  [{r['role']}]" if r.get("role") in ("owner", "moderator") else "")
            + (f"  {r['unread']} unread" if r.get("unread") else "")
            + ("  (here)" if r.get("current") else "")
            + ("" if r.get("persistent") else "  (ends with its last member)")
            for r in message["rooms"])
    if "rooms" in message:
        rooms = message["rooms"] or []
        lines = [f"   {r['room_id']}  {r['name']}  ({r.get('members', 0)}{', private' if r.get('private') else ''}"
                 f"{', persistent' if r.get('persistent') else ''})" for r in rooms]
        return "-- rooms:\n" + "\n".join(lines) if lines else "-- no rooms"
    if "members" in message:
        return "-- members: " + ", ".join(
            (f"{m['nick']} ({m['client_id']})" if m.get("nick") else m["client_id"])
            + (f" [{m['role']}]" if m.get("role") in ("owner", "moderator") else "")
            for m in message["members"])
    if "recovered" in message:
        # Back in a room after a reconnection: what was said meanwhile.
        head = f"-- {message.get('message', '')}" + ("" if message["recovered"] else " (some messages were missed)")
        return "\n".join([head, *(_describe(m) for m in message.get("messages", []))])
    if "messages" in message:
        return "\n".join(_describe(m) for m in message["messages"]) or "-- no history"
    text = str(message.get("message", ""))
    if message.get("room_id") and message["room_id"] not in text:
        text += f" ({message['room_id']})"
    return f"-- {text}"


def describe_sync(message: Any, mine: Container[str] = ()) -> str:
    """A ``sync`` reply: the rooms the client is back in, and, room by room,
    what others said meanwhile (each line naming its room; the client's own
    messages, sent from ``mine``, it has shown already)."""
    message = _visible_all(message)
    rooms = [r for r in message.get("rooms", []) if isinstance(r, dict)]
    missed = {id(r): [m for m in r.get("messages", []) if isinstance(m, dict) and m.get("from") not in mine]
              for r in rooms}
    lines = [f"-- back in {len(rooms)} room{'s' if len(rooms) != 1 else ''}: " + ", ".join(
        f"{r.get('name')}" + (f" ({n} unread)" if (n := len(missed[id(r)]) if "messages" in r else r.get("unread"))
                              else "") for r in rooms)]
    for r in rooms:
        lines += [f"#{r.get('name')} {_describe(m)}" for m in missed[id(r)]]
        if r.get("recovered") is False:
            lines.append(f"#{r.get('name')} -- some messages were missed")
    lines += [f"!! {s.get('room_id')}: {s.get('message')}" for s in message.get("skipped", []) if isinstance(s, dict)]
    return "\n".join(lines)


def _local_time(timestamp: Any) -> str:
    if isinstance(timestamp, str):
        try:
            from datetime import datetime

            when = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
            return when.astimezone().strftime("%H:%M:%S")
        except ValueError:
            pass
    return time.strftime("%H:%M:%S")
