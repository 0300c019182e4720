from __future__ import annotations

from typing import AsyncIterator

import pytest_twisted

from chatd.settings import Settings
from tests.helpers import InProcessServer


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[InProcessServer]:
    """A real chatd factory on a loopback port, shut down after the test."""
    running = await InProcessServer(Settings(ping_interval=0, ping_timeout=0)).start()
    yield running
    await running.stop()
