from __future__ import annotations

from typing import AsyncIterator, Awaitable, Callable

import pytest_twisted

from chatd.settings import Settings
from tests.helpers import DaemonProcess, InProcessServer, spawn_chatd, stop_chatd


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

    def start(*args: str, env: dict[str, str] | None = None) -> DaemonProcess:
        process = spawn_chatd(*args, env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        await stop_chatd(process)
