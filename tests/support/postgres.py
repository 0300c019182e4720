"""
A throwaway PostgreSQL cluster for the tests, from Debian's ``postgresql``
package: ``initdb`` into a directory of its own, ``pg_ctl start`` on a free
loopback port, a database per test, ``pg_ctl stop`` afterwards.  The server
refuses to run as root, so as root it runs as the ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from typing import Optional

from tests.support.raw import free_port

REQUIRE = "CHATD_REQUIRE_POSTGRES"


def postgres_bin() -> Optional[str]:
    """The directory of ``initdb`` and ``pg_ctl`` (None: not installed)."""
    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(directory, "initdb")):
            return directory
    found = shutil.which("initdb")
    return os.path.dirname(found) if found else None


class PostgresServer:
    """A private PostgreSQL server on 127.0.0.1, trusting its one user ``chatd``."""

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="chatd-pg-")
        self.data = os.path.join(self.dir, "data")
        self._databases = 0

    def _run(self, *argv: str) -> None:
        command = list(argv)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            command = ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(f"'{a}'" for a in argv)]
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        if result.returncode:
            raise RuntimeError(f"{argv[0]} failed:\n{result.stdout.decode(errors='replace')}")

    def start(self) -> "PostgresServer":
        if not os.path.exists(self.data):
            self._run(os.path.join(self.bindir, "initdb"), "-D", self.data, "-A", "trust", "-U", "chatd",
                      "--no-sync")
        options = f"-k {self.dir} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-w", "-l",
                  os.path.join(self.dir, "log"), "-o", options, "start")
        return self

    def stop(self) -> None:
        self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-w", "-m", "fast", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://chatd@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database: its URL."""
        import psycopg

        self._databases += 1
        name = f"chatd_{self._databases}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def remove(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
