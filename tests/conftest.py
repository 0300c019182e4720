from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import pytest
import pytest_twisted

from chatd import fastpath
from chatd.settings import Settings
from tests.support.redis import ClusterNode, ClusterNodes, RedisServer, SentinelServer
from tests.support.servers import DaemonProcess, InProcessServer, spawn_chatd, stop_chatd
from tests.support.tokens import SECRET


@pytest.fixture
def fast_path_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[fastpath.Shortcuts]:
    """For a test of a shortcut itself: every fast path on, whatever
    CHATD_FASTPATH says (the end-to-end suites run both ways)."""
    monkeypatch.delenv(fastpath.SWITCH, raising=False)
    fastpath.reset()
    yield fastpath.shortcuts()
    monkeypatch.undo()
    fastpath.reset()


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[InProcessServer]:
    """A real chatd factory on a loopback port, shut down after the test."""
    running = await InProcessServer(Settings(ping_interval=0, ping_timeout=0)).start()
    yield running
    await running.stop()


@pytest_twisted.async_yield_fixture
async def server_factory() -> AsyncIterator[Callable[[Settings], Awaitable[InProcessServer]]]:
    """Starts in-process servers with the given settings; all are stopped afterwards."""
    started: list[InProcessServer] = []

    async def start(settings: Settings) -> InProcessServer:
        running = await InProcessServer(settings).start()
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop()


@pytest_twisted.async_yield_fixture
async def daemon_factory() -> AsyncIterator[Callable[..., DaemonProcess]]:
    """
    Starts the real ``twistd -n chatd`` with the given options (and optional
    ``env``); every process started is killed, if still running, afterwards.
    """
    started: list[DaemonProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, cwd: str | None = None,
              wrapper: tuple[str, ...] = ()) -> DaemonProcess:
        process = spawn_chatd(*args, env=env, cwd=cwd, wrapper=wrapper)
        started.append(process)
        return process

    yield start
    for process in started:
        await stop_chatd(process)


def redis_binary() -> str:
    """redis-server's path; skips the test without it (fails it in CI)."""
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server is not installed (apt-get install -y redis-server)"
        if os.environ.get("CHATD_REQUIRE_REDIS") == "1":
            pytest.fail(f"CHATD_REQUIRE_REDIS=1 but {reason}")
        pytest.skip(reason)
    return binary


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """
    A private redis-server for one test.  Without the binary the test skips;
    CHATD_REQUIRE_REDIS=1 (set by CI) makes that a failure.
    """
    redis = RedisServer(redis_binary())
    redis.start()
    yield redis
    redis.remove()


@pytest.fixture
def redis_server_later() -> Iterator[RedisServer]:
    """A private redis-server whose port is chosen but not started: the test
    starts it."""
    redis = RedisServer(redis_binary())
    yield redis
    redis.remove()


@pytest.fixture
def redis_with_password() -> Iterator[RedisServer]:
    """A private redis-server that takes commands only after AUTH s3cret."""
    redis = RedisServer(redis_binary(), ("--requirepass", "s3cret"))
    redis.start()
    yield redis
    redis.remove()


@pytest.fixture
def redis_shards() -> Iterator[list[RedisServer]]:
    """Two private redis-servers, the shards of one cluster."""
    binary = redis_binary()
    shards = [RedisServer(binary), RedisServer(binary)]
    try:
        for shard in shards:
            shard.start()
        yield shards
    finally:
        for shard in shards:
            shard.remove()


@pytest_twisted.async_yield_fixture
async def cluster(redis_server: RedisServer) -> AsyncIterator[Callable[..., Awaitable[ClusterNode]]]:
    """Starts cluster nodes on the test's Redis; all are stopped afterwards."""
    nodes = ClusterNodes((redis_server.url,))
    yield nodes.start
    await nodes.stop()


@pytest_twisted.async_yield_fixture
async def sharded_cluster(redis_shards: list[RedisServer]) -> AsyncIterator[Callable[..., Awaitable[ClusterNode]]]:
    """Starts cluster nodes on both of the test's Redis shards."""
    nodes = ClusterNodes(tuple(shard.url for shard in redis_shards))
    yield nodes.start
    await nodes.stop()


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer, list[SentinelServer]]]:
    """
    A master, a replica of it and three sentinels watching it as the
    service "chatd", all real (redis-sentinel, or redis-server --sentinel).
    """
    binary = redis_binary()
    sentinel_binary = shutil.which("redis-sentinel") or binary
    master = RedisServer(binary)
    replica = RedisServer(binary, ("--replicaof", "127.0.0.1", str(master.port)))
    watchers = [SentinelServer(sentinel_binary, master, "chatd", tmp_path) for _ in range(3)]
    try:
        master.start()
        replica.start()
        replica.wait_for(b"MASTER <-> REPLICA sync: Finished with success")
        for sentinel in watchers:
            sentinel.start()
        for sentinel in watchers:
            # Each knows the replica and the two other sentinels: a failover can be voted.
            sentinel.wait_for(b"+slave slave")
            sentinel.wait_for(b"+sentinel sentinel", count=2)
        yield master, replica, watchers
    finally:
        for server in (*watchers, replica, master):
            server.remove()


#: Two servers to connect to: one process twice, or two cluster nodes on
#: one Redis.  Called with Settings fields.
Deployment = Callable[..., Awaitable[tuple[InProcessServer, InProcessServer]]]


@pytest_twisted.async_yield_fixture(params=["one process", "cluster"])
async def deployment(request: Any) -> AsyncIterator[Deployment]:
    """Two servers to talk to: one process (the rooms in its memory) twice,
    or two cluster nodes on one real redis-server (the rooms in Redis)."""
    started: list[InProcessServer] = []
    redis: list[RedisServer] = []
    nodes: list[ClusterNodes] = []

    async def start(**settings: Any) -> tuple[InProcessServer, InProcessServer]:
        if request.param == "cluster":
            server = RedisServer(redis_binary())
            redis.append(server)
            server.start()
            nodes.append(ClusterNodes((server.url,)))
            return await nodes[-1].start(**settings), await nodes[-1].start(**settings)
        one = await InProcessServer(Settings(ping_interval=0, ping_timeout=0, **settings)).start()
        started.append(one)
        return one, one

    yield start
    for running in started:
        await running.stop()
    for cluster in nodes:
        await cluster.stop()
    for server in redis:
        server.remove()


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    """The shared key of tests.support.tokens, in a file for ``--auth jwt:key=``."""
    path = tmp_path / "jwt.key"
    path.write_bytes(SECRET)
    return path


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """One throwaway PostgreSQL server for the session (each test takes a
    database of its own); skips without Debian's postgresql (fails in CI)."""
    from tests.support.postgres import REQUIRE, PostgresServer, postgres_bin

    bindir = postgres_bin()
    if bindir is None:
        reason = "PostgreSQL is not installed (apt-get install -y postgresql)"
        if os.environ.get(REQUIRE) == "1":
            pytest.fail(f"{REQUIRE}=1 but {reason}")
        pytest.skip(reason)
    server = PostgresServer(bindir).start()
    yield server
    server.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: Any, tmp_path: Path) -> str:
    """A fresh durable store, for --store: an SQLite file, or a database of
    a real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:{tmp_path}/chatd.db"
    return str(request.getfixturevalue("postgres_server").new_database())
