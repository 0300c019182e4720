"""
The HTTP server API on the real ``twistd -n chatd``, alone and as a node of
a two-node cluster: keys, JSON errors, and the rooms, private ones too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from tests.support.raw import http_request
from tests.test_lasting import guest

KEY = "k3y-for-the-tests-only-0123456789"


@pytest.fixture(params=["one process", "cluster"])
def api(request: Any, daemon_factory: Any, tmp_path: Path) -> Any:
    """Start chatd with the API (a cluster: two nodes, the API on the second):
    an awaitable of (the WebSocket port, the API's base URL)."""
    keys = tmp_path / "api-keys"
    keys.write_text(f"# the tests' key\n\n{KEY}\nanother-key\n")

    async def start() -> tuple[int, str]:
        args = ("--listen", "tcp:0:interface=127.0.0.1", "--store", "memory", "--ping-interval", "0")
        with_api = (*args, "--api", "tcp:0:interface=127.0.0.1", "--api-keys", str(keys))
        if request.param == "one process":
            node = daemon_factory(*with_api)
            port = int(await node.wait_listening())
            return port, f"http://127.0.0.1:{await node.wait_api()}"
        redis = request.getfixturevalue("redis_server")
        first = daemon_factory(*args, "--redis", redis.url)
        second = daemon_factory(*with_api, "--redis", redis.url)
        port = int(await first.wait_listening())
        await guest(int(await second.wait_listening()))  # welcomed once it is in step with Redis
        return port, f"http://127.0.0.1:{await second.wait_api()}"

    return start


async def call(method: str, url: str, key: str = KEY, **headers: str) -> tuple[int, Any]:
    status, _, body = await http_request(method, url, {"Authorization": f"Bearer {key}", **headers})
    return status, json.loads(body)


@pytest_twisted.ensureDeferred
async def test_the_api_lists_every_room_private_ones_too(api: Any) -> None:
    port, base = await api()
    owner, _ = await guest(port)
    public = (await owner.request({"action": "create", "body": {"name": "Lobby", "keep": True}}))["room_id"]
    private = (await owner.request({"action": "create", "body": {"name": "Den", "private": True, "keep": True}}))[
        "room_id"]
    status, listed = await call("GET", f"{base}/v1/rooms")
    assert status == 200
    assert [(r["room_id"], r["name"], r["members"], r.get("private", False)) for r in listed["rooms"]] == [
        (public, "Lobby", 1, False), (private, "Den", 1, True)]
    assert "next" not in listed
    # Paged as the WebSocket's list is; the second key works as well as the first.
    status, first = await call("GET", f"{base}/v1/rooms?limit=1", key="another-key")
    assert status == 200 and [r["room_id"] for r in first["rooms"]] == [public]
    status, rest = await call("GET", f"{base}/v1/rooms?limit=1&after={first['next']}")
    assert [r["room_id"] for r in rest["rooms"]] == [private]


@pytest_twisted.ensureDeferred
async def test_the_api_refuses_what_it_should_in_json(api: Any) -> None:
    _, base = await api()
    for key in ("", "wrong", KEY + "x", KEY[:-1]):
        status, headers, body = await http_request("GET", f"{base}/v1/rooms", {"Authorization": f"Bearer {key}"})
        assert (status, json.loads(body)) == (
            401, {"error": "A valid API key is required: Authorization: Bearer KEY"}), key
        assert headers["content-type"] == "application/json" and headers["www-authenticate"] == 'Bearer realm="chatd"'
    status, _, body = await http_request("GET", f"{base}/v1/rooms")
    assert status == 401
    assert await call("GET", f"{base}/v1/nothing") == (404, {"error": "No such endpoint: /v1/nothing"})
    assert await call("DELETE", f"{base}/v1/rooms") == (405, {"error": "DELETE is not allowed on /v1/rooms"})
    for query, error in (("limit=0", "'limit' must be a whole number from 1 to 100"),
                         ("limit=many", "'limit' must be a whole number from 1 to 100"),
                         ("after=x", "'after' must be the 'next' string of a previous page")):
        assert await call("GET", f"{base}/v1/rooms?{query}") == (400, {"error": error})


@pytest_twisted.ensureDeferred
async def test_an_api_key_file_that_holds_no_key_stops_chatd(daemon_factory: Any, tmp_path: Path) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text("# nothing yet\n\n")
    node = daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--store", "memory",
                          "--api", "tcp:0:interface=127.0.0.1", "--api-keys", str(keys))
    await node.wait_for(rf"--api-keys {keys}: no key in it \(one a line\)".encode(), "the refusal")
    assert await node.wait_exit() != 0


@pytest_twisted.ensureDeferred
async def test_an_api_key_file_that_cannot_be_read_stops_chatd(daemon_factory: Any, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-file"
    node = daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--store", "memory",
                          "--api", "tcp:0:interface=127.0.0.1", "--api-keys", str(missing))
    await node.wait_for(rf"--api-keys: cannot read the API keys {missing}: No such file or directory".encode(),
                        "the refusal")
    assert await node.wait_exit() != 0
