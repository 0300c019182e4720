"""
``chatd-client [URL]``: a terminal client for chatd (or any server of the
seed protocol), on Twisted and Autobahn like the daemon.

Interactive on a terminal: type a line to send it to your room, or a command
(``/help``); what arrives prints above the line you are typing.  Scriptable
otherwise: with standard input not a terminal it reads commands line by
line (each waits for its reply) and prints every server message as one
JSON object a line, then exits once the input ends and the replies are in.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import unicodedata
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, error, stdio, task
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.protocols.basic import LineReceiver

DEFAULT_URL = "ws://localhost:8765"

HELP = """commands:
  /create NAME      make a room and move into it
  /private NAME     make a private room (seen by whoever you invite) and move into it
  /join ID          move into a room
  /leave            leave your room
  /list             the rooms
  /members          who is in your room
  /nick NAME        your display name
  /history [N]      the room's last N messages (default 20)
  /msg TO TEXT      a direct message to a client ID or a user
  /block WHO        no more direct messages from a client or a user; /unblock WHO
 in a room you own or moderate (WHO: a client ID, or a user; @NAME is always a user):
  /invite WHO       let a client or a user into your private room
  /kick ID [WHY]    put a member out of the room
  /ban WHO [WHY]    put out, and keep out, a client or a user
  /unban WHO        let them back
  /op ID, /deop ID  make a member a moderator, or not (the owner only)
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
    if name in ("leave", "list", "members"):
        return {"action": name}
    if name in ("create", "nick"):
        if not rest:
            raise UsageError(f"/{name} needs a name")
        return {"action": name, "body": rest}
    if name == "private":
        if not rest:
            raise UsageError("/private needs a name")
        return {"action": "create", "body": {"name": rest, "private": True}}
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
            raise UsageError("/join needs a room ID")
        return {"action": "join", "body": {"room_id": rest}}
    if name == "msg":
        to, _, text = rest.partition(" ")
        if not to or not text.strip():
            raise UsageError("/msg needs a client ID or user, then the message")
        return {"action": "direct", "body": {"to": to, "body": text.strip()}}
    if name == "history":
        if rest and not rest.isdigit():
            raise UsageError("/history takes a number of messages")
        return {"action": "history", "body": {"limit": int(rest) if rest else 20}}
    raise UsageError(f"unknown command /{name} (try /help)")


_CLIENT_ID = re.compile(r"[0-9a-f]{8}")


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
    if "rooms" in message:
        rooms = message["rooms"] or []
        lines = [f"   {r['room_id']}  {r['name']}  ({r['members']}{', private' if r.get('private') else ''})"
                 for r in rooms]
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


def _local_time(timestamp: Any) -> str:
    if isinstance(timestamp, str):
        try:
            from datetime import datetime

            when = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
            return when.astimezone().strftime("%H:%M:%S")
        except ValueError:
            pass
    return time.strftime("%H:%M:%S")


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
    meanwhile is missed or shown twice.
    """

    def __init__(self, show: Callable[[bytes], None],
                 reconnect: Optional[Callable[[float], None]] = None) -> None:
        self.show = show
        self.reconnect = reconnect
        self.protocol: Optional[_Connection] = None
        self.open: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[int] = defer.Deferred()
        self._awaiting: list[tuple[str, defer.Deferred[None]]] = []
        self.quitting = False
        self.room_id: Optional[str] = None  # the room this client is in
        self.last_id: Optional[int] = None  # the last broadcast shown from it
        self.delay = 1.0  # before the next reconnection

    def opened(self, protocol: _Connection) -> None:
        self.protocol = protocol
        self.delay = 1.0
        if not self.open.called:
            self.open.callback(None)
        elif self.room_id is not None:
            body: dict[str, Any] = {"room_id": self.room_id}
            if self.last_id is not None:
                body["since"] = self.last_id
            self.send({"action": "join", "body": body})

    def received(self, payload: bytes) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            self.show(payload)
            return
        if "from" in message and isinstance(message.get("id"), int):
            self.last_id = message["id"]
        elif message.get("event") == "kick" and message.get("room_id") == self.room_id:
            self.room_id, self.last_id = None, None  # out: not to be rejoined
        answered: Optional[defer.Deferred[None]] = None
        if "status" in message and message.get("status") != "connected" and self._awaiting:
            kind, answered = self._awaiting.pop(0)
            self._replied(kind, message)
        if "recovered" in message:
            # What was said while this client was away (shown with the
            # reply, as history is): the last of it is the last seen.
            ids = [m.get("id") for m in message.get("messages", []) if isinstance(m, dict)]
            self.last_id = max([i for i in ids if isinstance(i, int)], default=self.last_id)
        self.show(payload)
        if answered is not None:
            answered.callback(None)

    def _replied(self, kind: str, message: dict[str, Any]) -> None:
        if message.get("status") != "success":
            return
        if kind in ("join", "create") and message.get("room_id") != self.room_id:
            self.room_id, self.last_id = message.get("room_id"), None
        elif kind == "leave":
            self.room_id, self.last_id = None, None

    def send(self, obj: dict[str, Any]) -> "defer.Deferred[None]":
        assert self.protocol is not None
        d: defer.Deferred[None] = defer.Deferred()
        self._awaiting.append((str(obj.get("action", "")), d))
        self.protocol.sendMessage(json.dumps(obj).encode("utf-8"))
        return d

    def answered(self) -> "defer.Deferred[Any]":
        """Fires once every command sent so far has its reply (or never will)."""
        return defer.DeferredList([d for _, d in self._awaiting], consumeErrors=True)

    def quit(self) -> None:
        self.quitting = True
        if self.protocol is not None:
            self.protocol.sendClose(1000)

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
                f"reconnecting in {delay:g} s")}).encode("utf-8"))
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


class _Terminal(Protocol):
    """A tiny line editor in raw mode: arrivals print above the input line."""

    prompt = "> "

    def __init__(self, session: Session) -> None:
        self.session = session
        self.buffer = ""

    def connectionMade(self) -> None:
        self.write(HELP.splitlines()[0].replace("commands:", "chatd-client: /help for commands") + "\r\n")
        self.redraw()

    def write(self, text: str) -> None:
        os.write(sys.stdout.fileno(), text.replace("\n", "\r\n").replace("\r\r\n", "\r\n").encode("utf-8"))

    def redraw(self) -> None:
        self.write("\r\x1b[2K" + self.prompt + self.buffer)

    def print_above(self, text: str) -> None:
        self.write("\r\x1b[2K" + text + "\n")
        self.redraw()

    def dataReceived(self, data: bytes) -> None:
        for char in data.decode("utf-8", "replace"):
            if char in ("\r", "\n"):
                line, self.buffer = self.buffer, ""
                self.write("\r\x1b[2K")
                self.submit(line)
                self.redraw()
            elif char in ("\x7f", "\x08"):
                self.buffer = self.buffer[:-1]
                self.redraw()
            elif char in ("\x03", "\x04"):  # Ctrl-C, Ctrl-D
                self.session.quit()
            elif char == "\x15":  # Ctrl-U
                self.buffer = ""
                self.redraw()
            elif char.isprintable():
                self.buffer += char
                self.write(char)

    def submit(self, line: str) -> None:
        if not line.strip():
            return
        if line.strip() == "/help":
            self.print_above(HELP)
            return
        try:
            obj = command(line)
        except UsageError as e:
            self.print_above(f"!! {e}")
            return
        if obj is None:
            self.session.quit()
            return
        if obj["action"] == "message":
            self.print_above(f"[{time.strftime('%H:%M:%S')}] you: {obj['body']}")
        self.session.send(obj)


def _endpoint(reactor: Any, url: str) -> tuple[Any, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"{url!r} is not a WebSocket URL like ws://localhost:8765")
    try:
        port = parts.port or (443 if parts.scheme == "wss" else 80)
    except ValueError as e:
        raise ValueError(f"{url!r}: {e}") from None
    endpoint: Any = HostnameEndpoint(reactor, parts.hostname, port, timeout=10)
    if parts.scheme == "wss":
        from twisted.internet.ssl import optionsForClientTLS

        endpoint = wrapClientTLS(optionsForClientTLS(parts.hostname), endpoint)
    return endpoint, url


async def _run(reactor: Any, url: str, interactive: bool, token: Optional[str] = None) -> int:
    endpoint, url = _endpoint(reactor, url)
    terminal: Optional[_Terminal] = None

    def show(payload: bytes) -> None:
        if terminal is None:
            sys.stdout.buffer.write(payload.rstrip(b"\n") + b"\n")
            sys.stdout.buffer.flush()
        else:
            try:
                terminal.print_above(describe(json.loads(payload)))
            except ValueError:
                terminal.print_above(visible(payload.decode("utf-8", "replace")))

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
    factory = WebSocketClientFactory(url, headers={"Authorization": f"Bearer {token}"} if token else None)
    factory.protocol = _Connection
    factory.session = session
    factory.setProtocolOptions(openHandshakeTimeout=10, autoPingInterval=0)
    try:
        await endpoint.connect(factory)
        await session.open
    except (error.ConnectError, error.DNSLookupError, ConnectionError, OSError) as e:
        sys.stderr.write(f"chatd-client: cannot connect to {url}: {_reason(e)}\n")
        return 1
    if interactive:
        terminal = _Terminal(session)
        stdio.StandardIO(terminal)
    else:
        stdio.StandardIO(_Script(session))
    return await session.ended


def _reason(e: BaseException) -> str:
    if isinstance(e, error.ConnectionRefusedError):
        return "connection refused"
    text = str(e).strip() or type(e).__name__
    return text.split(": ", 1)[-1] if text.startswith("Connection was refused") else text


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="chatd-client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=HELP)
    parser.add_argument("url", nargs="?", default=DEFAULT_URL, help=f"the server (default {DEFAULT_URL})")
    parser.add_argument("--token", help="authenticate with this token at the handshake (see chatd-token)")
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    try:
        _endpoint(reactor, args.url)
    except ValueError as e:
        sys.stderr.write(f"chatd-client: {e}\n")
        return 2
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    saved = None
    if interactive:
        import termios
        import tty

        saved = termios.tcgetattr(sys.stdin.fileno())
        tty.setraw(sys.stdin.fileno())
    result: list[int] = []
    try:
        task.react(lambda r: defer.Deferred.fromCoroutine(_run(r, args.url, interactive, args.token))
                   .addCallback(result.append))
    except SystemExit:
        pass
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
            sys.stdout.write("\r\n")
    return result[0] if result else 1


if __name__ == "__main__":
    sys.exit(main())
