"""``--workers``: what the parent passes on to each worker, and what it refuses."""

from __future__ import annotations

import pytest

from chatd.config import ConfigError
from chatd.settings import Settings
from chatd.workers import WorkerPool, metrics_for_worker, worker_arguments

REDIS = "redis://127.0.0.1:6379/0"


def test_a_worker_gets_the_parents_options_but_listens_on_the_inherited_sockets() -> None:
    raw = ["--workers", "4", "--listen", "tcp:8765", "--listen=unix:/run/chatd.sock",
           "--redis", REDIS, "--log-format", "json", "--metrics", "tcp:9108:interface=127.0.0.1",
           "--workers=4", "-c", "/etc/chatd/chatd.toml"]
    settings = Settings(workers=4, redis=REDIS, metrics="tcp:9108:interface=127.0.0.1")
    assert worker_arguments(raw, settings, 2, ["INET", "UNIX"]) == [
        "--redis", REDIS, "--log-format", "json", "-c", "/etc/chatd/chatd.toml",
        # The command line wins over the config file: one worker, these sockets.
        "--workers", "1", "--inherit-fd", "3:INET", "--inherit-fd", "4:UNIX",
        "--metrics", "tcp:9110:interface=127.0.0.1",
    ]


def test_metrics_ports_are_one_per_worker_or_refused() -> None:
    assert metrics_for_worker("tcp:9108", 3) == "tcp:9111"
    assert metrics_for_worker("tcp6:9108:interface=::1", 1) == "tcp6:9109:interface=::1"
    with pytest.raises(ConfigError, match="use a tcp:PORT endpoint"):
        metrics_for_worker("unix:/run/chatd-metrics.sock", 0)


def test_tls_listeners_are_refused_with_workers() -> None:
    settings = Settings(workers=2, redis=REDIS, listen=("ssl:8443:privateKey=k.pem",))
    with pytest.raises(ConfigError, match="ssl: listener is not supported"):
        WorkerPool(settings, [], reactor=None)
