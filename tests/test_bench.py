"""
chatd-bench works against every peer: a short, small run of each scenario
that must lose nothing and find nothing wrong.  (Numbers are for
docs/performance.md, never asserted here.)
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chatd_bench.cli import WARM_UP, headline, summary
from chatd_bench.scenarios import SCENARIOS
from tests.conftest import redis_binary

ROOT = Path(__file__).resolve().parent.parent
BENCH = str(Path(sys.executable).parent / "chatd-bench")

SMALL = {
    "fanout": ["rooms=2", "members=4", "rate=100", "duration=1"],
    "max": ["rooms=2", "members=4", "step_seconds=0.3"],
    "idle": ["connections=100", "members=10"],
    "connect": ["total=100", "concurrency=10"],
    # Enough joins for several of the clock ticks /proc counts CPU in.
    "joins": ["total=1000"],
    "memberships": ["connections=50", "rooms=10", "extra=3"],
    "many_rooms": ["rooms=2", "members=4", "also_in=5", "rate=100", "duration=1"],
}


def bench(server: str, scenario: str) -> dict:
    argv = [BENCH, "run", "--server", server, "--scenario", scenario]
    for option in SMALL[scenario]:
        argv += ["--option", option]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(result.stdout)


def require_node() -> None:
    missing = None
    if shutil.which("node") is None:
        missing = "node is not installed"
    elif not (ROOT / "bench" / "peers" / "node" / "node_modules" / "ws").exists():
        missing = "the Node peer's packages are not installed (cd bench/peers/node && npm ci)"
    if missing:
        if os.environ.get("CHATD_REQUIRE_NODE") == "1":
            pytest.fail(f"CHATD_REQUIRE_NODE=1 but {missing}")
        pytest.skip(missing)


@pytest.mark.parametrize("scenario", sorted(SMALL))
def test_chatd(scenario: str) -> None:
    result = bench("chatd", scenario)
    assert result["errors"] == []
    assert result.get("lost", 0) == 0
    if scenario == "idle":
        assert result["all_reached"] and result["connections"] == 100
    if scenario == "memberships":
        assert result["extra_memberships"] == 150
    if scenario == "many_rooms":
        assert result["rooms_per_member"] == 6 and result["sent"] > 0


@pytest.mark.parametrize("server", ["seed", "seed-broadcast", "node-ws"])
def test_peers_speak_the_seed_protocol(server: str) -> None:
    if server == "node-ws":
        require_node()
    result = bench(server, "fanout")
    assert result["errors"] == [] and result["lost"] == 0 and result["sent"] > 0


@pytest.mark.parametrize("server", ["autobahn-floor", "twisted-floor"])
def test_the_floor_servers_take_connections_both_ways(server: str) -> None:
    # They answer the handshake with a welcome and close on the client's
    # close frame, or see it abort: both variants of the connect scenario.
    result = bench(server, "connect")
    assert result["errors"] == []
    # Every connection of both variants was welcomed and counted.
    assert result["connections_per_s"] > 0 and result["connections_per_s_abort"] > 0


def test_the_narrow_measures_run() -> None:
    # bench/connection_cost.py in process; bench/publish_cost.py against a
    # private redis-server.
    cost = subprocess.run([sys.executable, str(ROOT / "bench" / "connection_cost.py"), "200"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert cost.returncode == 0, cost.stderr[-2000:]
    assert cost.stdout.endswith(" us per connection\n")
    redis_binary()
    publish = subprocess.run([sys.executable, str(ROOT / "bench" / "publish_cost.py"), "50", "8"],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert publish.returncode == 0, publish.stderr[-2000:]
    assert publish.stdout.endswith(" us of Redis per message\n")


@pytest.mark.parametrize("server", ["chatd-redis", "chatd-workers2"])
def test_cluster_servers(server: str) -> None:
    redis_binary()
    result = bench(server, "max")
    assert result["errors"] == [] and result["lost"] == 0
    # The server's CPU includes its Redis's, which is also given alone.
    assert 0 < result["redis_us_per_delivery"] < result["server_us_per_delivery"]
    assert result["loadgen_us_per_delivery"] > 0


def test_the_summary_shows_redis_only_for_the_servers_that_have_it() -> None:
    results = [
        {"server": "chatd", "scenario": "max", "plateau_delivered_per_s": 100.0,
         "server_us_per_delivery": 1.0, "loadgen_us_per_delivery": 0.5},
        {"server": "chatd-redis", "scenario": "max", "plateau_delivered_per_s": 150.0,
         "server_us_per_delivery": 2.0, "redis_us_per_delivery": 0.5, "loadgen_us_per_delivery": 0.5},
    ]
    text = summary(results, ["chatd", "chatd-redis"], ["max"], baseline="chatd")
    redis_part = text.split("max: of which Redis us/delivery")[1].split("\nmax:")[0]
    assert "chatd-redis" in redis_part and "chatd " not in redis_part
    assert "1.50x" in text  # chatd-redis's deliveries/s against chatd's
    assert "max: generator us/delivery" in text
    assert "of which Redis" not in summary(results[:1], ["chatd"], ["max"], baseline="chatd")
    # compare's line per run, with and without Redis.
    assert headline(results[0]) == (
        "plateau_delivered_per_s=100.0, server_us_per_delivery=1.0, loadgen_us_per_delivery=0.5"
    )
    assert "redis_us_per_delivery=0.5" in headline(results[1])


def test_every_scenario_has_a_warm_up_of_its_own_parameters() -> None:
    assert set(WARM_UP) == set(SCENARIOS)
    for name, options in WARM_UP.items():
        assert set(options) <= set(inspect.signature(SCENARIOS[name]).parameters), name


def test_compare_gives_every_run_the_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from chatd_bench import cli

    runs: list[tuple[str, str, dict[str, Any]]] = []

    def run_one(server: str, scenario: str, options: dict[str, Any]) -> dict[str, Any]:
        runs.append((server, scenario, options))
        return {"server": server, "scenario": scenario, "sent": 1, "delivered_per_s": 1,
                "server_us_per_delivery": 1.0}

    monkeypatch.setattr(cli, "run_one", run_one)
    monkeypatch.setattr(cli, "prepare", lambda: None)
    cli.main(["compare", "--servers", "chatd,chatd-redis", "--scenarios", "fanout", "--repeat", "1",
              "--option", "rate=8000", "--output", str(tmp_path / "out.json")])
    # The warm-up keeps its own duration; every run has the rate.
    assert runs[0] == ("chatd", "fanout", {"rate": 8000, "duration": 3})
    assert [options for _, _, options in runs[2:]] == [{"rate": 8000}, {"rate": 8000}]


def test_a_join_storm_through_two_nodes_leaves_every_joiner_a_member() -> None:
    redis_binary()
    result = bench("chatd-workers2", "joins")
    assert result["errors"] == [] and result["members"] == 1001
    # Redis's CPU is counted in the server's (Redis's alone may be under
    # one clock tick).
    assert 0 <= result["redis_us_per_join"] <= result["server_us_per_join"] and result["server_us_per_join"] > 0
