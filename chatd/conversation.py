"""
One client's conversation with the chat: commands in, replies out, in order.

:class:`Conversation` decodes each message, keeps the client's commands in
order while an answer is on its way (a moderator, Redis), has chat messages
rate-checked, reviewed and published, and turns every refusal into the
error reply the protocol documents.  It knows nothing of WebSocket framing:
the connection that mixes it in (``chatd.ws.ChatProtocol``) sends what it
answers and closes what it closes.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Optional

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatd import codec
from chatd.auth import IChatUser, Token, TokenExpired
from chatd.rooms.rules import REPLY_UNIT
from chatd.rooms import many
from chatd.rooms.state import Client, Room, tag
from chatd.errors import (
    CLOSE_POLICY_VIOLATION,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_TRY_AGAIN_LATER,
    ChatError,
    NotAuthenticated,
    NotInRoom,
    Rejected,
    Unavailable,
)
from chatd.logs import HotPathLogger
from chatd.moderation import PASS, Reject, Rewrite, Submission, Verdict

if TYPE_CHECKING:
    from chatd.chat import Chat
    from chatd.moderation import Moderation

BINARY_NOT_SUPPORTED = "Binary frames are not supported; send JSON as text frames"
INTERNAL_ERROR = "Internal server error"
AWAITING_MODERATION = "Too many messages awaiting moderation"
TOO_MANY_WAITING = "Too many messages awaiting replies"
#: Commands a connection may send while one of its messages is reviewed.
MAX_WAITING = 100

# One logger for the per-connection events: a class-level Logger makes a new
# bound Logger on every access.
_connections_log = HotPathLogger(namespace="chatd.ws.ChatProtocol")


def token_refused(failure: Failure, metrics: Any) -> Optional[str]:
    """Why the portal refused a token (counted in the metrics), for the
    ``auth`` action and the handshake alike; None: a checker's bug."""
    if failure.check(TokenExpired):
        metrics.auth.labels("expired").inc()
        return codec.TOKEN_EXPIRED
    if failure.check(UnauthorizedLogin):
        metrics.auth.labels("invalid").inc()
        return codec.INVALID_TOKEN
    return None


class _Call:
    """One question to the chat: whether its answer came during the call."""

    __slots__ = ("asking", "answered")

    def __init__(self) -> None:
        self.asking = True
        self.answered = False


class Conversation:
    """
    The conversation of one connection, mixed into its protocol.

    The host provides ``factory`` (with ``chat``, ``moderation``,
    ``metrics`` and ``clock``), ``peer``, and the methods ``chatting``,
    ``send_reply`` (an encoded reply) and ``close`` (a WebSocket close).
    """

    _log = Logger()
    factory: Any
    peer: str
    # The client's IP address (set at the handshake), and whether a proxy
    # gave it (then ``peer`` is the proxy).
    client_address: Optional[str] = None
    proxied = False

    _client: Optional[Client] = None
    # While an answer is awaited (a moderator's, or a reply from Redis): what
    # the client sent since, to be handled in order afterwards.
    _waiting: Optional[deque[tuple[bytes, bool]]] = None
    _awaiting_reply = False
    # Chat messages whose replies are on their way: the chat publishes a
    # client's messages in order, so the next one need not wait for them;
    # any other command does.
    _outstanding = 0
    # True during a call to publish until it answers.
    _publishing = False
    # Who the handshake's token said the client is (until the welcome), and
    # the timer that closes the connection when the token expires.
    _identity: Any = None
    _expiry: Any = None

    def chatting(self) -> bool:
        raise NotImplementedError

    def send_reply(self, payload: bytes) -> None:
        raise NotImplementedError

    def close(self, code: int, reason: str) -> None:
        raise NotImplementedError

    # -- the client arrives and goes ------------------------------------------

    def begin(self) -> None:
        """The handshake is done: register with the chat, then welcome."""
        registered = self.factory.chat.connect(self)
        if isinstance(registered, Client):
            # Registered at once (one process): welcomed at once too, unless
            # a token's user must be recorded first.
            try:
                later = self._welcome(registered)
            except Exception:
                self._not_registered(Failure())
                return
            if later is not None:
                self._wait_for(later.addErrback(self._not_registered))
            return
        registered.addCallback(self._welcome).addErrback(self._not_registered)
        # In a cluster the ID is checked in Redis first (and a token's user
        # recorded): anything the client sends meanwhile waits its turn.
        self._wait_for(registered)

    def _welcome(self, client: Client) -> "Optional[Deferred[None]]":
        if not self.chatting():
            self.factory.chat.disconnect(client, self.factory.clock.seconds())
            return None
        self._client = client
        if self.proxied:
            _connections_log.info(
                "{client_id} connected from {address} via {peer}",
                event="connect", client_id=client.client_id, address=self.client_address, peer=self.peer,
            )
        else:
            _connections_log.info(
                "{client_id} connected from {peer}",
                event="connect", client_id=client.client_id, address=self.client_address, peer=self.peer,
            )
        identity, self._identity = self._identity, None
        if identity is None:
            self._send_welcome(client)
            return None
        # The handshake's token: the welcome names the user once every
        # member can see it.
        return self._authenticated(client, identity).addCallback(lambda _: self._send_welcome(client))

    def _send_welcome(self, client: Client) -> None:
        self.send_reply(codec.encode(codec.welcome(client.client_id, client.user)))

    def _not_registered(self, failure: Failure) -> None:
        if not failure.check(Unavailable):
            self._log.failure("Registering a client failed", failure)
        self.close(CLOSE_TRY_AGAIN_LATER, Unavailable().message)

    def end(self, code: Optional[int], reason: Optional[str], clean: bool) -> None:
        """The connection is closed (or never opened); only once per connection."""
        client, self._client = self._client, None
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        if client is not None:
            self.factory.chat.disconnect(client, self.factory.clock.seconds())
            _connections_log.info(
                "{client_id} disconnected (code {code}, {reason})" if client.user is None
                else "{client_id} ({user}) disconnected (code {code}, {reason})",
                event="disconnect", client_id=client.client_id, code=code,
                reason=reason, clean=clean, address=self.client_address, user=client.user,
            )

    # -- commands ---------------------------------------------------------------

    def received(self, payload: bytes, isBinary: bool) -> None:
        """One message from the client."""
        # Nothing more is done for a connection that is closing.
        if not self.chatting():
            return
        self.factory.metrics.bytes_received.inc(len(payload))
        if self._waiting is not None:
            # An earlier command's answer is on its way: keep the client's order.
            if len(self._waiting) >= MAX_WAITING:
                reason = AWAITING_MODERATION if self.factory.moderation else TOO_MANY_WAITING
                self.close(CLOSE_POLICY_VIOLATION, reason)
                return
            self._waiting.append((payload, isBinary))
            return
        client = self._client
        if client is not None:
            self._process(client, payload, isBinary)

    def _process(self, client: Client, payload: bytes, isBinary: bool) -> None:
        factory = self.factory
        if isBinary:
            factory.metrics.errors.labels("binary").inc()
            self.send_reply(codec.encode(codec.error(BINARY_NOT_SUPPORTED)))
            return
        try:
            command = codec.decode(payload)
            if client.user is None and not factory.guests_allowed and not isinstance(command, codec.Auth):
                factory.metrics.auth.labels("refused").inc()
                raise NotAuthenticated(codec.AUTH_REQUIRED)
            scope = getattr(command, "scope", None)
            room = self._check_scope(client, scope) if scope is not None else None
            if isinstance(command, codec.Message):
                self._review(client, command.body, room=room)
                return
            if isinstance(command, codec.Direct):
                self._review(client, command.body, command.to)
                return
            if self._outstanding:
                # Any other command waits for the messages before it.
                self._waiting = deque([(payload, isBinary)])
                return
            factory.chat.check_command_rate(client, factory.clock.seconds())
            if isinstance(command, codec.Auth):
                asked = self._authenticate(client, command.token)
            else:
                asked = factory.chat.handle(client, command, factory.clock.seconds())
            answer = self._answer_with(client, asked)
        except ChatError as e:
            self.send_reply(codec.encode(self._rejected(client, e)))
            return
        except Exception:
            self.send_reply(codec.encode(self._internal_error(client)))
            return
        if answer is not None:
            self._wait_for(answer)

    def _answer_with(self, client: Client, reply: "Deferred[Any]") -> "Optional[Deferred[None]]":
        """Send the reply once it is there: None if it was, or what fires
        once it has been.  (Whether it was is what the callback saw: a
        Deferred can be ``called`` and still wait for one chained to it.)"""
        call = _Call()
        reply.addBoth(self._answer_call, client, call)
        call.asking = False
        return None if call.answered else reply

    def _answer_call(self, result: Any, client: Client, call: "_Call") -> None:
        call.answered = True
        self._answer(result, client, not call.asking)

    def _answer(self, result: Any, client: Client, later: bool) -> None:
        if isinstance(result, Failure):
            if result.check(ChatError):
                result = self._rejected(client, result.value)
            else:
                result = self._internal_error(client, result)
        if self._client is client:
            if result is codec.MESSAGE_SENT:
                self.send_reply(codec.MESSAGE_SENT_ENCODED)
            else:
                payload = codec.encode(result)
                self.send_reply(payload)
                if len(payload) >= REPLY_UNIT:
                    # A large reply (a history page) costs the client more.
                    self.factory.chat.charge_reply(client, len(payload), self.factory.clock.seconds())
            if later:
                self.factory.chat.replied(client)

    def _wait_for(self, later: "Deferred[Any]") -> None:
        """The answer comes later: what the client sends meanwhile waits."""
        self._waiting = deque()
        self._awaiting_reply = True
        later.addBoth(self._replied)

    def _replied(self, _: Any) -> None:
        self._awaiting_reply = False
        self._resume()

    def _pipeline(self) -> None:
        """A chat message on its way; the next may follow at once."""
        self._outstanding += 1
        if self._outstanding >= MAX_WAITING and self._waiting is None:
            self._waiting = deque()  # enough in flight: the rest waits its turn

    def _published(self) -> None:
        self._outstanding -= 1
        if self._waiting is not None and not self._awaiting_reply and self._outstanding < MAX_WAITING:
            self._resume()

    def _resume(self) -> None:
        """Handle, in order, what the client sent while it waited."""
        waiting, self._waiting = self._waiting, None
        while waiting:
            client = self._client
            if client is None or not self.chatting():
                return
            payload, isBinary = waiting.popleft()
            self._process(client, payload, isBinary)
            if self._waiting is not None:
                # Another answer is awaited: the rest waits behind it.
                self._waiting.extend(waiting)
                return

    def _rejected(self, client: Client, error: ChatError) -> dict[str, Any]:
        self.factory.metrics.errors.labels(error.kind).inc()
        # The kind of mistake, never the content.
        self._log.info(
            "{client_id} sent a rejected command: {kind}",
            event="rejected", client_id=client.client_id, kind=error.kind,
        )
        return codec.error(error.message, **error.extra)

    def _check_scope(self, client: Client, room_id: str) -> Room:
        """The room a command names with "room_id": one the connection is in
        (the same words for any other, a private one too, so that nothing
        leaks); the client's broadcasts name their room from now on."""
        room = many.target(client, room_id)
        tag(client)
        return room

    def _internal_error(self, client: Client, failure: Optional[Failure] = None) -> dict[str, Any]:
        self._log.failure(
            "Unexpected error handling a message from {client_id}", failure, client_id=client.client_id
        )
        self.factory.metrics.errors.labels("internal").inc()
        return codec.error(INTERNAL_ERROR)

    # -- authentication -----------------------------------------------------------

    def _authenticate(self, client: Client, token: str) -> "Deferred[Any]":
        """The ``auth`` action: the token checked by the portal; the reply."""
        portal = self.factory.portal
        if portal is None:
            raise NotAuthenticated("Authentication is not enabled on this server")
        d = portal.login(Token(token), None, IChatUser)
        return d.addCallbacks(self._logged_in, self._login_failed, (client,))

    def _logged_in(self, result: Any, client: Client) -> Any:
        _, identity, _ = result
        if client.user is not None and client.user != identity.user:
            self.factory.metrics.auth.labels("refused").inc()
            raise NotAuthenticated(f"Already authenticated as '{client.user}'")
        reply = {"status": "success", "message": f"Authenticated as '{identity.user}'", "user": identity.user}
        if self._client is not client:
            return reply  # gone meanwhile: nobody to tell
        return self._authenticated(client, identity).addCallback(lambda _: reply)

    def _login_failed(self, failure: Failure) -> None:
        why = token_refused(failure, self.factory.metrics)
        if why is not None:
            raise NotAuthenticated(why)
        failure.raiseException()  # a checker's bug: an internal error

    def _authenticated(self, client: Client, identity: Any) -> "Deferred[None]":
        """
        ``client`` is ``identity.user`` until its credentials expire, once
        the chat has admitted it (its room may refuse the user).  A token
        moves the deadline to its own expiry; one without any cannot lift
        the deadline an earlier token set.
        """
        factory = self.factory
        if identity.expires is None and self._expiry is not None and self._expiry.active():
            factory.metrics.auth.labels("refused").inc()
            raise NotAuthenticated(codec.EXPIRY_REQUIRED)
        chat: Chat = factory.chat
        d = chat.authenticate(client, identity.user, identity.name, factory.clock.seconds())
        return d.addCallback(self._now_authenticated, client, identity)

    def _now_authenticated(self, _: None, client: Client, identity: Any) -> None:
        factory = self.factory
        factory.metrics.auth.labels("ok").inc()
        _connections_log.info(
            "{client_id} authenticated as {user}", event="auth", client_id=client.client_id, user=identity.user)
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        if identity.expires is not None:
            delay = identity.expires - factory.clock.seconds()
            self._expiry = factory.clock.callLater(max(0.0, delay), self._token_expired)

    def _token_expired(self) -> None:
        self._expiry = None
        client = self._client
        _connections_log.info(
            "{client_id} closed: its token expired", event="token_expired",
            client_id=client.client_id if client else None, user=client.user if client else None)
        self.close(CLOSE_TOKEN_EXPIRED, codec.TOKEN_EXPIRED)

    # -- chat messages: rate, moderation, publication -------------------------

    def _review(self, client: Client, body: Any, to: Optional[str] = None, room: Optional[Room] = None) -> None:
        """Rate-limit a chat message (to ``room``, or the current one) or a
        direct message ``to`` someone now, then send it (or not) once the
        moderators, if any, have spoken."""
        if to is None and client.room is None:
            raise NotInRoom("You must join a room first")
        factory = self.factory
        factory.chat.check_message_rate(client, factory.clock.seconds(), to is None)
        moderation: Moderation = factory.moderation
        if not moderation:
            self._publish(client, body, PASS, at_once=True, to=to, room=room)
            return
        into = room if room is not None else client.room
        reviewed = moderation.review(Submission(client.client_id, client.nick, into.room_id if into else "", body, to))
        verdicts: list[Verdict] = []
        reviewed.addCallback(verdicts.append)
        if verdicts:
            # Every moderator answered at once: no waiting, no reordering.
            self._publish(client, body, verdicts[0], at_once=True, to=to, room=room)
            return
        reviewed.addCallback(lambda _: self._publish(client, body, verdicts[0], to=to, room=room))
        reviewed.addErrback(lambda failure: self._log.failure("Moderation broke", failure))
        self._wait_for(reviewed)

    def _publish(
        self, client: Client, body: Any, verdict: Verdict, at_once: bool = False, to: Optional[str] = None,
        room: Optional[Room] = None,
    ) -> "Optional[Deferred[Any]]":
        """Publish a reviewed message (``at_once``: in the same call as it
        came in), or send it to ``to``; its reply is sent when the chat
        answers."""
        if not at_once and (self._client is not client or not self.chatting()):
            return None  # gone while its message was reviewed
        chat: Chat = self.factory.chat
        try:
            if isinstance(verdict, Reject):
                raise Rejected()
            if isinstance(verdict, Rewrite):
                body = verdict.body
            if to is not None:
                # Not pipelined: what the client sends next waits for it.
                answer = self._answer_with(client, chat.direct(client, to, body, self.factory.clock.seconds()))
                if answer is not None and at_once:
                    self._wait_for(answer)
                return answer
            self._publishing = True
            chat.publish(client, body, self.factory.clock.seconds(), self._message_answered, room)
        except ChatError as e:
            self._publishing = False
            self.send_reply(codec.encode(self._rejected(client, e)))
            return None
        except Exception:
            self._publishing = False
            self.send_reply(codec.encode(self._internal_error(client)))
            return None
        if self._publishing:
            # Not answered yet: the next message may follow at once.
            self._publishing = False
            self._pipeline()
        return None

    def _message_answered(self, result: Any, client: Client) -> None:
        if self._publishing:
            # During the call to publish: the usual case in one process.
            self._publishing = False
            self._answer(result, client, False)
            return
        self._answer(result, client, True)
        self._published()
