"""
Authenticated users, end to end against the real ``twistd -n chatd``: tokens
made with PyJWT, presented at the handshake or with the ``auth`` action.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any, Callable

import jwt
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.clients import connect
from tests.support.raw import http_get
from tests.support.servers import DaemonProcess

SECRET = b"a shared secret of the test, long enough for HS256"


def token(sub: Any = "alice", key: Any = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    payload = {"sub": sub, "exp": int(time.time()) + 3600, **claims}
    if sub is None:
        del payload["sub"]
    return jwt.encode(payload, key, algorithm=algorithm)


def signed_by_hand(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    """An HS256 token PyJWT would not make (a PEM key as the secret)."""
    def part(value: Any) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=")

    signing_input = part(header) + b"." + part(payload)
    signature = base64.urlsafe_b64encode(hmac.new(secret, signing_input, hashlib.sha256).digest()).rstrip(b"=")
    return (signing_input + b"." + signature).decode()


def unsigned(payload: dict[str, Any]) -> str:
    """A token with "alg": "none" and no signature."""
    def part(value: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(payload)}."


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwt.key"
    path.write_bytes(SECRET)
    return path


async def started(daemon_factory: Callable[..., DaemonProcess], *args: str) -> tuple[DaemonProcess, int]:
    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--metrics", "tcp:0:interface=127.0.0.1",
                           *args)
    return chatd, await chatd.wait_listening()


@pytest_twisted.ensureDeferred
async def test_a_token_at_the_handshake_names_the_user_on_the_wire(
    daemon_factory: Callable[..., DaemonProcess], secret_file: Path,
) -> None:
    chatd, port = await started(daemon_factory, "--auth", f"jwt:key={secret_file}")
    alice = await connect(port, headers={"Authorization": f"Bearer {token('alice', name='Alice A.')}"})
    welcome = await alice.next()
    assert list(welcome) == ["status", "client_id", "message", "user"]
    assert welcome["user"] == "alice"
    guest = await connect(port)
    guest_welcome = await guest.next()
    assert "user" not in guest_welcome  # seed clients see the seed's welcome
    await guest.request({"action": "events", "body": True})
    room = (await guest.request({"action": "create", "body": "r"}))["room_id"]
    assert (await alice.request({"action": "join", "body": {"room_id": room}}))["status"] == "success"
    joined = await guest.next()
    assert joined["event"] == "join" and joined["user"] == "alice" and joined["nick"] == "Alice A."
    await alice.request({"action": "message", "body": "hi"})
    message = await guest.next()
    assert list(message) == ["from", "body", "timestamp", "id", "nick", "user"]
    assert message["user"] == "alice"
    members = (await guest.request({"action": "members"}))["members"]
    assert {"client_id": welcome["client_id"], "nick": "Alice A.", "user": "alice", "role": "member"} in members
    assert {"client_id": guest_welcome["client_id"], "nick": None, "role": "owner"} in members
    # Nobody else may take the user name of a member as a nick.
    taken = await guest.request({"action": "nick", "body": "ALICE"})
    assert taken == {"status": "error", "message": "Nick 'ALICE' is already taken in this room"}
    await alice.close()
    await guest.close()
    await chatd.wait_for(rb"authenticated as alice", "the user in the log")
    await chatd.wait_for(rb"\(alice\) disconnected", "the user's disconnect in the log")
    status, body = await http_get(f"http://127.0.0.1:{await chatd.wait_metrics()}/metrics")
    assert b'chatd_auth_total{result="ok"} 1.0' in body


@pytest_twisted.ensureDeferred
async def test_a_bad_token_at_the_handshake_is_refused_with_401(
    daemon_factory: Callable[..., DaemonProcess], secret_file: Path,
) -> None:
    chatd, port = await started(daemon_factory, "--auth", f"jwt:key={secret_file}")
    for bad in (token(key=b"another secret, long enough for HS256 too"), "not.a.token",
                token(exp=int(time.time()) - 10)):
        with pytest.raises(ConnectionError, match="401"):
            await connect(port, headers={"Authorization": f"Bearer {bad}"})
    assert b"not.a.token" not in chatd.output and SECRET not in chatd.output


@pytest_twisted.ensureDeferred
async def test_the_auth_action_and_every_way_a_token_is_bad(
    daemon_factory: Callable[..., DaemonProcess], secret_file: Path, tmp_path: Path,
) -> None:
    private = rsa.generate_private_key(65537, 2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    public = tmp_path / "jwt.pem"
    public.write_bytes(pem)
    chatd, port = await started(daemon_factory, "--auth", f"jwt:key={public}:audience=chat:issuer=me")
    client = await connect(port)
    await client.next()

    def good(**claims: Any) -> str:
        return token(key=private, algorithm="RS256", **{"aud": "chat", "iss": "me", **claims})

    bad_tokens = {
        "Invalid token": [
            token(key=SECRET),  # HS256 with a secret the server does not use
            signed_by_hand({"alg": "HS256", "typ": "JWT"}, {"sub": "mallory", "aud": "chat", "iss": "me"}, pem),
            unsigned({"sub": "mallory", "aud": "chat", "iss": "me"}),
            "not.a.token", "", "x" * 9000,
            good(aud="another"), good(iss="someone"),
            good(sub=None), good(sub="x" * 65), good(sub=42), good(sub="tab\there"),
        ],
        "Token expired": [good(exp=int(time.time()) - 10)],
    }
    for message, tokens in bad_tokens.items():
        for bad in tokens:
            assert await client.request({"action": "auth", "body": {"token": bad}}) == {
                "status": "error", "message": message}, bad[:40]
    for body in ("eyJ...", {"jwt": "x"}, {"token": 5}, None):
        reply = await client.request({"action": "auth", "body": body})
        assert reply == {"status": "error",
                         "message": 'Auth body must be an object with a string \'token\', like {"token": "eyJ..."}'}
    assert await client.request({"action": "auth", "body": {"token": good()}}) == {
        "status": "success", "message": "Authenticated as 'alice'", "user": "alice"}
    # Another user's token changes nothing; the same user's renews.
    assert await client.request({"action": "auth", "body": {"token": good(sub="bob")}}) == {
        "status": "error", "message": "Already authenticated as 'alice'"}
    assert (await client.request({"action": "auth", "body": {"token": good()}}))["status"] == "success"
    assert (await client.request({"action": "nick", "body": "x"}))["status"] == "success"  # still usable
    await client.close()
    assert b"eyJ" not in chatd.output  # no token is ever logged
    _, metrics = await http_get(f"http://127.0.0.1:{await chatd.wait_metrics()}/metrics")
    # Every invalid token of the list but the over-long one, which is refused before any checker.
    for result, count in (("ok", 2), ("invalid", 11), ("expired", 1), ("refused", 1)):
        assert f'chatd_auth_total{{result="{result}"}} {count}.0'.encode() in metrics, result


@pytest_twisted.ensureDeferred
async def test_guests_denied_must_authenticate_first(
    daemon_factory: Callable[..., DaemonProcess], secret_file: Path,
) -> None:
    chatd, port = await started(daemon_factory, "--auth", f"jwt:key={secret_file}", "--guests", "deny")
    client = await connect(port)
    assert (await client.next())["status"] == "connected"  # the welcome still comes
    for action in ({"action": "list"}, {"action": "create", "body": "r"}, {"action": "message", "body": "x"}):
        assert await client.request(action) == {"status": "error", "message": "Authentication required"}
    assert (await client.request({"action": "auth", "body": {"token": token("bob")}}))["user"] == "bob"
    assert (await client.request({"action": "create", "body": "r"}))["status"] == "success"
    await client.close()


@pytest_twisted.ensureDeferred
async def test_an_expired_token_closes_the_connection_with_4001(
    daemon_factory: Callable[..., DaemonProcess], secret_file: Path,
) -> None:
    chatd, port = await started(daemon_factory, "--auth", f"jwt:key={secret_file}")
    client = await connect(port, headers={"Authorization": f"Bearer {token(exp=int(time.time()) + 2)}"})
    assert (await client.next())["user"] == "alice"
    assert await client.wait_closed() == (4001, "Token expired")


CHECKER_PLUGIN = '''
from twisted.cred.strcred import ICheckerFactory
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import fail, succeed
from twisted.plugin import IPlugin
from zope.interface import implementer

from chatd.auth import IToken


class Backend:
    """Tokens "USER:PASSPHRASE", as a deployment's own backend might check them."""

    credentialInterfaces = (IToken,)

    def __init__(self, passphrase):
        self.passphrase = passphrase

    def requestAvatarId(self, credentials):
        user, _, passphrase = credentials.token.partition(":")
        if passphrase != self.passphrase:
            return fail(UnauthorizedLogin())
        return succeed(user)


@implementer(ICheckerFactory, IPlugin)
class BackendFactory:
    authType = "backend"
    authHelp = "Tokens checked by the test's backend."
    argStringFormat = "PASSPHRASE"
    credentialInterfaces = (IToken,)

    def generateChecker(self, argstring=""):
        return Backend(argstring)


backend = BackendFactory()
'''


@pytest_twisted.ensureDeferred
async def test_a_deployments_own_checker_is_found_as_a_twisted_plugin(
    daemon_factory: Callable[..., DaemonProcess], tmp_path: Path,
) -> None:
    import os

    plugins = tmp_path / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "backend_checker.py").write_text(CHECKER_PLUGIN)  # no __init__.py: a namespace
    pythonpath = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--auth", "backend:open sesame",
                           env={"PYTHONPATH": pythonpath})
    port = await chatd.wait_listening()
    client = await connect(port, headers={"Authorization": "Bearer carol:open sesame"})
    assert (await client.next())["user"] == "carol"
    assert await client.request({"action": "auth", "body": {"token": "carol:wrong"}}) == {
        "status": "error", "message": "Invalid token"}
    await client.close()


@pytest_twisted.ensureDeferred
async def test_users_cross_two_twistd_nodes_of_a_cluster(
    daemon_factory: Callable[..., DaemonProcess], secret_file: Path, redis_server: Any,
) -> None:
    nodes = [daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--redis", redis_server.url,
                            "--auth", f"jwt:key={secret_file}") for _ in range(2)]
    one, two = [await node.wait_listening() for node in nodes]
    alice = await connect(one, headers={"Authorization": f"Bearer {token('alice')}"})
    assert (await alice.next())["user"] == "alice"
    bob = await connect(two)
    await bob.next()
    await bob.request({"action": "events", "body": True})
    room = (await bob.request({"action": "create", "body": "across"}))["room_id"]
    await alice.request({"action": "join", "body": {"room_id": room}})
    assert (await bob.next())["user"] == "alice"  # the join event, from the other node
    await alice.request({"action": "message", "body": "over Redis"})
    message = await bob.next()
    assert (message["body"], message["user"], message["nick"]) == ("over Redis", "alice", "alice")
    members = (await bob.request({"action": "members"}))["members"]
    assert [m.get("user") for m in members] == [None, "alice"]
    for client in (alice, bob):
        await client.close()
