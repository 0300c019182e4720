"""
chatd-bench works against every peer: a short, small run of each scenario
that must lose nothing and find nothing wrong.  (Numbers are for
docs/performance.md, never asserted here.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = str(Path(sys.executable).parent / "chatd-bench")

SMALL = {
    "fanout": ["rooms=2", "members=4", "rate=100", "duration=1"],
    "max": ["rooms=2", "members=4", "step_seconds=0.3"],
    "idle": ["connections=100", "members=10"],
    "connect": ["total=100", "concurrency=10"],
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


@pytest.mark.parametrize("server", ["seed", "seed-broadcast", "node-ws"])
def test_peers_speak_the_seed_protocol(server: str) -> None:
    if server == "node-ws":
        require_node()
    result = bench(server, "fanout")
    assert result["errors"] == [] and result["lost"] == 0 and result["sent"] > 0
