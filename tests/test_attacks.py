"""
The adversarial suite: each attack docs/security.md lists, run as an
attacker would, from outside, over raw sockets where the attack needs them,
against the real ``twistd -n chatd`` or a real server on loopback.  Every
test bounds what the attacker could make the server spend.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests.fakes import HANDSHAKE, client_frame
from tests.support.clients import connect, WSClient
from tests.support.raw import read_until_eof, StalledClient
from tests.support.redis import RedisServer
from tests.support.servers import InProcessServer
from tests.support.tokens import token
from tests.conftest import Deployment

MIB = 1024 * 1024

async def welcomed(server: InProcessServer) -> tuple[WSClient, str]:
    return await server.welcomed()


# -- what a connection can make the server hold ----------------------------------


@pytest_twisted.ensureDeferred
async def test_a_ping_flood_from_a_client_that_never_reads_is_cut_off(daemon_factory) -> None:
    # Each ping makes Autobahn write a pong at once.  A client that sends
    # pings and never reads must neither grow the server's memory (the
    # pongs count against its outgoing limit, and it is no longer read once
    # its buffer is full) nor keep its connection (its pings are no longer
    # traffic that puts off the ping timeout).
    chatd = daemon_factory(
        "--listen", "tcp:0:interface=127.0.0.1", "--max-outgoing-buffer", str(MIB),
        "--ping-interval", "1", "--ping-timeout", "1",
    )
    port = await chatd.wait_listening()
    budget = 64 * MIB
    rss_before = chatd.rss_kib()

    def flood() -> tuple[int, bool]:
        """Pings until the server drops the connection or the budget is spent."""
        stalled = StalledClient(port)
        burst = client_frame(b"p" * 125, opcode=9) * 512
        sent = 0
        try:
            while sent < budget:
                stalled.sock.sendall(burst)
                sent += len(burst)
        except ConnectionError:
            return sent, True
        finally:
            stalled.close()
        return sent, False

    sent, dropped = await deferToThread(flood)
    growth_mib = (chatd.rss_kib("VmHWM") - rss_before) / 1024
    assert dropped, f"the flooding client was never dropped ({sent} bytes of pings sent)"
    assert sent < budget // 2, f"the server read {sent / MIB:.1f} MiB of pings from a client that never reads"
    assert growth_mib < 8, f"server RSS peak grew by {growth_mib:.1f} MiB"
    # Everyone else is served as before.
    other = await connect(port)
    assert (await other.next())["status"] == "connected"
    await other.close()


def send_head(port: int, head: bytes) -> bytes:
    """Send ``head`` as it is; whatever the server answers, until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        try:
            sock.sendall(head)
        except ConnectionError:
            pass  # refused while still sending: what it answered is read below
        return read_until_eof(sock)


@pytest_twisted.ensureDeferred
async def test_a_request_head_that_never_ends_is_refused_at_16_kib(server: InProcessServer) -> None:
    # Autobahn would buffer it until the handshake timeout, searching all of
    # it again on every read.
    endless = b"GET / HTTP/1.1\r\nHost: localhost\r\n" + b"X-Padding: " + b"a" * 20_000
    answer = await deferToThread(send_head, server.port_number, endless)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:100]
    values = server.factory.metrics.registry.get_sample_value
    assert values("chatd_handshake_failures_total", {"reason": "too_large"}) == 1


@pytest_twisted.ensureDeferred
async def test_a_large_request_head_under_the_limit_is_accepted(server: InProcessServer) -> None:
    cookie = b"Cookie: session=" + b"c" * 12_000 + b"\r\n"
    head = HANDSHAKE[:-2] + cookie + b"\r\n"

    def handshake() -> bytes:
        with socket.create_connection(("127.0.0.1", server.port_number), timeout=20) as sock:
            sock.sendall(head)
            return sock.recv(100)

    assert (await deferToThread(handshake)).startswith(b"HTTP/1.1 101 ")


# -- who gets into a room --------------------------------------------------------


@pytest.mark.parametrize("private", [False, True], ids=["public", "private"])
@pytest_twisted.ensureDeferred
async def test_a_banned_user_cannot_come_back_by_authenticating_inside_the_room(
    deployment: Deployment, secret_file: Path, private: bool,
) -> None:
    one, two = await deployment(auth=f"jwt:key={secret_file}")
    (owner, _), (intruder, intruder_id) = await welcomed(one), await welcomed(two)
    room_id = (await owner.request({"action": "create", "body": {"name": "den", "private": private}}))["room_id"]
    assert (await owner.request({"action": "ban", "body": {"user": "bob"}}))["status"] == "success"
    if private:
        # Invited as a guest connection, by client ID: not as bob.
        await owner.request({"action": "invite", "body": {"client_id": intruder_id}})
    assert (await intruder.request({"action": "join", "body": {"room_id": room_id}}))["status"] == "success"

    refused = await intruder.request({"action": "auth", "body": {"token": token("bob")}})
    assert refused == {
        "status": "error", "message": f"'bob' is banned from room {room_id}; leave it before authenticating"}
    # Still a guest: nothing of bob's shows, and nothing of the room is bob's.
    members = (await owner.request({"action": "members"}))["members"]
    assert {"client_id": intruder_id, "nick": None, "role": "member"} in members
    await intruder.request({"action": "message", "body": "hi"})
    assert "user" not in await owner.next()
    # Out of the room, bob may authenticate, and the ban holds for him.
    await intruder.request({"action": "leave"})
    assert (await intruder.request({"action": "auth", "body": {"token": token("bob")}}))["user"] == "bob"
    rejoin = await intruder.request({"action": "join", "body": {"room_id": room_id}})
    assert rejoin["status"] == "error"
    await owner.close()
    await intruder.close()


# -- who the client is -------------------------------------------------------------


def proxied_handshake(port: int, source: str, forged: str) -> bytes:
    """A handshake from ``source`` behind a PROXY v1 header naming ``forged``."""
    header = f"PROXY TCP4 {forged} 127.0.0.1 40000 {port}\r\n".encode()
    with socket.socket() as sock:
        sock.settimeout(20)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(header + HANDSHAKE)
        return sock.recv(200)


@pytest_twisted.ensureDeferred
async def test_a_proxy_header_is_believed_only_from_a_trusted_proxy(daemon_factory) -> None:
    chatd = daemon_factory(
        "--listen", "haproxy:tcp:0:interface=127.0.0.1", "--trusted-proxy", "127.0.0.1",
        "--limit-loopback", "--max-connections-per-ip", "3",
    )
    port = int((await chatd.wait_for(rb"ChatFactory \(PROXY\) starting on (\d+)", "chatd to listen")).group(1))
    # Eight connections from 127.0.0.2, no proxy, each naming another
    # source (a trusted one among them): none is a proxy speaking.
    for i, forged in enumerate(["127.0.0.1"] + [f"127.0.5.{n}" for n in range(7)]):
        answer = await deferToThread(proxied_handshake, port, "127.0.0.2", forged)
        assert answer.startswith(b"HTTP/1.1 403 "), (i, answer[:80])
    # The proxy itself is believed.
    answer = await deferToThread(proxied_handshake, port, "127.0.0.1", "127.0.0.9")
    assert answer.startswith(b"HTTP/1.1 101 "), answer[:80]
    await chatd.wait_for(rb"connected from 127\.0\.0\.9 via", "the PROXY header's client in the log")
    assert b"127.0.5." not in chatd.output


@pytest_twisted.ensureDeferred
async def test_behind_a_proxy_that_sets_forwarded_a_clients_x_forwarded_for_is_not_read(
    daemon_factory, tmp_path: Path,
) -> None:
    from tests.proxies import Nginx

    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--forwarded-header", "forwarded")
    nginx = Nginx(tmp_path / "nginx", await chatd.wait_listening(), forwarded=True).start()
    try:
        client = await connect(nginx.port, source="127.0.0.2", headers={"X-Forwarded-For": "127.0.0.77"})
        assert (await client.next())["status"] == "connected"
        await chatd.wait_for(rb"connected from 127\.0\.0\.2 via", "the client's real address in the log")
        assert b"127.0.0.77" not in chatd.output
        await client.close()
    finally:
        nginx.stop()


@pytest_twisted.ensureDeferred
async def test_a_ban_that_overtakes_the_answer_to_a_join_on_another_node_holds(
    cluster: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from twisted.internet.defer import Deferred

    from chatd.backplane import scripts

    # Node one's answer to the join is held until the ban's kick has come
    # through the room's channel: the order a loaded node sees now and then.
    one, two = await cluster(), await cluster()
    (owner, _), (joiner, joiner_id) = await welcomed(two), await welcomed(one)
    await owner.request({"action": "events", "body": True})
    room_id = (await owner.request({"action": "create", "body": "den"}))["room_id"]
    chat = one.factory.chat
    shard = chat.shards.of(room_id)
    kick_seen: Deferred = Deferred()
    call, channel_message = shard.call, chat.channel_message

    def late_join(script: str, *args: Any) -> Deferred:
        answer = call(script, *args)
        if script is scripts.ENTER:
            answer.addCallback(lambda result: kick_seen.addCallback(lambda _: result))
        return answer

    def watched(room: str, data: bytes) -> None:
        channel_message(room, data)
        if data[:1] == b"k" and not kick_seen.called:
            kick_seen.callback(None)

    monkeypatch.setattr(shard, "call", late_join)
    monkeypatch.setattr(chat, "channel_message", watched)
    joiner.send({"action": "join", "body": {"room_id": room_id}})
    assert (await owner.next())["event"] == "join"
    assert (await owner.request({"action": "ban", "body": {"client_id": joiner_id}}))["status"] == "success"
    # The join was answered before the ban, in the order Redis ran them...
    assert (await joiner.next())["status"] == "success"
    kick = await joiner.next()
    assert (kick["event"], kick["room_id"]) == ("kick", room_id)
    # ...and it does not stand: nothing of the room is the joiner's.
    for command in ({"action": "history"}, {"action": "members"}, {"action": "message", "body": "still here?"}):
        assert await joiner.request(command) == {"status": "error", "message": "You must join a room first"}
    assert (await joiner.request({"action": "join", "body": {"room_id": room_id}}))["status"] == "error"
    members = (await owner.request({"action": "members"}))["members"]
    assert [m["client_id"] for m in members] != [] and joiner_id not in [m["client_id"] for m in members]
    await owner.close()
    await joiner.close()


@pytest_twisted.ensureDeferred
async def test_reads_of_a_room_in_a_cluster_are_checked_where_membership_is_decided(
    cluster: Any, redis_server: RedisServer,
) -> None:
    node = await cluster()
    (owner, _), (reader, reader_id) = await welcomed(node), await welcomed(node)
    room_id = (await owner.request({"action": "create", "body": "den"}))["room_id"]
    await reader.request({"action": "join", "body": {"room_id": room_id}})
    assert (await reader.request({"action": "history"}))["status"] == "success"
    # Redis says the reader is out (whatever the node thought): reads are refused.
    redis_server.command("SREM", f"chatd:client-rooms:{reader_id}", room_id)
    assert await reader.request({"action": "members"}) == {
        "status": "error", "message": "You must join a room first"}
    assert await reader.request({"action": "history"}) == {
        "status": "error", "message": "You must join a room first"}
    await owner.close()
    await reader.close()


# -- what a private room tells outsiders --------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_private_room_tells_nothing_to_a_user_banned_before_joining(
    deployment: Deployment, secret_file: Path,
) -> None:
    one, two = await deployment(auth=f"jwt:key={secret_file}")
    (owner, _), (bob, _) = await welcomed(one), await welcomed(two)
    room_id = (await owner.request({"action": "create", "body": {"name": "den", "private": True}}))["room_id"]
    await owner.request({"action": "ban", "body": {"user": "bob"}})
    await bob.request({"action": "auth", "body": {"token": token("bob")}})
    assert await bob.request({"action": "join", "body": {"room_id": room_id}}) == {
        "status": "error", "message": f"Room {room_id} does not exist"}
    await owner.close()
    await bob.close()


@pytest_twisted.ensureDeferred
async def test_list_cursors_tell_nothing_of_hidden_rooms(deployment: Deployment) -> None:
    one, two = await deployment()
    names = ["public 0", "hidden 0"] + ["public 1"] + [f"hidden 1.{i}" for i in range(8)] + ["public 2"]
    creators = [await welcomed(one) for _ in names]  # a room lives while it has a member
    spans: list[tuple[float, float]] = []  # when each create was asked, and answered
    for (creator, _), name in zip(creators, names, strict=True):
        asked = time.time()
        await creator.request({"action": "create", "body": {"name": name, "private": name.startswith("h")}})
        spans.append((asked, time.time()))
        if name == "public 0":
            # Time passes (what a cursor counts) while no room is made (what a counter would).
            await deferLater(reactor, 0.005, lambda: None)
    outsider, _ = await welcomed(two)
    cursors: list[int] = []
    page = await outsider.request({"action": "list", "body": {"limit": 1}})
    while "next" in page:
        cursors.append(int(page["next"]))
        page = await outsider.request({"action": "list", "body": {"limit": 1, "after": page["next"]}})
    assert len(cursors) == 2
    # A cursor is a creation time, in tenths of a millisecond: from the first
    # public room to the second, the time between their creates (at least
    # 50 ticks), where a counter would show the one hidden room between (2).
    (asked_first, answered_first), (asked_second, answered_second) = spans[0], spans[2]
    gap = cursors[1] - cursors[0]
    assert int((asked_second - answered_first) * 10_000) - 1 <= gap <= int((answered_second - asked_first) * 10_000) + 2
    assert gap >= 40 and cursors[0] > 1000
    for creator, _ in creators:
        await creator.close()
    await outsider.close()


# -- names that pass for someone else's ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_nicks_are_compared_as_people_read_them(deployment: Deployment, secret_file: Path) -> None:
    one, two = await deployment(auth=f"jwt:key={secret_file}")
    (alice, _), (guest, guest_id) = await welcomed(one), await welcomed(two)
    await alice.request({"action": "auth", "body": {"token": token("alice")}})
    room_id = (await alice.request({"action": "create", "body": "den"}))["room_id"]
    await guest.request({"action": "join", "body": {"room_id": room_id}})
    lookalikes = {
        "\u0430lice": "Nick 'аlice' is already taken in this room",  # a Cyrillic a
        "ALICE": "Nick 'ALICE' is already taken in this room",
        "\uff41lice": "Nick 'alice' is already taken in this room",  # a fullwidth a, normalised
        "alice\u034f": "Nick must not contain U+034F (invisible, filler or not allowed in names)",
        "alice\ufe0f": "Nick must not contain U+FE0F (invisible, filler or not allowed in names)",
        "alice\u3164": "Nick must not contain U+1160 (invisible, filler or not allowed in names)",
        "\u3164": "Nick must not contain U+1160 (invisible, filler or not allowed in names)",
        guest_id + "\u034f": "Nick must not contain U+034F (invisible, filler or not allowed in names)",
        guest_id.upper(): "Nick must not look like a client ID",
    }
    for nick, refusal in lookalikes.items():
        assert await guest.request({"action": "nick", "body": nick}) == {"status": "error", "message": refusal}
    await alice.close()
    await guest.close()


@pytest.mark.parametrize("how", ["join", "auth"])
@pytest_twisted.ensureDeferred
async def test_a_users_own_name_wins_over_a_guests_nick(
    deployment: Deployment, secret_file: Path, how: str,
) -> None:
    one, two = await deployment(auth=f"jwt:key={secret_file}")
    (guest, guest_id), (carol, carol_id) = await welcomed(one), await welcomed(two)
    await guest.request({"action": "nick", "body": "Carol"})
    await guest.request({"action": "events", "body": True})
    room_id = (await guest.request({"action": "create", "body": "den"}))["room_id"]
    if how == "join":
        await carol.request({"action": "auth", "body": {"token": token("carol")}})
        assert (await carol.request({"action": "join", "body": {"room_id": room_id}}))["status"] == "success"
        assert (await guest.next())["event"] == "join"
    else:
        await carol.request({"action": "join", "body": {"room_id": room_id}})
        assert (await guest.next())["event"] == "join"
        assert (await carol.request({"action": "auth", "body": {"token": token("carol")}}))["user"] == "carol"
    # The guest is told that its nick is gone, and it is gone everywhere.
    taken = await guest.next()
    assert (taken["event"], taken["client_id"], taken["nick"]) == ("nick", guest_id, None)
    members = {m["client_id"]: m for m in (await guest.request({"action": "members"}))["members"]}
    assert members[guest_id]["nick"] is None and members[carol_id]["user"] == "carol"
    assert (await guest.request({"action": "message", "body": "hi"}))["status"] == "success"
    assert "nick" not in await carol.next()
    await guest.close()
    await carol.close()


# -- what one client can make the server send, and keep ------------------------------


@pytest_twisted.ensureDeferred
async def test_history_replies_are_metered_by_their_size(deployment: Deployment) -> None:
    one, two = await deployment()
    (writer, _), (reader, _) = await welcomed(one), await welcomed(two)
    room_id = (await writer.request({"action": "create", "body": "archive"}))["room_id"]
    await reader.request({"action": "join", "body": {"room_id": room_id}})
    for _ in range(8):  # 8 x 60 KB: the room's history is nearly its 512 KiB
        await writer.request({"action": "message", "body": "x" * 60_000})
    for _ in range(8):
        await reader.next()
    # A 60-byte request answered with 480 KB costs the reader 30 of its 20
    # tokens: the next ones wait for the bucket to refill.
    for _ in range(30):
        reader.send({"action": "history", "body": {"limit": 100}})
    replies = [await reader.next() for _ in range(30)]
    served = [r for r in replies if r["status"] == "success"]
    assert len(served) == 1 and len(served[0]["messages"]) == 8
    assert {r["message"] for r in replies if r["status"] == "error"} == {"Rate limit exceeded"}
    assert all(r["retry_after"] > 0 for r in replies if r["status"] == "error")
    await writer.close()
    await reader.close()


@pytest_twisted.ensureDeferred
async def test_room_action_errors_do_not_tell_which_client_ids_exist(deployment: Deployment) -> None:
    one, two = await deployment()
    (owner, _), (elsewhere, elsewhere_id) = await welcomed(one), await welcomed(two)
    await owner.request({"action": "create", "body": "den"})
    for action in ("kick", "op", "deop"):
        absent = await owner.request({"action": action, "body": {"client_id": elsewhere_id}})
        unknown = await owner.request({"action": action, "body": {"client_id": "0badc0de"}})
        assert absent["message"] == f"Client {elsewhere_id} is not in this room"
        assert unknown["message"] == "Client 0badc0de is not in this room"
    await owner.close()
    await elsewhere.close()


@pytest.mark.parametrize("action", ["ban", "invite"])
@pytest_twisted.ensureDeferred
async def test_invitation_and_ban_lists_are_capped(deployment: Deployment, action: str) -> None:
    from chatd.rooms.rules import MAX_LISTED

    one, _ = await deployment(rate_commands=0)
    owner, _ = await welcomed(one)
    await owner.request({"action": "create", "body": {"name": "den", "private": True}})
    # The creator's own invitation is one entry already.
    room = MAX_LISTED - 1 if action == "invite" else MAX_LISTED
    statuses = []
    for start in range(0, room, 50):  # 50 at a time: a node answers through Redis
        batch = range(start, min(room, start + 50))
        for i in batch:
            owner.send({"action": action, "body": {"user": f"user{i}"}})
        statuses += [(await owner.next())["status"] for _ in batch]
    assert statuses == ["success"] * room
    full = await owner.request({"action": action, "body": {"user": "one too many"}})
    what = "ban" if action == "ban" else "invitation"
    assert full == {"status": "error",
                    "message": f"This room's {what} list is full ({MAX_LISTED} entries); remove some first"}
    # An entry already there is no new one.
    assert (await owner.request({"action": action, "body": {"user": "user0"}}))["status"] == "success"
    await owner.close()


# -- other people's attention ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_connection_blocks_direct_messages_from_a_user_or_a_client(
    deployment: Deployment, secret_file: Path,
) -> None:
    one, two = await deployment(auth=f"jwt:key={secret_file}")
    (pest, pest_id), (bob, bob_id), (carol, _) = await welcomed(one), await welcomed(two), await welcomed(one)
    await pest.request({"action": "auth", "body": {"token": token("pest")}})
    assert await bob.request({"action": "block", "body": {"user": "pest"}}) == {
        "status": "success", "message": "Blocked 'pest'"}
    # Answered as sent (a block is not announced), and never delivered.
    for _ in range(3):
        assert await pest.request({"action": "direct", "body": {"to": bob_id, "body": "hey"}}) == {
            "status": "success", "message": "Message sent"}
    await carol.request({"action": "direct", "body": {"to": bob_id, "body": "from carol"}})
    assert (await bob.next())["body"] == "from carol"  # nothing of pest's came before it
    # By client ID too; and an unblock lets them through again.
    assert (await bob.request({"action": "unblock", "body": {"user": "pest"}}))["status"] == "success"
    await bob.request({"action": "block", "body": {"client_id": pest_id}})
    await pest.request({"action": "direct", "body": {"to": bob_id, "body": "still me"}})
    # Carol's message reaches bob's node after pest's (on a cluster, both
    # come through Redis): once bob has it, pest's was handled, blocked.
    await carol.request({"action": "direct", "body": {"to": bob_id, "body": "after pest"}})
    assert (await bob.next())["body"] == "after pest"
    await bob.request({"action": "unblock", "body": {"client_id": pest_id}})
    await pest.request({"action": "direct", "body": {"to": bob_id, "body": "let in"}})
    assert (await bob.next())["body"] == "let in"
    assert await bob.request({"action": "unblock", "body": {"user": "nobody"}}) == {
        "status": "error", "message": "'nobody' is not blocked"}
    for client in (pest, bob, carol):
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_room_action_decided_on_a_room_that_changed_meanwhile_is_decided_again(
    cluster: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from twisted.internet.defer import Deferred

    from chatd.backplane import scripts

    # Y (a moderator, node one) kicks X while the owner (node two) makes X a
    # moderator.  Y's decision is held until the owner's is applied: applied
    # then, both would stand, which no order of the two allows (a moderator
    # may not kick a moderator; nobody can op a member who is out).
    one, two = await cluster(), await cluster()
    (owner, _), (x, x_id), (y, y_id) = await welcomed(two), await welcomed(two), await welcomed(one)
    room_id = (await owner.request({"action": "create", "body": "den"}))["room_id"]
    for member in (x, y):
        await member.request({"action": "join", "body": {"room_id": room_id}})
    await owner.request({"action": "op", "body": {"client_id": y_id}})
    shard = one.factory.chat.shards.of(room_id)
    call, held, released = shard.call, Deferred(), Deferred()

    def held_apply(script: str, *args: Any) -> Deferred:
        if script is scripts.CHANGE and not held.called:
            held.callback(None)
            return released.addCallback(lambda _: call(script, *args))
        return call(script, *args)

    monkeypatch.setattr(shard, "call", held_apply)
    y.send({"action": "kick", "body": {"client_id": x_id}})
    await held
    assert (await owner.request({"action": "op", "body": {"client_id": x_id}}))["status"] == "success"
    released.callback(None)
    # Decided again on the room as it now is: X is a moderator.
    assert await y.next() == {"status": "error", "message": "Only the room's owner may kick a moderator"}
    members = (await owner.request({"action": "members"}))["members"]
    assert {"client_id": x_id, "nick": None, "role": "moderator"} in members
    for client in (owner, x, y):
        await client.close()
