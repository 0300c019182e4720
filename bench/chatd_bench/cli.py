"""
``chatd-bench``: measure chatd, and anything else that speaks the seed
protocol, with the server pinned to core 0 and this load generator to core 1.

    chatd-bench run --server chatd --scenario fanout
    chatd-bench run --server "node my-server.js {port}" --scenario max
    chatd-bench compare --repeat 3            # what `make bench` runs

Every scenario starts its server fresh, checks every delivery, and reports
both cores' load, so a run limited by the generator is flagged rather than
taken for a server result.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shlex
import signal
import socket
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from chatd_bench import loadgen

from chatd_bench.scenarios import ALSO_MEASURED, LOAD_CORE, SCENARIOS, SERVER_CORE

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

#: The servers `compare` measures, by name: a command with {port}.
SERVERS = {
    # As etc/chatd.service runs it (JSON logs on stdout), less the rate and
    # connection limits, which the benchmark would trip.
    "chatd": (
        f"{BIN / 'twistd'} --nodaemon --pidfile= chatd --log-format json "
        "--listen tcp:{port}:interface=127.0.0.1:backlog=4096 "
        "--rate-messages 0 --rate-creates 0 --rate-connections-per-ip 0 "
        "--max-connections 0 --max-connections-per-ip 0"
    ),
    # One node of a Redis cluster, and two workers on one Redis
    # ({redis} is a private redis-server started for the run, on the
    # server's cores, its CPU counted as the server's).
    "chatd-redis": (
        f"{BIN / 'twistd'} --nodaemon --pidfile= chatd --log-format json "
        "--listen tcp:{port}:interface=127.0.0.1:backlog=4096 --redis {redis} "
        "--rate-messages 0 --rate-creates 0 --rate-connections-per-ip 0 "
        "--max-connections 0 --max-connections-per-ip 0"
    ),
    "chatd-workers2": (
        f"{BIN / 'twistd'} --nodaemon --pidfile= chatd --log-format json --workers 2 "
        "--listen tcp:{port}:interface=127.0.0.1:backlog=4096 --redis {redis} "
        "--rate-messages 0 --rate-creates 0 --rate-connections-per-ip 0 "
        "--max-connections 0 --max-connections-per-ip 0"
    ),
    # With a durable store ({store} is a file in a new directory, or a
    # private PostgreSQL started for the run on the server's cores, every
    # backend's CPU counted as the server's): the seed's rooms, and rooms
    # that last (the same server, "-persistent": each message stored before
    # it is delivered and acknowledged).
    **{f"chatd-{kind}{rooms}": (
        f"{BIN / 'twistd'} --nodaemon --pidfile= chatd --log-format json "
        "--listen tcp:{port}:interface=127.0.0.1:backlog=4096 --store {store} --persistent-rooms anyone "
        "--rate-messages 0 --rate-creates 0 --rate-connections-per-ip 0 "
        "--max-connections 0 --max-connections-per-ip 0"
    ) for kind in ("sqlite", "postgresql") for rooms in ("", "-persistent")},
    # A node of a Redis cluster keeping rooms that last in PostgreSQL (both
    # private, started for the run on the server's cores, counted as its).
    **{f"chatd-redis-postgresql{rooms}": (
        f"{BIN / 'twistd'} --nodaemon --pidfile= chatd --log-format json "
        "--listen tcp:{port}:interface=127.0.0.1:backlog=4096 --redis {redis} --store {store} "
        "--persistent-rooms anyone "
        "--rate-messages 0 --rate-creates 0 --rate-connections-per-ip 0 "
        "--max-connections 0 --max-connections-per-ip 0"
    ) for rooms in ("", "-persistent")},
    "seed": f"{sys.executable} {ROOT / 'bench/peers/seed_server.py'} {{port}}",
    "seed-broadcast": f"{sys.executable} {ROOT / 'bench/peers/seed_server.py'} {{port}} --broadcast",
    "node-ws": f"node {ROOT / 'bench/peers/node/server.js'} {{port}}",
    # What any server on Twisted and Autobahn, or on Twisted alone, costs per
    # connection at least (connect scenario only: they do no chat).
    "autobahn-floor": f"{sys.executable} {ROOT / 'bench/peers/floor.py'} {{port}}",
    "twisted-floor": f"{sys.executable} {ROOT / 'bench/peers/floor.py'} {{port}} --twisted",
}
BASELINE = "seed"
#: What `compare` runs unless told otherwise: chatd against its peers.
DEFAULT_SERVERS = ["chatd", "seed", "seed-broadcast", "node-ws"]

#: What the comparison table shows of each scenario: (result key, unit, higher is better).
HEADLINES = {
    "fanout": [("delivered_per_s", "deliveries/s", True), ("p50_ms", "p50 ms", False),
               ("p99_ms", "p99 ms", False), ("max_ms", "max latency ms", False),
               ("lost", "lost", False)],
    "max": [("plateau_delivered_per_s", "deliveries/s", True),
            ("server_us_per_delivery", "server us/delivery", False),
            ("redis_us_per_delivery", "of which Redis us/delivery", False),
            ("loadgen_us_per_delivery", "generator us/delivery", False)],
    "idle": [("kib_per_connection", "KiB/connection", False)],
    "connect": [("connections_per_s", "connections/s", True),
                ("server_us_per_connection", "server us/connection", False),
                ("server_us_per_connection_abort", "server us/connection (aborted)", False)],
    "joins": [("joins_per_s", "joins/s", True), ("server_us_per_join", "server us/join", False),
              ("redis_us_per_join", "of which Redis us/join", False)],
    "memberships": [("bytes_per_extra_membership", "bytes/extra membership", False)],
    "many_rooms": [("delivered_per_s", "deliveries/s", True), ("p50_ms", "p50 ms", False),
                   ("p99_ms", "p99 ms", False), ("max_ms", "max latency ms", False),
                   ("server_us_per_delivery", "server us/delivery", False), ("lost", "lost", False)],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: The cores the server (and its Redis) may run on: "0", or "0,1" to let
#: several workers use both (the generator then shares core 1).
server_cores = str(SERVER_CORE)


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        ["taskset", "-c", server_cores, "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    for line in process.stdout:
        if b"Ready to accept connections" in line:
            return process, f"redis://127.0.0.1:{port}/0"
    raise RuntimeError("redis-server did not start")


def start_postgresql(directory: str) -> tuple[int, str, Callable[[], None]]:
    """A private PostgreSQL on the server's cores (as the postgres user
    when run as root, which PostgreSQL refuses): its postmaster's pid, its
    URL, and what stops it."""
    bindir = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
    port = free_port()
    data = os.path.join(directory, "pg")

    def run(*argv: str) -> None:
        command = ["taskset", "-c", server_cores, *argv]
        if os.geteuid() == 0:
            shutil.chown(directory, "postgres")
            command = ["taskset", "-c", server_cores, "su", "postgres", "-s", "/bin/sh", "-c", shlex.join(argv)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    run(f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "chatd", "--no-sync")
    # Durable as deployed (fsync on, synchronous commit): a commit is on disk.
    run(f"{bindir}/pg_ctl", "-D", data, "-w", "-l", f"{directory}/pg.log", "-o",
        f"-k {directory} -p {port} -c listen_addresses=127.0.0.1", "start")
    with open(f"{data}/postmaster.pid") as f:
        pid = int(f.readline())
    run(f"{bindir}/psql", "-h", "127.0.0.1", "-p", str(port), "-U", "chatd", "-d", "postgres", "-qc",
        "CREATE DATABASE chatd")
    return pid, f"postgresql://chatd@127.0.0.1:{port}/chatd", lambda: run(
        f"{bindir}/pg_ctl", "-D", data, "-w", "-m", "fast", "stop")


def start_server(command: str, port: int, redis: str = "", store: str = "") -> subprocess.Popen[bytes]:
    argv = ["taskset", "-c", server_cores, *shlex.split(command.format(port=port, redis=redis, store=store))]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited ({process.returncode}): {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"server did not listen on {port} within 30 s: {command}")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_one(server: str, scenario: str, options: dict[str, Any]) -> dict[str, Any]:
    command = SERVERS.get(server, server)
    port = free_port()
    redis, url = start_redis() if "{redis}" in command else (None, "")
    directory = tempfile.mkdtemp(prefix="chatd-bench-")
    store, also, stop_store = f"sqlite:{directory}/bench.db", [redis.pid] if redis is not None else [], None
    if "postgresql" in server and "{store}" in command:
        pid, store, stop_store = start_postgresql(directory)
        also = [*also, pid]
    loadgen.PERSISTENT_ROOMS = server.endswith("-persistent")
    try:
        process = start_server(command, port, url, store)
        try:
            import uvloop

            ALSO_MEASURED[:] = also
            result = uvloop.run(SCENARIOS[scenario](port, process.pid, **options))
        finally:
            stop_server(process)
    finally:
        if redis is not None:
            redis.kill()
            redis.wait()
        if stop_store is not None:
            stop_store()
        shutil.rmtree(directory, ignore_errors=True)
    return {"server": server, "scenario": scenario, "server_cores": server_cores, **result}


def prepare() -> None:
    """Pin this process to the load core and allow as many sockets as we may."""
    os.sched_setaffinity(0, {LOAD_CORE})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


#: The short untimed run of each server before a comparison's first round.
WARM_UP: dict[str, dict[str, Any]] = {
    "fanout": {"duration": 3},
    "max": {"step_seconds": 0.5},
    "idle": {"connections": 500},
    "connect": {"total": 500},
    "joins": {"total": 500},
    "memberships": {"connections": 100},
    "many_rooms": {"duration": 3, "also_in": 9},
}


def headline(result: dict[str, Any]) -> str:
    """One run's headline figures, those it has (Redis's share only with Redis)."""
    return ", ".join(f"{k}={result[k]}" for k, _, _ in HEADLINES[result["scenario"]] if k in result)


def summary(results: list[dict[str, Any]], servers: list[str], scenarios: list[str],
            baseline: str = BASELINE) -> str:
    lines = []
    for scenario in scenarios:
        for key, unit, higher in HEADLINES[scenario]:
            if not any(key in r for r in results if r["scenario"] == scenario):
                continue  # a figure only some servers have (Redis's share), and none here
            lines.append(f"\n{scenario}: {unit}" + ("" if higher else " (lower is better)"))
            base: Optional[float] = None
            rows = []
            for server in servers:
                values = [r[key] for r in results
                          if r["server"] == server and r["scenario"] == scenario and key in r]
                if not values:
                    continue
                median = statistics.median(values)
                if server == baseline:
                    base = median
                flags = sum(1 for r in results if r["server"] == server and r["scenario"] == scenario
                            and (r.get("loadgen_limited") or r.get("errors")))
                rows.append((server, median, min(values), max(values), flags))
            for server, median, low, high, flags in rows:
                ratio = ""
                if base not in (None, 0) and median:
                    r = median / base if higher else base / median  # >1: better than the seed
                    ratio = f"{r:6.2f}x"
                note = f"  ({flags} runs flagged)" if flags else ""
                lines.append(f"  {server:15} {median:>12,.2f}   [{low:,.2f} .. {high:,.2f}]  {ratio}{note}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["capacity"]:
        # Arithmetic on a results file: no server, no cores to pin.
        from chatd_bench import capacity

        return capacity.main(argv[1:])
    parser = argparse.ArgumentParser(prog="chatd-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("capacity", help="nodes and Redis shards for a workload, from a results file "
                                    "(chatd-bench capacity --help)")
    run = sub.add_parser("run", help="one scenario against one server")
    run.add_argument("--server", default="chatd", help=f"{', '.join(SERVERS)}, or a command with {{port}}")
    run.add_argument("--scenario", choices=sorted(SCENARIOS), default="fanout")
    compare = sub.add_parser("compare", help="every server and scenario, interleaved and repeated")
    compare.add_argument("--servers", default=",".join(DEFAULT_SERVERS))
    compare.add_argument("--scenarios", default="fanout,max,idle,connect")
    compare.add_argument("--repeat", type=int, default=3)
    compare.add_argument("--output", default="bench-results.json")
    compare.add_argument("--baseline", default=BASELINE, help="the server the ratios are to")
    compare.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                         help="skip the untimed short run of each server before the first round")
    for command in (run, compare):
        command.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                             help="a scenario parameter, e.g. rooms=10 members=50 rate=200 duration=10 "
                                  "(with compare: for every scenario, which must all take it)")
        command.add_argument("--server-cores", default=str(SERVER_CORE),
                             help="cores for the server and its Redis, e.g. 0,1 for --workers 2 "
                                  "(the generator stays on core 1)")
    args = parser.parse_args(argv)
    global server_cores
    server_cores = args.server_cores
    prepare()

    options = {k: _number(v) for k, _, v in (o.partition("=") for o in args.option)}
    if args.command == "run":
        result = run_one(args.server, args.scenario, options)
        print(json.dumps(result, indent=2))  # noqa: T201 - a CLI's output, not the daemon's
        return 1 if result.get("errors") or result.get("lost") else 0

    servers = args.servers.split(",")
    scenarios = args.scenarios.split(",")
    if args.warm_up:
        # The first run of a comparison was its server's worst (new
        # processes, cold caches): each server has a short untimed one.
        for server in servers:
            run_one(server, scenarios[0], {**options, **WARM_UP[scenarios[0]]})
            print(f"warm-up  {scenarios[0]:8} {server:15} done", flush=True)  # noqa: T201
    results = []
    for round_number in range(args.repeat):
        # Interleaved, and rotated each round so that no server always runs
        # first (after the previous round's teardown) or last.
        shift = round_number % len(servers)
        order = servers[shift:] + servers[:shift]
        for scenario in scenarios:
            for server in order:
                result = run_one(server, scenario, options)
                result["round"] = round_number
                results.append(result)
                print(f"round {round_number + 1}/{args.repeat} {scenario:8} {server:15} "  # noqa: T201
                      + headline(result), flush=True)
    Path(args.output).write_text(json.dumps(results, indent=2))
    print(summary(results, servers, scenarios, args.baseline))  # noqa: T201 - the report is the output
    print(f"\nratios: >1 is better than {args.baseline}. Raw results: {args.output}")  # noqa: T201
    return 0


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


if __name__ == "__main__":
    sys.exit(main())
