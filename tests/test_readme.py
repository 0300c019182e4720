"""
The README's path, as a newcomer follows it: its commands and its code,
run as written against the real ``twistd -n chatd`` (the address swapped
for the test server's), so that the README stays true.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest_twisted
from twisted.internet.threads import deferToThread

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent


def blocks(language: str) -> list[str]:
    """The README's fenced code blocks in ``language`` ("": none named)."""
    found: list[str] = []
    current: list[str] | None = None
    kind = ""
    for line in README.splitlines():
        if line.startswith("```"):
            if current is None:
                current, kind = [], line[3:].strip()
                continue
            if kind == language:
                found.append("\n".join(current) + "\n")
            current = None
        elif current is not None:
            current.append(line)
    return found


def run(command: list[str], **options: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT, **options)  # type: ignore[call-overload]


@pytest_twisted.ensureDeferred
async def test_the_readmes_code_and_commands_work_as_written(daemon_factory, tmp_path: Path) -> None:
    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1")
    port = await chatd.wait_listening()
    here = f"localhost:{port}"

    # The log line the README quotes, as chatd prints it.
    [quoted] = [line for block in blocks("") for line in block.splitlines() if " serving " in line]
    printed = await chatd.wait_for(rb"chatd \S+ serving [^\n]*", "the serving line")
    assert printed.group(0).decode().replace(str(port), "8765").split(" ", 2)[2] == quoted.split(" ", 2)[2]

    # The Python snippet.
    [snippet] = blocks("python")
    result = await deferToThread(run, [sys.executable, "-c", snippet.replace("localhost:8765", here)])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert '"status": "connected"' in lines[0] and "Room 'Game Night' created" in lines[1]

    # The terminal client fed from a pipe.
    [pipe] = [b for b in blocks("sh") if "chatd-client" in b]
    command = pipe.strip().replace(".venv/bin/", f"{BIN}/").replace("localhost:8765", here)
    result = await deferToThread(run, ["bash", "-c", command])
    assert result.returncode == 0, result.stderr
    assert "Room 'lobby' created" in result.stdout and '"name": "lobby"' in result.stdout

    # Signed-in users: the key, and a token made with it, that chatd takes.
    [signing] = [b for b in blocks("sh") if "chatd-token" in b]
    key = tmp_path / "jwt.key"
    steps = [line.replace(".venv/bin/", f"{BIN}/").replace("/etc/chatd/jwt.key", str(key))
             for line in signing.strip().splitlines()]
    assert (await deferToThread(run, ["bash", "-c", steps[0]])).returncode == 0
    assert steps[1].startswith("twistd -n chatd --auth ")
    token = (await deferToThread(run, ["bash", "-c", steps[2]])).stdout.strip()
    signed = daemon_factory("--listen", "tcp:0:interface=127.0.0.1", *steps[1].split()[3:])
    signed_port = await signed.wait_listening()
    result = await deferToThread(run, [str(BIN / "chatd-client"), "--token", token, f"ws://127.0.0.1:{signed_port}"],
                                 input="/list\n")
    assert '"user": "ada"' in result.stdout, (result.stdout, result.stderr)


def test_the_readme_says_where_to_go_and_what_it_needs() -> None:
    assert "**http://localhost:8765/**" in README
    assert "pip install websockets" in README  # the snippet's one dependency, said
    assert "seed" not in README.lower() and "chat-server-communication" not in README
    assert len(README.splitlines()) < 200
    for link in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (ROOT / link).exists(), link
    assert os.path.exists(ROOT / "docs" / "images" / "web-client.png")
