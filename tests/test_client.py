"""
``chatd-client``: its commands, and the real program against a real chatd,
through pipes (script mode) and through a pseudo-terminal (interactive).
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, Optional

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

from chatd.client import UsageError, command
from chatd.terminal import describe
from tests.support.clients import within
from tests.support.raw import free_port
from tests.support.servers import InProcessServer

CLIENT = os.path.join(os.path.dirname(sys.executable), "chatd-client")


def test_lines_become_commands() -> None:
    assert command("hello") == {"action": "message", "body": "hello"}
    assert command("//etc/motd") == {"action": "message", "body": "/etc/motd"}
    assert command("/create Tea room") == {"action": "create", "body": "Tea room"}
    assert command("/join ab12cd34") == {"action": "join", "body": {"room_id": "ab12cd34"}}
    assert command("/history") == {"action": "history", "body": {"limit": 20}}
    assert command("/history 5") == {"action": "history", "body": {"limit": 5}}
    assert command("/nick Ada") == {"action": "nick", "body": "Ada"}
    assert command("/msg bob see you at 8") == {"action": "direct", "body": {"to": "bob", "body": "see you at 8"}}
    for name in ("leave", "list", "members"):
        assert command(f"/{name}") == {"action": name}
    assert command("/quit") is None
    assert command("/auth eyJ.x.y") == {"action": "auth", "body": {"token": "eyJ.x.y"}}
    for bad, why in [("/join", "needs a room's name or ID"), ("/msg bob", "needs a nick, a user or a client ID"),
                     ("/history x", "a number"), ("/frobnicate", "unknown command"), ("/auth", "needs a token")]:
        with pytest.raises(UsageError, match=why):
            command(bad)


def test_room_commands() -> None:
    assert command("/private Game Night") == {"action": "create", "body": {"name": "Game Night", "private": True}}
    assert command("/invite bob") == {"action": "invite", "body": {"user": "bob"}}
    assert command("/invite 9930240b") == {"action": "invite", "body": {"client_id": "9930240b"}}
    assert command("/invite @9930240b") == {"action": "invite", "body": {"user": "9930240b"}}
    assert command("/kick 9930240b too loud") == {
        "action": "kick", "body": {"client_id": "9930240b", "reason": "too loud"}}
    assert command("/ban mallory spam") == {"action": "ban", "body": {"user": "mallory", "reason": "spam"}}
    assert command("/unban mallory") == {"action": "unban", "body": {"user": "mallory"}}
    assert command("/op 9930240b") == {"action": "op", "body": {"client_id": "9930240b"}}
    assert command("/deop 9930240b") == {"action": "deop", "body": {"client_id": "9930240b"}}
    for bad, why in [("/kick", "needs a client ID$"), ("/ban", "needs a client ID or a user"),
                     ("/private", "needs a name")]:
        with pytest.raises(UsageError, match=why):
            command(bad)


def test_persistent_room_commands_and_lines() -> None:
    assert command("/persistent Team") == {"action": "create", "body": {"name": "Team", "persistent": True}}
    assert command("/rooms") == {"action": "rooms"}
    assert command("/delete Team") == {"action": "delete", "body": {"room_id": "Team"}}
    with pytest.raises(UsageError, match="needs a room's name or ID"):
        command("/delete")
    rooms = {"status": "success", "rooms": [
        {"room_id": "r1", "name": "Team", "private": False, "persistent": True, "role": "owner",
         "last_id": 9, "last_read": 4, "unread": 3},
        {"room_id": "r2", "name": "Lobby", "private": False, "persistent": False, "role": "member",
         "last_id": 2, "last_read": 2, "unread": 0}]}
    assert describe(rooms) == ("-- your rooms:\n   r1  Team  [owner]  3 unread\n"
                               "   r2  Lobby  (ends with its last member)")
    assert describe({"event": "deleted", "room_id": "r1"}).endswith("* room r1 was deleted by its owner")
    listed = {"status": "success", "rooms": [{"room_id": "r1", "name": "Team", "members": 0,
                                              "created_at": "2026-11-26T07:00:00.000Z", "persistent": True}]}
    assert describe(listed) == "-- rooms:\n   r1  Team  (0, persistent)"


def test_room_events_read_as_lines() -> None:
    stamp = "2026-11-26T07:00:00.000Z"
    assert describe({"event": "kick", "room_id": "r1", "by": "ab12cd34", "reason": "spam"}).endswith(
        "* you were put out of room r1 by ab12cd34: spam")
    assert describe({"event": "owner", "room_id": "r1", "client_id": "ab12cd34", "nick": "Ada",
                     "timestamp": stamp}).endswith("* Ada now owns the room")
    members = {"status": "success", "room_id": "r1", "members": [
        {"client_id": "ab12cd34", "nick": "Ada", "role": "owner"}, {"client_id": "cd34ef56", "nick": None,
                                                                   "role": "member"}]}
    assert describe(members) == "-- members: Ada (ab12cd34) [owner], cd34ef56"
    rooms = {"status": "success", "rooms": [{"room_id": "r1", "name": "Den", "members": 2,
                                             "created_at": stamp, "private": True}]}
    assert describe(rooms) == "-- rooms:\n   r1  Den  (2, private)"


def test_server_messages_read_as_lines() -> None:
    message = {"from": "ab12cd34", "body": "<b>hi</b>", "timestamp": "2026-11-26T07:00:00.000Z", "id": 1, "nick": "Ada"}
    assert describe(message).endswith("] Ada: <b>hi</b>")
    assert describe({"status": "error", "message": "Room x does not exist"}) == "!! Room x does not exist"
    direct = {"from": "ab12cd34", "body": "psst", "timestamp": "2026-11-26T07:00:00.000Z", "direct": True, "to": "bob"}
    assert describe(direct).endswith("] ab12cd34 (to you): psst")
    event = {"event": "join", "room_id": "r", "client_id": "ab12cd34", "nick": None, "timestamp": "2026-11-26T07:00:00.000Z"}
    assert describe(event).endswith("* ab12cd34 joined")
    assert describe({"status": "success", "room_id": "r1", "message": "Room 'x' created"}) == "-- Room 'x' created (r1)"


class Client(ProcessProtocol):
    """chatd-client as a child process; its output collected."""

    def __init__(self) -> None:
        self.output = b""
        self.errors = b""
        self.ended: Deferred = Deferred()
        self._watches: list[tuple[re.Pattern[bytes], Deferred]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for pattern, d in list(self._watches):
            if pattern.search(self.output):
                self._watches.remove((pattern, d))
                d.callback(None)

    def errReceived(self, data: bytes) -> None:
        self.errors += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)

    async def wait_for(self, pattern: bytes, what: str) -> None:
        if re.search(pattern, self.output):
            return
        d: Deferred = Deferred()
        self._watches.append((re.compile(pattern), d))
        await within(d, f"chatd-client to print {what}")

    def write(self, text: str) -> None:
        self.transport.write(text.encode("utf-8"))


def spawn(url: str, tty: bool = False, env: Optional[dict[str, str]] = None, *options: str) -> Client:
    client = Client()
    if tty:
        # The pseudo-terminal does not answer prompt_toolkit's cursor
        # position requests, as a real terminal does.
        env = {"PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm", **(env or {})}
    reactor.spawnProcess(client, CLIENT, [CLIENT, *options, url], env=dict(os.environ, **(env or {})), usePTY=tty)
    return client


@pytest_twisted.ensureDeferred
async def test_script_mode_prints_one_json_object_per_server_message(server: InProcessServer) -> None:
    other, other_id = await server.welcomed()
    room_id = (await other.request({"action": "create", "body": "pipes"}))["room_id"]
    client = spawn(f"ws://127.0.0.1:{server.port_number}")
    client.write(f"/nick Scripty\n/join {room_id}\nhello from a pipe\n/members\n")
    await client.wait_for(rb'"members": \[', "the members reply")
    message = await other.next()
    assert (message["body"], message["nick"]) == ("hello from a pipe", "Scripty")
    other.send({"action": "message", "body": "hello back"})
    await client.wait_for(rb'"hello back"', "the broadcast")
    client.transport.closeStdin()  # end of input: it leaves once answered
    assert await within(client.ended, "chatd-client to exit") == 0
    lines = [json.loads(line) for line in client.output.splitlines()]
    assert lines[0]["status"] == "connected"
    assert [line.get("message") for line in lines[1:4]] == [
        "Nick set to 'Scripty'", "Joined room 'pipes'", "Message sent"]
    assert [m["client_id"] for m in lines[4]["members"]] == [other_id, lines[0]["client_id"]]
    assert lines[5]["from"] == other_id and lines[5]["body"] == "hello back"


@pytest_twisted.ensureDeferred
async def test_script_mode_runs_a_private_room(server: InProcessServer) -> None:
    guest, guest_id = await server.welcomed()
    client = spawn(f"ws://127.0.0.1:{server.port_number}")
    client.write(f"/private Den\n/invite {guest_id}\n")
    await client.wait_for(rb"Invited", "the invitation")
    room_id = json.loads(client.output.splitlines()[1])["room_id"]
    assert (await guest.request({"action": "join", "body": {"room_id": room_id}}))["status"] == "success"
    client.write(f"/op {guest_id}\n/deop {guest_id}\n/kick {guest_id} not now\n")
    assert await guest.next() == {"event": "kick", "room_id": room_id, "by": json.loads(
        client.output.splitlines()[0])["client_id"], "reason": "not now"}
    client.transport.closeStdin()
    assert await within(client.ended, "chatd-client to exit") == 0
    replies = [json.loads(line)["message"] for line in client.output.splitlines()[1:]]
    assert replies == ["Room 'Den' created", f"Invited '{guest_id}'", f"'{guest_id}' is now a moderator",
                       f"'{guest_id}' is no longer a moderator", f"Kicked '{guest_id}'"]


@pytest_twisted.ensureDeferred
async def test_interactive_mode_in_a_terminal(server: InProcessServer) -> None:
    client = spawn(f"ws://127.0.0.1:{server.port_number}", tty=True)
    await client.wait_for(rb"/help for commands", "its greeting")
    client.write("/create Terminal room\r")
    await client.wait_for(rb"-- Room 'Terminal room' created \((\w+)\)", "the reply")
    room_id = re.search(rb"created \((\w+)\)", client.output).group(1).decode()  # type: ignore[union-attr]
    other, _ = await server.welcomed()
    await other.request({"action": "nick", "body": "Ada"})
    await other.request({"action": "join", "body": {"room_id": room_id}})
    await other.request({"action": "message", "body": "hi from Ada"})
    await client.wait_for(rb"\] Ada: hi from Ada", "Ada's message")
    await other.request({"action": "message", "body": "x\x1b[2J\n[00:00:00] Bob: forged"})
    await client.wait_for(rb"\] Ada: x\\x1b\[2J\\n\[00:00:00\] Bob: forged", "the hostile message, made visible")
    assert b"\x1b[2J" not in client.output
    client.write("typed here\r")
    assert (await other.next())["body"] == "typed here"
    client.write("/quit\r")
    assert await within(client.ended, "chatd-client to exit") == 0


@pytest_twisted.ensureDeferred
async def test_a_bad_url_or_a_refused_connection_is_one_line_and_non_zero() -> None:
    bad = spawn("http://example.org")
    assert await within(bad.ended, "chatd-client to exit") == 2
    assert bad.errors.strip() == b"chatd-client: 'http://example.org' is not a WebSocket URL like ws://localhost:8765"
    refused = spawn(f"ws://127.0.0.1:{free_port()}")  # nothing listens there
    assert await within(refused.ended, "chatd-client to exit") == 1
    assert b"cannot connect to" in refused.errors and b"connection refused" in refused.errors


TOKEN = os.path.join(os.path.dirname(sys.executable), "chatd-token")


@pytest_twisted.ensureDeferred
async def test_a_token_from_chatd_token_signs_chatd_client_in(daemon_factory: Any, tmp_path: Any) -> None:
    import subprocess

    secret = tmp_path / "jwt.key"
    secret.write_bytes(b"a shared secret of the test, long enough for HS256")
    made = subprocess.run([TOKEN, "--key", str(secret), "--name", "Ada L.", "--ttl", "600", "ada"],
                          capture_output=True, text=True, check=True)
    token = made.stdout.strip()
    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--auth", f"jwt:key={secret}",
                           "--guests", "deny")
    port = await chatd.wait_listening()
    client = spawn(f"ws://127.0.0.1:{port}", False, None, "--token", token)
    client.write("/create by token\n")
    await client.wait_for(rb"Room 'by token' created", "the create reply")
    client.transport.closeStdin()
    assert await within(client.ended, "chatd-client to exit") == 0
    welcome = json.loads(client.output.splitlines()[0])
    assert welcome["user"] == "ada"
    assert token.encode() not in chatd.output


@pytest_twisted.ensureDeferred
async def test_chatd_client_keeps_a_persistent_room_and_counts_unread(daemon_factory: Any, tmp_path: Any) -> None:
    from tests.support.tokens import SECRET, token
    from tests.test_lasting import signed_in

    secret = tmp_path / "jwt.key"
    secret.write_bytes(SECRET)
    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--auth", f"jwt:key={secret}",
                           "--store", f"sqlite:{tmp_path}/chatd.db")
    port = await chatd.wait_listening()
    alice, _ = await signed_in(port, "alice")
    room = (await alice.request({"action": "create", "body": {"name": "Team", "persistent": True}}))["room_id"]
    client = spawn(f"ws://127.0.0.1:{port}", False, None, "--token", token("bob"))
    client.write(f"/join {room}\n/leave\n")
    await client.wait_for(rb"Left room", "bob to leave")
    bob, _ = await signed_in(port, "bob")
    await bob.request({"action": "join", "body": {"room_id": room}})
    for n in range(3):
        await alice.request({"action": "message", "body": f"m{n}"})
    await bob.close()
    client.write("/rooms\n")
    await client.wait_for(rb'"unread": 3', "the rooms reply")
    client.transport.closeStdin()
    assert await within(client.ended, "chatd-client to exit") == 0
    rooms = [json.loads(line) for line in client.output.splitlines() if b'"rooms"' in line][-1]
    assert rooms["rooms"] == [{"room_id": room, "name": "Team", "private": False, "persistent": True,
                               "role": "member", "last_id": 3, "last_read": 0, "unread": 3}]


@pytest.mark.parametrize("argv, message", [
    (["--key", "/nonexistent/key", "ada"], "cannot read the key /nonexistent/key: No such file or directory"),
    (["--key", "KEY", "x" * 65], "the user name must be 1 to 64 printable characters"),
    (["--key", "KEY", "--ttl", "0", "ada"], "--ttl must be a number of seconds above 0, not 0"),
    (["--key", "PEM", "ada"], "PEM is a PEM key: chatd-token signs with a shared secret file (HS256)"),
    (["ada"], "--key PATH is needed to sign a token (make one with --new-key PATH)"),
    (["--new-key", "KEY"], "KEY exists already: a new key would lock out every token made with it"),
    (["--new-key", "NEW", "ada"], "--new-key makes a key and nothing else: no --key, no user"),
])
def test_chatd_token_refuses_bad_input_in_one_line(argv: list[str], message: str, tmp_path: Any) -> None:
    import subprocess

    (tmp_path / "KEY").write_bytes(b"secret")
    (tmp_path / "PEM").write_bytes(b"-----BEGIN PUBLIC KEY-----\n")
    run = subprocess.run([TOKEN, *argv], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr == f"chatd-token: {message}\n"


@pytest_twisted.ensureDeferred
async def test_interactive_mode_comes_back_with_what_it_missed(server: InProcessServer) -> None:
    client = spawn(f"ws://127.0.0.1:{server.port_number}", tty=True)
    await client.wait_for(rb"/help for commands", "its greeting")
    client.write("/create Steady\r")
    await client.wait_for(rb"created \((\w+)\)", "the reply")
    room_id = re.search(rb"created \((\w+)\)", client.output).group(1).decode()  # type: ignore[union-attr]
    ada, ada_id = await server.welcomed()
    await ada.request({"action": "nick", "body": "Ada"})
    await ada.request({"action": "join", "body": {"room_id": room_id}})
    await ada.request({"action": "message", "body": "number one"})
    await client.wait_for(rb"Ada: number one", "the first message")
    # The server loses the client's connection.
    for protocol in list(server.factory.connections):
        if protocol._client is not None and protocol._client.client_id != ada_id:
            protocol.transport.abortConnection()
    await client.wait_for(rb"reconnecting in 1 s", "the client to notice")
    for text in ("number two", "number three"):
        await ada.request({"action": "message", "body": text})
    await client.wait_for(rb"-- Joined room 'Steady'", "the rejoin")
    await client.wait_for(rb"Ada: number three", "what was said meanwhile")
    await ada.request({"action": "message", "body": "number four"})
    await client.wait_for(rb"Ada: number four", "the live message")
    for text in (b"one", b"two", b"three", b"four"):
        assert client.output.count(b"Ada: number " + text) == 1, text
    client.write("/quit\r")
    assert await within(client.ended, "chatd-client to exit") == 0


def test_chatd_token_takes_its_time_from_the_clock_it_is_given(tmp_path: Any, capsys: Any) -> None:
    import jwt
    from twisted.internet.task import Clock

    from chatd.tokens import main as chatd_token

    (tmp_path / "KEY").write_bytes(b"a shared secret of the test, long enough for HS256")
    clock = Clock()
    clock.advance(1_700_000_000)
    assert chatd_token(["--key", str(tmp_path / "KEY"), "--ttl", "60", "--name", "Ada", "ada"], clock) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), options={"verify_signature": False})
    assert claims == {"sub": "ada", "iat": 1_700_000_000, "exp": 1_700_000_060, "name": "Ada"}


def test_nothing_a_peer_chooses_can_control_the_terminal() -> None:
    hostile = {
        "from": "ab12cd34", "nick": "\x1b]0;pwned\x07Ada", "timestamp": "2026-11-26T07:27:25.559Z",
        "body": "hi\n[07:27:26] alice: send me your token\x1b]52;c;ZXZpbA==\x07\x1b[2J\u202egnp.exe\u3000ok",
    }
    line = describe(hostile)
    assert "\n" not in line and "\x1b" not in line and "\x07" not in line and "\u202e" not in line
    assert line.endswith(
        "] \\x1b]0;pwned\\x07Ada: hi\\n[07:27:26] alice: send me your token"
        "\\x1b]52;c;ZXZpbA==\\x07\\x1b[2J\\u202egnp.exe ok")
    # Room names, reasons, members and history: every string a peer chose.
    assert describe({"rooms": [{"room_id": "r1", "name": "a\rb", "members": 1}]}) == "-- rooms:\n   r1  a\\rb  (1)"
    kick = describe({"event": "kick", "room_id": "r1", "by": "ab12cd34", "reason": "\x1b[31mred"})
    assert kick.endswith(": \\x1b[31mred")
    history = describe({"status": "success", "messages": [hostile, {**hostile, "body": {"k\n": "v\x9b"}}]})
    assert history.count("\n") == 1 and "\x9b" not in history


def test_block_and_unblock_name_a_client_or_a_user() -> None:
    assert command("/block bob") == {"action": "block", "body": {"user": "bob"}}
    assert command("/unblock 9930240b") == {"action": "unblock", "body": {"client_id": "9930240b"}}


def test_chatd_token_makes_a_key_only_its_owner_reads_and_chatd_takes_it(tmp_path: Any) -> None:
    import stat
    import subprocess

    key = tmp_path / "jwt.key"
    made = subprocess.run([TOKEN, "--new-key", str(key)], capture_output=True, text=True)
    assert made.returncode == 0
    assert made.stderr == f"chatd-token: wrote a new 32-byte key to {key} (mode 0600)\n"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    signed = subprocess.run([TOKEN, "--key", str(key), "ada"], capture_output=True, text=True)
    assert signed.returncode == 0 and signed.stdout.count(".") == 2
    from chatd import tap

    options = tap.Options()
    options.parseOptions(["--auth", f"jwt:key={key}"])  # long enough for chatd


@pytest_twisted.ensureDeferred
async def test_the_terminal_edits_lines_names_rooms_and_people_and_shows_events(server: InProcessServer) -> None:
    bea, _ = await server.welcomed()
    await bea.request({"action": "nick", "body": "Bea"})
    await bea.request({"action": "create", "body": "Den"})
    client = spawn(f"ws://127.0.0.1:{server.port_number}", tty=True)
    await client.wait_for(rb"/help for commands", "its greeting")
    await client.wait_for(rb"Den", "the room list, asked for at the start")
    # A room by its name; the prompt says where one is and who.
    client.write("/join Den\r")
    await client.wait_for(rb"-- Joined room 'Den'", "the join")
    await client.wait_for(rb"\[Den\] guest>", "the prompt with the room")
    client.write("/nick Ada\r")
    await client.wait_for(rb"\[Den\] Ada>", "the prompt with the nick")
    # Events are shown: someone comes in.
    cy, cy_id = await server.welcomed()
    await cy.request({"action": "nick", "body": "Cy"})
    await cy.request({"action": "join", "body": {"room_id": (await bea.request({"action": "members"}))["room_id"]}})
    await client.wait_for(rb"\* Cy joined", "the join event")
    # Arrow keys move the cursor instead of landing in the message.
    client.write("helo\x1b[Dl\r")
    assert (await bea.next())["body"] == "hello"
    await client.wait_for(rb"\] you: hello", "its own message, once the server took it")
    assert b"Message sent" not in client.output
    # Up brings back what was typed.
    client.write("\x1b[A\r")
    assert (await bea.next())["body"] == "hello"
    # A person by nick, in the room.
    await client.wait_for(rb"Cy", "Cy among the members")
    client.write("/members\r")
    await client.wait_for(rb"-- members: .*Cy", "the member list")
    client.write("/msg cy psst\r")
    direct = await cy.next()
    while "direct" not in direct:
        direct = await cy.next()
    assert (direct["body"], direct["to"]) == ("psst", cy_id)
    client.write("/quit\r")
    assert await within(client.ended, "chatd-client to exit") == 0
    for other in (bea, cy):
        await other.close()


@pytest_twisted.ensureDeferred
async def test_the_terminal_keeps_several_rooms_and_comes_back_to_all(server: InProcessServer) -> None:
    bea, bea_id = await server.welcomed()
    await bea.request({"action": "nick", "body": "Bea"})
    den = (await bea.request({"action": "create", "body": {"name": "Den", "keep": True}}))["room_id"]
    attic = (await bea.request({"action": "create", "body": {"name": "Attic", "keep": True}}))["room_id"]
    client = spawn(f"ws://127.0.0.1:{server.port_number}", tty=True)
    await client.wait_for(rb"Attic", "the room list, asked for at the start")
    client.write("/join Den\r")
    await client.wait_for(rb"\[Den\] guest>", "the prompt in Den")
    client.write("/join --keep Attic\r")
    await client.wait_for(rb"\[Attic\] guest>", "the prompt in Attic, Den kept")
    # A message to the room it is not looking at: named, and counted.
    await bea.request({"action": "message", "room_id": den, "body": "in the den"})
    await client.wait_for(rb"#Den \[[0-9:]+\] Bea: in the den", "the message naming its room")
    await client.wait_for(rb"\[Attic \+1\] guest>", "the unread count in the prompt")
    client.write("/rooms\r")
    await client.wait_for(rb"Den  1 unread", "the count in /rooms")
    client.write("/switch den\r")
    await client.wait_for(rb"\[Den\] guest>", "the prompt back in Den, nothing unread")
    client.write("to den\r")
    assert (await bea.next())["body"] == "to den"
    client.write("/switch Cellar\r")
    await client.wait_for(rb"!! You are in no room called 'Cellar'", "a room it is not in")
    # The connection is lost; both rooms come back in one sync, with what was missed.
    for protocol in list(server.factory.connections):
        if protocol._client is not None and protocol._client.client_id != bea_id:
            protocol.transport.abortConnection()
    await client.wait_for(rb"reconnecting in 1 s", "the client to notice")
    await bea.request({"action": "message", "room_id": attic, "body": "while away"})
    await client.wait_for(rb"-- back in 2 rooms: Den, Attic \(1 unread\)", "the sync")
    await client.wait_for(rb"#Attic \[[0-9:]+\] Bea: while away", "what was said meanwhile")
    await bea.request({"action": "message", "room_id": den, "body": "live"})
    await client.wait_for(rb"\] Bea: live", "the live message in the current room")
    assert client.output.count(b"while away") == 1
    client.write("/quit\r")
    assert await within(client.ended, "chatd-client to exit") == 0
    await bea.close()
