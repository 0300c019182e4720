"""
chatd as systemd runs it: the units, socket activation, and the notify
protocol.  Needs Debian's systemd package (systemd-analyze and
systemd-socket-activate); without it these tests skip, unless
CHATD_REQUIRE_SYSTEMD=1 (set by CI) makes that a failure.
"""

from __future__ import annotations

import os
import tempfile
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.support.clients import connect
from tests.support.servers import DaemonProcess, NotifySocket, stop_chatd, twistd_path

ROOT = Path(__file__).resolve().parent.parent


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        reason = f"{tool} is not installed (Debian package: systemd)"
        if os.environ.get("CHATD_REQUIRE_SYSTEMD") == "1":
            pytest.fail(f"CHATD_REQUIRE_SYSTEMD=1 but {reason}")
        pytest.skip(reason)
    return path


def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = require("systemd-analyze")
    for name in ("chatd.service", "chatd.socket", "chatd-standalone.service"):
        text = (ROOT / "etc" / name).read_text()
        # verify insists that ExecStart's binary exists: point it at ours.
        (tmp_path / name).write_text(text.replace("/opt/chatd/bin/twistd", twistd_path()))
    for units in (["chatd.socket", "chatd.service"], ["chatd-standalone.service"]):
        result = subprocess.run(
            [analyze, "verify", *units], cwd=tmp_path, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip() == "", result.stderr


def test_the_socket_unit_and_the_service_agree() -> None:
    service = (ROOT / "etc" / "chatd.service").read_text()
    sock = (ROOT / "etc" / "chatd.socket").read_text()
    assert "FileDescriptorName=chatd" in sock
    # Plain ws:// on loopback only, behind a proxy that serves the world.
    assert "\nListenStream=127.0.0.1:8765\n" in sock
    assert "--listen systemd:domain=INET:name=chatd" in service
    assert "Type=notify" in service
    # A key only root reads reaches the dynamic user as a credential.
    assert "LoadCredential=jwt.key:/etc/chatd/jwt.key" in service and "jwt:key=%d/jwt.key" in service


def test_one_config_path_everywhere() -> None:
    for path in (ROOT / "etc").iterdir():
        text = path.read_text()
        assert "/etc/chatd.toml" not in text, path
    for doc in (ROOT / "README.md", ROOT / "docs" / "operations.md"):
        assert "/etc/chatd.toml" not in doc.read_text()


def free_port() -> int:
    """A port free on every address, IPv4 and IPv6 (the units bind [::])."""
    with socket.socket(socket.AF_INET6) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        return sock.getsockname()[1]


def socket_activated(address: str, domain: str, notify: NotifySocket, *args: str) -> tuple[DaemonProcess, int]:
    """
    chatd started by systemd-socket-activate, which binds ``address``, waits
    for the first connection, then execs twistd with LISTEN_FDS,
    LISTEN_PID and LISTEN_FDNAMES set, as systemd does.
    """
    activate = require("systemd-socket-activate")
    process = DaemonProcess()
    twistd = twistd_path()
    argv = [
        activate, "-l", address, "--fdname=chatd",
        "-E", f"NOTIFY_SOCKET={notify.path}", "-E", "WATCHDOG_USEC=2000000", "-E", "PYTHONUNBUFFERED=1",
        twistd, "-n", "--pidfile=", "chatd", "--listen", f"systemd:domain={domain}:name=chatd", *args,
    ]
    reactor.spawnProcess(process, activate, argv, env=dict(os.environ), path=tempfile.mkdtemp(prefix="chatd-"))
    return process, int(address.rsplit(":", 1)[-1])


@pytest_twisted.ensureDeferred
async def test_socket_activation_notify_watchdog_and_drain(tmp_path: Path) -> None:
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    chatd, port = socket_activated(f"127.0.0.1:{free_port()}", "INET", notify)
    try:
        await chatd.wait_for(rb"Listening on 127\.0\.0\.1:\d+ as 3", "the activation socket")
        # The first connection is what starts chatd; it waits in the backlog.
        a = await connect(port)
        b = await connect(port)
        await notify.wait_for("READY=1")
        a_id = (await a.next())["client_id"]
        await b.next()
        room_id = (await a.request({"action": "create", "body": "activated"}))["room_id"]
        await b.request({"action": "join", "body": {"room_id": room_id}})
        await a.request({"action": "message", "body": "hi"})
        assert (await b.next())["from"] == a_id
        await notify.wait_for("WATCHDOG=1")  # every WATCHDOG_USEC/2

        chatd.signal("TERM")
        await notify.wait_for("STOPPING=1")
        assert (await a.wait_closed())[0] == 1001
        assert (await b.wait_closed())[0] == 1001
        assert await chatd.wait_exit() == 0
        assert [m for m in notify.received if m != "WATCHDOG=1"] == ["READY=1", "STOPPING=1"]
    finally:
        await stop_chatd(chatd)
        await notify.close()


@pytest_twisted.ensureDeferred
async def test_the_dual_stack_socket_of_the_unit_counts_ipv4_clients_by_address(tmp_path: Path) -> None:
    # ListenStream=8765 with BindIPv6Only=both: one [::] socket for IPv4 too.
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    chatd, port = socket_activated(
        f"[::]:{free_port()}", "INET6", notify, "--max-connections-per-ip", "1", "--limit-loopback")
    try:
        await chatd.wait_for(rb"Listening on \[::\]:\d+ as 3", "the activation socket")
        first = await connect(port)
        assert (await first.next())["status"] == "connected"
        await chatd.wait_for(rb"connected from tcp6:::ffff:127\.0\.0\.1:", "a mapped IPv4 peer")
        with pytest.raises(ConnectionError, match="503"):
            await connect(port)  # the same IPv4 address, counted once
        await first.close()
    finally:
        await stop_chatd(chatd)
        await notify.close()
