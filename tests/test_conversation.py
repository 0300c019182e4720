"""
One client's conversation against a chat whose answers come when the test
says: the order of replies, pipelined chat messages, and failures.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from chatd import codec
from chatd.chat import Answer, Reply
from chatd.core import ChatCore
from chatd.rooms.state import Client, Room
from chatd.errors import RoomNotFound
from tests.test_ws import Peer, make_factory


class LaterChat:
    """A Chat whose chat messages are answered when the test calls ``answer_next``."""

    def __init__(self) -> None:
        self.core = ChatCore()
        self.room = Room("room0001", "r", "", "", 1)
        self.published: list[tuple[Any, Answer, Client]] = []
        self.handled: list[Any] = []

    def connect(self, sink: Any) -> "Deferred[Client]":
        client = self.core.connect(sink)
        client.room = self.room
        return succeed(client)

    def disconnect(self, client: Client, now: float) -> None:
        pass

    def check_message_rate(self, client: Client, now: float, in_room: bool = True) -> None:
        pass

    def check_command_rate(self, client: Client, now: float) -> None:
        pass

    def charge_reply(self, client: Client, size: int, now: float) -> None:
        pass

    def publish(self, client: Client, body: Any, now: float, answer: Answer, room: Any = None) -> None:
        self.published.append((body, answer, client))

    def answer_next(self, result: Any = None) -> None:
        body, answer, client = self.published.pop(0)
        answer(codec.MESSAGE_SENT if result is None else result, client)

    def handle(self, client: Client, command: Any, now: float) -> "Deferred[Reply]":
        self.handled.append(command)
        return succeed({"status": "success", "message": f"handled {type(command).__name__}"})

    def replied(self, client: Client) -> None:
        pass

    def reading(self, function: Callable[..., Any], *args: Any) -> Any:
        return function(*args)

    def counts(self) -> dict[str, float]:
        return {}


def talking() -> tuple[Peer, LaterChat]:
    chat = LaterChat()
    factory = make_factory(chat=chat)
    peer = Peer(factory)
    peer.open()
    return peer, chat


def test_chat_messages_are_pipelined_and_another_command_waits_for_their_replies() -> None:
    peer, chat = talking()
    assert peer.send({"action": "message", "body": "one"}) == []
    assert peer.send({"action": "message", "body": "two"}) == []
    assert peer.send({"action": "members"}) == []
    # Both messages went to the chat at once; the command waits for them.
    assert [body for body, _, _ in chat.published] == ["one", "two"]
    assert chat.handled == []
    chat.answer_next()
    assert peer.messages() == [codec.MESSAGE_SENT]
    assert chat.handled == []
    chat.answer_next()
    assert peer.messages() == [codec.MESSAGE_SENT, {"status": "success", "message": "handled Members"}]
    assert len(chat.handled) == 1


def test_a_refusal_that_comes_later_is_the_senders_error_reply() -> None:
    peer, chat = talking()
    peer.send({"action": "message", "body": "one"})
    chat.answer_next(Failure(RoomNotFound("room0001")))
    [reply] = peer.messages()
    assert reply["status"] == "error" and "room0001" in reply["message"]


def test_an_unexpected_failure_later_is_an_internal_error_without_its_text() -> None:
    peer, chat = talking()
    peer.send({"action": "message", "body": "one"})
    chat.answer_next(Failure(RuntimeError("secret detail")))
    assert peer.messages() == [{"status": "error", "message": "Internal server error"}]


def test_a_reply_for_a_client_that_left_is_not_sent() -> None:
    peer, chat = talking()
    peer.send({"action": "message", "body": "one"})
    peer.lose()
    chat.answer_next()  # nothing to send it to, and nothing raised
    assert chat.published == []


def test_a_token_renewed_in_time_keeps_the_connection_and_one_not_renewed_closes_it(tmp_path: Any) -> None:
    import time

    import jwt

    from chatd.auth import build_portal

    secret = tmp_path / "jwt.key"
    secret.write_bytes(b"a shared secret of the test, long enough for HS256")
    factory = make_factory(portal=build_portal(f"jwt:key={secret}"))
    factory.clock.advance(time.time())  # the clock that times the expiry, at the tokens' time
    now = factory.clock.seconds()

    def token(expires: float) -> str:
        return jwt.encode({"sub": "alice", "exp": int(expires)}, secret.read_bytes(), algorithm="HS256")

    peer = Peer(factory)
    peer.open()
    assert peer.send({"action": "auth", "body": {"token": token(now + 10)}})[0]["user"] == "alice"
    factory.clock.advance(5)
    assert peer.send({"action": "auth", "body": {"token": token(now + 20)}})[0]["status"] == "success"
    factory.clock.advance(6)  # past the first token's expiry
    assert peer.frames() == []
    assert peer.protocol.chatting()
    factory.clock.advance(10)  # past the renewed one's
    [(opcode, payload)] = peer.frames()
    assert opcode == 8 and payload[:2] == (4001).to_bytes(2, "big") and payload[2:] == b"Token expired"


def expiring_factory(tmp_path: Any, leeway: float = 0) -> Any:
    """A factory checking HS256 tokens, its clock at the tokens' time."""
    import time

    from chatd.auth import build_portal

    secret = tmp_path / "jwt.key"
    secret.write_bytes(b"a shared secret of the test, long enough for HS256")
    factory = make_factory()
    factory.portal = build_portal(f"jwt:key={secret}:leeway={leeway}")
    factory.clock.advance(time.time())
    return factory


def signed(claims: dict[str, Any]) -> str:
    import jwt

    return jwt.encode({"sub": "alice", **claims}, b"a shared secret of the test, long enough for HS256",
                      algorithm="HS256")


def closed_with_4001(peer: Peer) -> bool:
    return any(opcode == 8 and payload[:2] == (4001).to_bytes(2, "big") for opcode, payload in peer.frames())


def test_an_expiry_written_as_a_string_is_a_deadline_as_pyjwt_read_it(tmp_path: Any) -> None:
    factory = expiring_factory(tmp_path)
    now = factory.clock.seconds()
    peer = Peer(factory)
    peer.open()
    assert peer.send({"action": "auth", "body": {"token": signed({"exp": str(int(now) + 10)})}})[0]["user"] == "alice"
    factory.clock.advance(11)
    assert closed_with_4001(peer)


def test_a_token_without_expiry_cannot_lift_the_deadline_of_an_earlier_one(tmp_path: Any) -> None:
    factory = expiring_factory(tmp_path)
    now = factory.clock.seconds()
    peer = Peer(factory)
    peer.open()
    assert peer.send({"action": "auth", "body": {"token": signed({"exp": int(now) + 10})}})[0]["status"] == "success"
    assert peer.send({"action": "auth", "body": {"token": signed({})}}) == [{
        "status": "error",
        "message": "This connection's token expires: refresh it with a token that has an expiry (exp)"}]
    factory.clock.advance(11)
    assert closed_with_4001(peer)
    # A connection that never had a deadline may authenticate without one.
    other = Peer(factory, 40001)
    other.open()
    assert other.send({"action": "auth", "body": {"token": signed({})}})[0]["status"] == "success"


def test_a_token_accepted_within_the_leeway_is_good_until_the_leeway_ends(tmp_path: Any) -> None:
    factory = expiring_factory(tmp_path, leeway=60)
    now = factory.clock.seconds()
    peer = Peer(factory)
    peer.open()
    # Expired 30 s ago, within the 60 s leeway: accepted, for 30 s more.
    assert peer.send({"action": "auth", "body": {"token": signed({"exp": int(now) - 30})}})[0]["status"] == "success"
    factory.clock.advance(20)
    assert not closed_with_4001(peer) and peer.protocol.chatting()
    factory.clock.advance(20)
    assert closed_with_4001(peer)
