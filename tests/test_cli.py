"""
The real command line: ``twistd -n chatd`` as a child process.
"""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.fakes import HANDSHAKE
from tests.support.clients import connect, two_in_a_room
from tests.support.raw import StalledClient


@pytest_twisted.ensureDeferred
async def test_twistd_chatd_serves_the_seed_protocol_and_drains_on_sigterm(daemon_factory) -> None:
    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--shutdown-timeout", "60")
    a, a_id, b = await two_in_a_room(await chatd.wait_listening(), "Game Night")
    await a.request({"action": "message", "body": "Hello everyone!"})
    event = await b.next()
    assert (event["from"], event["body"]) == (a_id, "Hello everyone!")

    chatd.signal("TERM")
    assert (await a.wait_closed())[0] == 1001
    assert (await b.wait_closed())[0] == 1001
    # Exit 0, and because the clients answered, well before the 60 s timeout
    # would have forced them.
    assert await chatd.wait_exit() == 0
    assert b"Aborting a connection" not in chatd.output


@pytest_twisted.ensureDeferred
async def test_every_listen_option_is_served(daemon_factory, tmp_path) -> None:
    path = str(tmp_path / "chatd.sock")
    chatd = daemon_factory(
        "--listen", "tcp:0:interface=127.0.0.1", "--listen", f"unix:{path}"
    )
    port = await chatd.wait_listening()
    await chatd.wait_for(rb"starting on '?" + path.encode(), "the unix socket")
    client = await connect(port)
    assert (await client.next())["status"] == "connected"

    def unix_handshake() -> bytes:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(path)
            sock.sendall(HANDSHAKE)
            data = b""
            while b"Welcome!" not in data:
                data += sock.recv(4096)
            return data

    assert (await deferToThread(unix_handshake)).startswith(b"HTTP/1.1 101 ")
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_port_that_cannot_be_bound_stops_startup(daemon_factory) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        chatd = daemon_factory("--listen", f"tcp:{port}:interface=127.0.0.1")
        code = await chatd.wait_exit()
    assert code != 0
    assert f"chatd: cannot listen on 127.0.0.1:{port}: [Errno 98] Address already in use".encode() in chatd.output
    assert b"Traceback" not in chatd.output


def test_as_a_daemon_a_port_that_cannot_be_bound_fails_at_once(tmp_path) -> None:
    import subprocess

    from tests.support.servers import twistd_path

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # Without -n: twistd's launching process waits for the daemon's word.
        launched = subprocess.run(
            [twistd_path(), f"--pidfile={tmp_path / 'chatd.pid'}", f"--logfile={tmp_path / 'chatd.log'}",
             "chatd", "--listen", f"tcp:{port}:interface=127.0.0.1"],
            capture_output=True, timeout=60, cwd=tmp_path)
    assert launched.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}: [Errno 98] Address already in use".encode() in launched.stderr
    assert not (tmp_path / "chatd.pid").exists()


@pytest.mark.parametrize(("listen", "error"), [
    ("tpc:9000", "unknown endpoint type 'tpc' (tcp, tcp6, ssl, unix, systemd, or haproxy: before one)"),
    ("haproxy:tpc:9000", "unknown endpoint type 'tpc' (tcp, tcp6, ssl, unix, systemd, or haproxy: before one)"),
    ("ssl:9443:privateKey=/missing/key.pem", "cannot read /missing/key.pem: No such file or directory"),
    ("unix:/missing-dir/chatd.sock", "the directory /missing-dir does not exist"),
    ("systemd:domain=INET:name=chatd",
     "systemd passed no socket named 'chatd' (run chatd from its .socket unit, whose FileDescriptorName= names it)"),
])
@pytest_twisted.ensureDeferred
async def test_every_listen_mistake_is_one_line_and_status_2(daemon_factory, listen: str, error: str) -> None:
    chatd = daemon_factory("--listen", listen)
    assert await chatd.wait_exit() == 2
    assert chatd.output.decode().strip() == f"chatd: --listen {listen!r}: {error}"


@pytest_twisted.ensureDeferred
async def test_a_bad_option_stops_startup_with_status_2(daemon_factory) -> None:
    chatd = daemon_factory("--max-message-size", "-1")
    assert await chatd.wait_exit() == 2
    assert chatd.output.strip() == b"chatd: --max-message-size must be at least 1, not -1"


@pytest_twisted.ensureDeferred
async def test_a_bad_config_file_stops_startup_with_status_2(daemon_factory, tmp_path) -> None:
    path = tmp_path / "chatd.toml"
    path.write_text('listen = ["tcp:0:interface=127.0.0.1"]\nmax-message-size = -5\n')
    chatd = daemon_factory("--config", str(path))
    assert await chatd.wait_exit() == 2
    assert chatd.output.strip() == f"chatd: {path}: max-message-size must be at least 1, not -5".encode()
    assert b"starting on" not in chatd.output


@pytest_twisted.ensureDeferred
async def test_the_config_file_is_obeyed(daemon_factory, tmp_path) -> None:
    path = tmp_path / "chatd.toml"
    path.write_text('listen = ["tcp:0:interface=127.0.0.1"]\nmax-message-size = 100\n')
    chatd = daemon_factory("--config", str(path))
    port = await chatd.wait_listening()
    client = await connect(port)
    await client.next()
    client.send({"action": "message", "body": "x" * 100})
    assert (await client.wait_closed())[0] == 1009


@pytest_twisted.ensureDeferred
async def test_a_member_that_never_reads_does_not_stall_the_room_or_grow_the_server(
    daemon_factory,
) -> None:
    chatd = daemon_factory(
        "--listen", "tcp:0:interface=127.0.0.1", "--close-timeout", "60",
        "--max-outgoing-buffer", str(1024 * 1024), "--rate-messages", "0",
    )
    port = await chatd.wait_listening()
    sender = await connect(port)
    reader = await connect(port)
    await sender.next()
    await reader.next()
    room_id = (await sender.request({"action": "create", "body": "firehose"}))["room_id"]
    await reader.request({"action": "join", "body": {"room_id": room_id}})

    stalled = await deferToThread(StalledClient, port)
    await deferToThread(stalled.next)  # welcome
    joined = await deferToThread(stalled.request, {"action": "join", "body": {"room_id": room_id}})
    assert joined["status"] == "success"
    # From here on the stalled client never reads again.

    rss_before = chatd.rss_kib()
    body = "x" * 60_000
    count = 64 * 1024 * 1024 // len(body) + 1  # 64 MB of bodies
    window = 8  # the reader is fast but not infinitely so: keep 8 in flight
    received = 0
    for i in range(count):
        sender.send({"action": "message", "body": body})
        if i >= window:
            message = await reader.next()
            assert message["body"] == body
            received += 1
    while received < count:
        assert (await reader.next())["body"] == body
        received += 1
    for _ in range(count):
        assert (await sender.next())["message"] == "Message sent"

    await chatd.wait_for(rb"Dropping slow client", "the stalled client to be dropped")
    peak_growth_mib = (chatd.rss_kib("VmHWM") - rss_before) / 1024
    print(f"slow reader: {count} x {len(body)} B broadcast; server RSS before "
          f"{rss_before} KiB, peak growth {peak_growth_mib:.2f} MiB")
    # A client that was only slow finds, behind its backlog, why it was
    # dropped (the 60 s close timeout keeps the server from aborting first).
    assert await deferToThread(stalled.read_close) == (
        1008, "Outgoing buffer limit exceeded: client too slow"
    )
    stalled.close()
    # 64 MB went through the room; the server held at most the 1 MiB cap for
    # the stalled member plus working memory.
    assert peak_growth_mib < 8, f"server RSS peak grew by {peak_growth_mib:.1f} MiB"
    await sender.close()
    await reader.close()
