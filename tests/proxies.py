"""
Real reverse proxies in front of chatd for the end-to-end tests: Debian's
nginx (WebSockets, X-Forwarded-For) and HAProxy (the PROXY protocol v2).
Each runs in the foreground on a free loopback port, with its files in a
temporary directory, and is killed by ``stop``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Optional

import pytest

from tests.support.raw import free_port


def proxy_binary(name: str) -> str:
    """The proxy's path; skips the test without it (fails it when CI
    sets CHATD_REQUIRE_PROXIES=1)."""
    binary = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if binary is None:
        reason = f"{name} is not installed (apt-get install -y {name})"
        if os.environ.get("CHATD_REQUIRE_PROXIES") == "1":
            pytest.fail(f"CHATD_REQUIRE_PROXIES=1 but {reason}")
        pytest.skip(reason)
    return binary


class Nginx:
    """nginx proxying WebSockets on ``port`` to chatd on ``backend``, adding
    the client's address to X-Forwarded-For (or, with ``forwarded``, setting
    only RFC 7239's Forwarded: a client's X-Forwarded-For then passes on)."""

    def __init__(self, directory: Path, backend: int, forwarded: bool = False) -> None:
        self.binary = proxy_binary("nginx")
        self.forwarded = forwarded
        self.directory = directory
        self.backend = backend
        self.port = free_port()
        self.process: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> "Nginx":
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        header = ('Forwarded "for=$remote_addr"' if self.forwarded
                  else "X-Forwarded-For $proxy_add_x_forwarded_for")
        temp = "\n".join(f"    {kind}_temp_path {d / kind};" for kind in
                         ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (d / "nginx.conf").write_text(f"""
worker_processes 1;
pid {d / "nginx.pid"};
error_log stderr notice;
events {{ worker_connections 256; }}
http {{
    access_log off;
{temp}
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://127.0.0.1:{self.backend};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_set_header {header};
        }}
    }}
}}
""")
        self.process = subprocess.Popen(
            [self.binary, "-p", str(d), "-c", str(d / "nginx.conf"), "-g", "daemon off; user root;"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        assert self.process.stdout is not None
        seen = b""
        # The master has bound its port before it starts its workers.
        for line in self.process.stdout:
            seen += line
            if b"start worker process" in line:
                return self
        raise RuntimeError(f"nginx did not start:\n{seen.decode(errors='replace')}")

    def stop(self) -> None:
        # SIGTERM: the master stops its workers too (SIGKILL would orphan them).
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class HAProxy:
    """HAProxy in TCP mode on ``port``, sending a PROXY protocol v2 header
    to chatd on ``backend``.  The test binds the frontend socket and hands
    it over (``bind fd@N``), so it accepts from the moment HAProxy starts."""

    def __init__(self, directory: Path, backend: int) -> None:
        self.binary = proxy_binary("haproxy")
        self.directory = directory
        self.backend = backend
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)
        self.port = int(self._socket.getsockname()[1])
        self.process: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> "HAProxy":
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "haproxy.cfg"
        config.write_text(f"""
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend chat
    bind fd@{self._socket.fileno()}
    default_backend chatd
backend chatd
    server chatd 127.0.0.1:{self.backend} send-proxy-v2
""")
        self.process = subprocess.Popen(
            [self.binary, "-db", "-f", str(config)], pass_fds=(self._socket.fileno(),),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._socket.close()
