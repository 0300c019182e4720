"""
chatd-client [URL]: a terminal client for chatd (or any server of the seed
protocol), on Twisted and Autobahn like the daemon.

Interactive on a terminal: type a line to send it to your room, or a command
(/help). The line editor is prompt_toolkit's: arrow keys move, Up and Down
go through what you typed, and what arrives prints above the line you are
typing, under a prompt that shows your room and your name. Scriptable
otherwise: with standard input not a terminal it reads commands line by
line (each waits for its reply) and prints every server message as one JSON
object a line, then exits once the input ends and the replies are in.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, error, stdio, task
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.protocols.basic import LineReceiver

from chatd.terminal import describe, describe_sync, visible

DEFAULT_URL = "ws://localhost:8765"

HELP = """commands:
  /create NAME      make a room and move into it
  /private NAME     make a private room (seen by whoever you invite) and move into it
  /persistent NAME  make a room that lasts (signed in): it keeps its members and history
  /rooms            the rooms you are in and your persistent rooms, with unread counts
  /read             mark your room read up to its latest message
  /join ROOM        move into a room (its name from /list, or its ID)
  /join --keep ROOM enter a room and stay in yours too (also /create --keep NAME)
  /switch ROOM      talk in another of the rooms you are in (its name or ID)
  /leave            leave your room (the room you were in before it comes back)
  /list             the rooms
  /members          who is in your room
  /nick NAME        your display name
  /history [N]      the room's last N messages (default 20)
  /msg TO TEXT      a direct message to someone in your room by nick, a user, or a client ID
  /auth TOKEN       sign in (see chatd-token)
  /block WHO        no more direct messages from a client or a user; /unblock WHO
 in a room you own or moderate (WHO: a client ID, or a user; @NAME is always a user):
  /invite WHO       let a client or a user into your private room
  /kick ID [WHY]    put a member out of the room
  /ban WHO [WHY]    put out, and keep out, a client or a user
  /unban WHO        let them back
  /op ID, /deop ID  make a member a moderator, or not (the owner only)
  /delete ROOM      remove a persistent room you own (its name or ID)
  /quit             leave chatd-client
  anything else     a message to your room (start it with // to send a leading /)"""


class UsageError(Exception):
    """A line that is not a command: the message says why."""


def command(line: str) -> Optional[dict[str, Any]]:
    """The server command for one line of input; None for /quit."""
    if not line.startswith("/") or line.startswith("//"):
        return {"action": "message", "body": line[1:] if line.startswith("//") else line}
    name, _, rest = line[1:].partition(" ")
    rest = rest.strip()
    if name == "quit":
        return None
    if name in ("leave", "list", "members", "rooms"):
        return {"action": name}
    keep = name in ("create", "join") and rest.startswith("--keep")
    if keep:
        rest = rest[len("--keep"):].strip()
    if name == "create" and keep:
        if not rest:
            raise UsageError("/create needs a name")
        return {"action": "create", "body": {"name": rest, "keep": True}}
    if name in ("create", "nick"):
        if not rest:
            raise UsageError(f"/{name} needs a name")
        return {"action": name, "body": rest}
    if name == "switch":
        if not rest:
            raise UsageError("/switch needs the name or ID of a room you are in")
        return {"action": "join", "body": {"room_id": rest, "keep": True}, "switch": True}
    if name in ("private", "persistent"):
        if not rest:
            raise UsageError(f"/{name} needs a name")
        return {"action": "create", "body": {"name": rest, name: True}}
    if name == "delete":
        if not rest:
            raise UsageError("/delete needs a room's name or ID")
        return {"action": "delete", "body": {"room_id": rest}}
    if name == "read":
        return {"action": "read", "body": {"room_id": "", "id": 0}}  # made whole by Session.resolved
    if name in ("invite", "kick", "ban", "unban", "op", "deop", "block", "unblock"):
        who, _, reason = rest.partition(" ")
        by_id = name in ("kick", "op", "deop")
        if not who:
            raise UsageError(f"/{name} needs a client ID" + ("" if by_id else " or a user"))
        body: dict[str, Any] = {"client_id": who} if by_id or _CLIENT_ID.fullmatch(who) else {
            "user": who[1:] if who.startswith("@") else who}
        if reason.strip() and name in ("kick", "ban"):
            body["reason"] = reason.strip()
        return {"action": name, "body": body}
    if name == "join":
        if not rest:
            raise UsageError("/join needs a room's name or ID")
        return {"action": "join", "body": {"room_id": rest, "keep": True} if keep else {"room_id": rest}}
    if name == "auth":
        if not rest:
            raise UsageError("/auth needs a token")
        return {"action": "auth", "body": {"token": rest}}
    if name == "msg":
        to, _, text = rest.partition(" ")
        if not to or not text.strip():
            raise UsageError("/msg needs a nick, a user or a client ID, then the message")
        return {"action": "direct", "body": {"to": to, "body": text.strip()}}
    if name == "history":
        if rest and not rest.isdigit():
            raise UsageError("/history takes a number of messages")
        return {"action": "history", "body": {"limit": int(rest) if rest else 20}}
    raise UsageError(f"unknown command /{name} (try /help)")


_CLIENT_ID = re.compile(r"[0-9a-f]{8}")


class _Connection(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.factory.session.opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.session.received(payload)

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        self.factory.session.closed(code, reason)


class Session:
    """
    What both modes share: the connection, and the replies awaited.  With
    ``reconnect`` (the interactive mode), a lost connection is made again
    and the room rejoined with the last message id seen, so nothing said
    meanwhile is missed or shown twice; a client in several rooms
    (``/join --keep``) comes back to all of them in one ``sync``.  It keeps
    what a person names things by: the rooms of the last list, the room's
    members' nicks, the names of the rooms it is in.
    """

    def __init__(self, show: Callable[[bytes, Optional[dict[str, Any]]], None],
                 reconnect: Optional[Callable[[float], None]] = None) -> None:
        # show(payload, the command it answers, if it is a reply)
        self.show = show
        self.reconnect = reconnect
        self.protocol: Optional[_Connection] = None
        self.open: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[int] = defer.Deferred()
        self._awaiting: list[tuple[dict[str, Any], defer.Deferred[None]]] = []
        self.quitting = False
        self.room_id: Optional[str] = None  # the room this client is in
        self.room_name: Optional[str] = None
        self.last_id: Optional[int] = None  # the last broadcast shown from it
        self.delay = 1.0  # before the next reconnection
        self.client_id: Optional[str] = None
        self.own_ids: set[str] = set()  # this client's IDs, on every connection it made
        self.nick: Optional[str] = None
        self.user: Optional[str] = None
        self.rooms: list[dict[str, Any]] = []  # the last list
        self.members: dict[str, Optional[str]] = {}  # client ID -> nick, in the room
        # The other rooms the connection is in, in the order entered:
        # room ID -> {"name", "last_id" (the last broadcast seen), "unread"}.
        self.kept: dict[str, dict[str, Any]] = {}
        # Called each time a connection opens, a reconnection's too.
        self.on_open: Optional[Callable[[], None]] = None

    def opened(self, protocol: _Connection) -> None:
        self.protocol = protocol
        self.delay = 1.0
        if not self.open.called:
            self.open.callback(None)
        elif self.kept:
            # In several rooms: back in all of them, with what was missed, at once.
            since = {room_id: room["last_id"] or 0 for room_id, room in self.kept.items()}
            if self.room_id is not None:
                since = {self.room_id: self.last_id or 0, **since}
            self.send({"action": "sync", "body": {"since": since}})
        elif self.room_id is not None:
            body: dict[str, Any] = {"room_id": self.room_id}
            if self.last_id is not None:
                body["since"] = self.last_id
            self.send({"action": "join", "body": body})
        if self.on_open is not None:
            self.on_open()

    def received(self, payload: bytes) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            self.show(payload, None)
            return
        if message.get("status") == "connected":
            self.client_id = message.get("client_id")
            self.own_ids.add(str(self.client_id))
            self.user = message.get("user") or self.user
        if "from" in message and isinstance(message.get("id"), int):
            other = self.kept.get(str(message.get("room_id")))
            if other is not None and message.get("room_id") != self.room_id:
                other["last_id"], other["unread"] = message["id"], other["unread"] + 1
            elif not message.get("direct"):
                self.last_id = message["id"]
        elif "event" in message:
            self._event(message)
        answered: Optional[defer.Deferred[None]] = None
        asked: Optional[dict[str, Any]] = None
        if "status" in message and message.get("status") != "connected" and self._awaiting:
            asked, answered = self._awaiting.pop(0)
            self._replied(asked, message)
        if "recovered" in message:
            # What was said while this client was away (shown with the
            # reply, as history is): the last of it is the last seen.
            ids = [m.get("id") for m in message.get("messages", []) if isinstance(m, dict)]
            self.last_id = max([i for i in ids if isinstance(i, int)], default=self.last_id)
        self.show(payload, asked)
        if answered is not None:
            answered.callback(None)

    def _event(self, event: dict[str, Any]) -> None:
        kind, subject = event.get("event"), event.get("client_id")
        if kind in ("kick", "deleted") and event.get("room_id") in self.kept:
            del self.kept[event["room_id"]]  # out: not to be rejoined
            return
        if event.get("room_id") != self.room_id:
            return
        if kind in ("kick", "deleted"):
            self._out_of_current()  # not to be rejoined
        elif kind == "leave":
            self.members.pop(str(subject), None)
        elif kind in ("join", "nick") and isinstance(subject, str):
            self.members[subject] = event.get("nick")
            if subject == self.client_id and kind == "nick":
                self.nick = event.get("nick")  # None: a user of that name took it

    def _out_of_current(self) -> None:
        """Out of the current room: the most recently entered of the others
        is current (as the server has it), or none."""
        self.room_id, self.room_name, self.last_id = None, None, None
        self.members = {}
        if self.kept:
            room_id = next(reversed(self.kept))
            room = self.kept.pop(room_id)
            self.room_id, self.room_name, self.last_id = room_id, room["name"], room["last_id"]

    def _replied(self, asked: dict[str, Any], message: dict[str, Any]) -> None:
        if message.get("status") != "success":
            return
        kind, body = str(asked.get("action", "")), asked.get("body")
        if kind in ("join", "create"):
            keep = isinstance(body, dict) and body.get("keep") is True
            room_id = message.get("room_id")
            if room_id != self.room_id:
                if keep and self.room_id is not None:
                    self.kept[self.room_id] = {"name": self.room_name, "last_id": self.last_id, "unread": 0}
                back = self.kept.pop(str(room_id), None)  # one it was in: as it was
                self.room_id, self.last_id = room_id, back["last_id"] if back else None
            quoted = re.search(r"'(.*)'", str(message.get("message", "")))
            self.room_name = quoted.group(1) if quoted else self.room_id
            self.members = {}
        elif kind == "leave":
            self._out_of_current()
        elif kind == "sync":
            self._synced(message)
        elif kind == "nick":
            self.nick = message.get("nick")
        elif kind == "auth":
            self.user = message.get("user")
        elif kind in ("list", "rooms"):
            found = [r for r in message.get("rooms", []) if isinstance(r, dict)]
            ids = {r.get("room_id") for r in found}
            self.rooms = found + [r for r in self.rooms if r.get("room_id") not in ids]
            for entry in found:  # where the count starts in a room entered without a message yet
                if entry.get("room_id") == self.room_id and self.last_id is None:
                    self.last_id = entry.get("last_id")
                kept = self.kept.get(str(entry.get("room_id")))
                if kept is not None and kept["last_id"] is None:
                    kept["last_id"] = entry.get("last_id")
        elif kind == "members":
            self.members = {m["client_id"]: m.get("nick") for m in message.get("members", [])
                            if isinstance(m, dict) and isinstance(m.get("client_id"), str)}

    def _synced(self, message: dict[str, Any]) -> None:
        """Back in every room a ``sync`` entered: where each stands."""
        self.kept, current = {}, None
        for entry in message.get("rooms", []):
            if not isinstance(entry, dict) or not isinstance(entry.get("room_id"), str):
                continue
            seen = [m for m in entry.get("messages", []) if isinstance(m, dict)]
            ids = [m.get("id") for m in seen]
            last_id = max([i for i in ids if isinstance(i, int)], default=entry.get("last_id"))
            room = {"name": entry.get("name"), "last_id": last_id,
                    "unread": sum(1 for m in seen if m.get("from") not in self.own_ids)}
            if entry.get("current"):
                current = (entry["room_id"], room)
            else:
                self.kept[entry["room_id"]] = room
        if current is not None:
            self.room_id, self.room_name, self.last_id = current[0], current[1]["name"], current[1]["last_id"]
        else:
            self.room_id, self.room_name, self.last_id = None, None, None
        self.members = {}

    def unread(self) -> int:
        """What arrived in the other rooms since the client last looked at them."""
        return sum(room["unread"] for room in self.kept.values())

    def resolved(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A command with the names a person typed made what the server
        takes: a room by its name in the last list, a person by nick in
        this room.  UsageError when a name is ambiguous."""
        action, body = obj.get("action"), obj.get("body")
        if action == "read":
            if self.room_id is None or not self.last_id:
                raise UsageError("/read needs a room with messages")
            return {"action": "read", "body": {"room_id": self.room_id, "id": self.last_id}}
        if obj.get("switch"):
            assert isinstance(body, dict)
            wanted = str(body["room_id"])
            mine = {self.room_id: self.room_name, **{i: r["name"] for i, r in self.kept.items()}}
            found = [i for i, name in mine.items() if i == wanted or str(name).casefold() == wanted.casefold()]
            if len(found) != 1:
                raise UsageError(f"You are in no room called {wanted!r}" if not found else
                                 f"{len(found)} of your rooms are called {wanted!r}: /switch to one of "
                                 + ", ".join(str(i) for i in found))
            return {"action": "join", "body": {"room_id": found[0], "keep": True}}
        if action in ("join", "delete") and isinstance(body, dict):
            wanted = str(body["room_id"])
            if not any(r.get("room_id") == wanted for r in self.rooms):
                named = [r for r in self.rooms if str(r.get("name", "")).casefold() == wanted.casefold()]
                if len(named) > 1:
                    ids = ", ".join(str(r["room_id"]) for r in named)
                    raise UsageError(f"{len(named)} rooms are called {wanted!r}: /join one of {ids}")
                if named:
                    return {**obj, "body": {**body, "room_id": named[0]["room_id"]}}
        if action == "direct" and isinstance(body, dict):
            wanted = str(body["to"]).casefold()
            named = [c for c, nick in self.members.items() if nick is not None and nick.casefold() == wanted]
            if len(named) == 1:
                return {**obj, "body": {**body, "to": named[0]}}
        return obj

    def send(self, obj: dict[str, Any]) -> "defer.Deferred[None]":
        assert self.protocol is not None
        d: defer.Deferred[None] = defer.Deferred()
        self._awaiting.append((obj, d))
        self.protocol.sendMessage(json.dumps(obj).encode("utf-8"))
        return d

    def answered(self) -> "defer.Deferred[Any]":
        """Fires once every command sent so far has its reply (or never will)."""
        return defer.DeferredList([d for _, d in self._awaiting], consumeErrors=True)

    def quit(self) -> None:
        self.quitting = True
        if self.protocol is not None:
            self.protocol.sendClose(1000)
        elif not self.ended.called:
            self.ended.callback(0)

    def closed(self, code: Optional[int], reason: Optional[str]) -> None:
        awaiting, self._awaiting = self._awaiting, []
        for _, d in awaiting:
            d.cancel()
        if not self.open.called:
            self.open.errback(ConnectionError(reason or "the WebSocket handshake failed"))
            return
        self.protocol = None
        if self.reconnect is not None and not self.quitting and not self.ended.called:
            # Going away, a restart, a network blip: come back, with what was missed.
            delay, self.delay = self.delay, min(self.delay * 2, 30.0)
            self.show(json.dumps({"status": "error", "message": (
                f"Connection lost ({code}{': ' + reason if reason else ''}); "
                f"reconnecting in {delay:g} s")}).encode("utf-8"), None)
            self.reconnect(delay)
            return
        if not self.ended.called:
            self.ended.callback(0 if self.quitting else 1)
            if not self.quitting:
                sys.stderr.write(f"chatd-client: connection closed ({code}{': ' + reason if reason else ''})\n")


class _Script(LineReceiver):
    """Standard input as commands, one at a time; output as JSON lines."""

    delimiter = b"\n"

    def __init__(self, session: Session) -> None:
        self.session = session

    def lineReceived(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if not line.strip():
            return
        try:
            obj = command(line)
        except UsageError as e:
            sys.stderr.write(f"chatd-client: {e}\n")
            return
        if obj is None:
            self.session.quit()
            return
        self.transport.pauseProducing()  # the next line waits for this reply
        self.session.send(obj).addBoth(lambda _: self.transport.resumeProducing())

    def connectionLost(self, reason: Any = None) -> None:
        # End of input: once every reply is in, leave.
        self.session.answered().addBoth(lambda _: self.session.quit())


class _Prompt:
    """
    The interactive mode: prompt_toolkit's line editor (cursor keys,
    history, Ctrl-R, ...) on Twisted's asyncio reactor.  Arrivals print
    above the line being typed; a message of one's own shows once the
    server has taken it.
    """

    def __init__(self, session: Session) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import InMemoryHistory

        self.session = session
        self.editor: Any = PromptSession(history=InMemoryHistory())
        # The commands the client sent of itself, whose replies are not shown.
        self._quiet: set[int] = set()
        self._typing: Any = None  # the line being typed (an asyncio future)
        self._stopped = False

    def prompt(self) -> str:
        session = self.session
        elsewhere = f" +{session.unread()}" if session.unread() else ""  # unread in the other rooms
        room = f"[{visible(str(session.room_name))}{elsewhere}] " if session.room_name else f"[no room{elsewhere}] "
        return f"{room}{visible(session.nick or session.user or 'guest')}> "

    def show(self, payload: bytes, asked: Optional[dict[str, Any]]) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            self.say(visible(payload.decode("utf-8", "replace")))
            return
        if isinstance(message, dict) and message.get("status") == "success" and asked is not None:
            action = asked.get("action")
            body = asked.get("body")
            if action in ("join", "create") and isinstance(body, dict) and body.get("keep"):
                self.send({"action": "rooms"}, shown=False)  # where each room's count starts
            if action == "rooms":
                self._with_local_counts(message)
            if action == "sync":
                self.say(describe_sync(message, self.session.own_ids))
                return
            if action == "message":
                self.say(f"[{time.strftime('%H:%M:%S')}] you: {visible(str(asked.get('body', '')))}")
                return
            if action == "direct":
                body = asked.get("body") or {}
                self.say(f"[{time.strftime('%H:%M:%S')}] you (to {visible(str(body.get('to')))}): "
                         f"{visible(str(body.get('body', '')))}")
                return
        if isinstance(message, dict) and "from" in message and message.get("room_id") != self.session.room_id \
                and message.get("room_id") in self.session.kept:
            # From another of the rooms the connection is in: which one.
            name = self.session.kept[message["room_id"]]["name"]
            self.say(f"#{visible(str(name))} {describe(message)}")
            return
        if asked is not None and id(asked) in self._quiet:
            self._quiet.discard(id(asked))
            if isinstance(message, dict) and message.get("status") == "success":
                return  # asked for by the client itself
        self.say(describe(message))

    def _with_local_counts(self, message: dict[str, Any]) -> None:
        """A ``rooms`` reply with what this client counted in the rooms it
        is in (the server counts only the lasting rooms' messages)."""
        session = self.session
        for entry in message.get("rooms", []):
            if not isinstance(entry, dict):
                continue
            kept = session.kept.get(str(entry.get("room_id")))
            if kept is not None:
                entry["unread"] = max(int(entry.get("unread") or 0), kept["unread"])
            entry["current"] = entry.get("room_id") == session.room_id

    def say(self, text: str) -> None:
        from prompt_toolkit import print_formatted_text

        # Written as text: prompt_toolkit also drops any escape character.
        print_formatted_text(text)

    def send(self, obj: dict[str, Any], shown: bool = True) -> None:
        if not shown:
            self._quiet.add(id(obj))
        self.session.send(obj)

    async def run(self) -> None:
        import asyncio

        from prompt_toolkit.patch_stdout import patch_stdout

        self.say(HELP.splitlines()[0].replace("commands:", "chatd-client: /help for commands"))
        with patch_stdout(raw=True):
            while not self._stopped:
                self._typing = asyncio.ensure_future(self.editor.prompt_async(self.prompt))
                try:
                    line = await defer.Deferred.fromFuture(self._typing)
                except (EOFError, KeyboardInterrupt):
                    self.session.quit()
                    return
                except (asyncio.CancelledError, defer.CancelledError):
                    return  # stopped: the terminal is as it was
                self.submit(line)

    def stop(self) -> None:
        """The session is over: stop reading lines (prompt_toolkit gives the
        terminal back as it found it)."""
        self._stopped = True
        if self._typing is not None and not self._typing.done():
            self._typing.cancel()

    def submit(self, line: str) -> None:
        if not line.strip():
            return
        if line.strip() == "/help":
            self.say(HELP)
            return
        try:
            obj = command(line)
            if obj is not None:
                obj = self.session.resolved(obj)
        except UsageError as e:
            self.say(f"!! {e}")
            return
        if obj is None:
            self._stopped = True
            self.session.quit()
            return
        if self.session.protocol is None:
            self.say("!! Not connected: wait for the reconnection")
            return
        self.session.send(obj)


def _endpoint(reactor: Any, url: str, cafile: Optional[str] = None, insecure: bool = False) -> tuple[Any, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"{url!r} is not a WebSocket URL like ws://localhost:8765")
    try:
        port = parts.port or (443 if parts.scheme == "wss" else 80)
    except ValueError as e:
        raise ValueError(f"{url!r}: {e}") from None
    endpoint: Any = HostnameEndpoint(reactor, parts.hostname, port, timeout=10)
    if parts.scheme == "wss":
        from twisted.internet import ssl

        if insecure:
            options: Any = ssl.CertificateOptions()  # no verification at all
        elif cafile is not None:
            try:
                with open(cafile, "rb") as f:
                    root = ssl.Certificate.loadPEM(f.read())
            except OSError as e:
                raise ValueError(f"--cafile {cafile}: {e.strerror}") from None
            except Exception:
                raise ValueError(f"--cafile {cafile}: not a PEM certificate") from None
            options = ssl.optionsForClientTLS(parts.hostname, trustRoot=root)
        else:
            options = ssl.optionsForClientTLS(parts.hostname)
        endpoint = wrapClientTLS(options, endpoint)
    return endpoint, url


async def _run(reactor: Any, args: Any, interactive: bool) -> int:
    endpoint, url = _endpoint(reactor, args.url, args.cafile, args.insecure)
    prompt: Optional[_Prompt] = None

    def show(payload: bytes, asked: Optional[dict[str, Any]]) -> None:
        if prompt is None:
            sys.stdout.buffer.write(payload.rstrip(b"\n") + b"\n")
            sys.stdout.buffer.flush()
        else:
            prompt.show(payload, asked)

    def reconnect(delay: float) -> None:
        def again() -> None:
            if session.quitting:
                return
            d = endpoint.connect(factory)
            # A failed attempt is one more lost connection: try again later.
            d.addErrback(lambda f: session.closed(None, _reason(f.value)))

        reactor.callLater(delay, again)

    session = Session(show, reconnect if interactive else None)
    # A token goes in the handshake (Authorization: Bearer), not in a command.
    token = args.token
    factory = WebSocketClientFactory(url, headers={"Authorization": f"Bearer {token}"} if token else None)
    factory.protocol = _Connection
    factory.session = session
    factory.setProtocolOptions(openHandshakeTimeout=10, autoPingInterval=0)
    try:
        await endpoint.connect(factory)
        await session.open
    except Exception as e:
        sys.stderr.write(f"chatd-client: cannot connect to {url}: {_reason(e)}\n")
        return 1
    if not interactive:
        stdio.StandardIO(_Script(session))
        return await session.ended
    prompt = _Prompt(session)
    # Room events (joins, leaves, nicks) are shown, on every connection.
    session.on_open = lambda: prompt.send({"action": "events", "body": True}, shown=False)
    session.on_open()
    prompt.send({"action": "list"})
    typing = defer.Deferred.fromCoroutine(prompt.run())
    typing.addErrback(lambda f: (sys.stderr.write(f"chatd-client: {f.getErrorMessage()}\n"), session.quit()))
    code = await session.ended
    prompt.stop()
    await typing  # the editor has put the terminal back
    return code


def _reason(e: BaseException) -> str:
    if isinstance(e, error.ConnectionRefusedError):
        return "connection refused"
    text = str(e).strip() or type(e).__name__
    if "certificate verify failed" in text or "CERTIFICATE_VERIFY_FAILED" in text:
        return ("the server's certificate is not trusted (--cafile FILE trusts it, "
                "--insecure skips the check)")
    if type(e).__name__ == "SSLError" or "SSL routines" in text:
        return f"TLS failed ({text})"
    return text.split(": ", 1)[-1] if text.startswith("Connection was refused") else text


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="chatd-client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=HELP)
    parser.add_argument("url", nargs="?", default=DEFAULT_URL, help=f"the server (default {DEFAULT_URL})")
    parser.add_argument("--token", help="authenticate with this token at the handshake (see chatd-token)")
    parser.add_argument("--cafile", help="for wss://: trust the certificate (or CA) in this PEM file")
    parser.add_argument("--insecure", action="store_true",
                        help="for wss://: do not check the server's certificate at all (tests only)")
    args = parser.parse_args(argv)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if interactive:
        # prompt_toolkit runs on asyncio: so does Twisted, then.
        import asyncio

        from twisted.internet import asyncioreactor

        asyncioreactor.install(asyncio.new_event_loop())
    from twisted.internet import reactor

    try:
        _endpoint(reactor, args.url, args.cafile, args.insecure)
    except ValueError as e:
        sys.stderr.write(f"chatd-client: {e}\n")
        return 2
    result: list[int] = []
    try:
        task.react(lambda r: defer.Deferred.fromCoroutine(_run(r, args, interactive)).addCallback(result.append))
    except SystemExit:
        pass
    return result[0] if result else 1


if __name__ == "__main__":
    sys.exit(main())
