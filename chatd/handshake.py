"""
The opening handshake of a chatd connection, as a mixin of
:class:`chatd.ws.ChatProtocol`: the refusals (a limit, a request head too
large), the checks (the origin, a bearer token), the plain HTTP answers
(the web page, HEAD, complete error responses for curl and health
checkers), and the timer that drops a handshake that never ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Protocol

from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime, ISSLTransport
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatd import fastpath
from chatd.auth import IChatUser, Token
from chatd.codec import INVALID_TOKEN, MAX_TOKEN
from chatd.config import normalise_origin
from chatd.conversation import token_refused
from chatd.metrics import Metrics



class HandshakeFactory(Protocol):
    """What a handshake asks of its factory (:class:`chatd.ws.ChatFactory`)."""

    metrics: Metrics
    portal: Optional[Any]  # checks tokens; None: no authentication
    pages: dict[str, bytes]  # the plain-HTTP answers by path
    gzipped_pages: dict[str, bytes]  # and gzipped
    allowed_origins: frozenset[str]

    def identify(self, protocol: Any, headers: dict[str, str]) -> Optional[str]: ...

HEAD_TOO_LARGE = "Request Header Fields Too Large"
UNTRUSTED_PROXY = "PROXY protocol header from an address that is not a trusted proxy"
# Handshake failures by HTTP status, for the metrics.
_HANDSHAKE_REASONS = {426: "no_upgrade", 403: "origin", 503: "limit", 431: "too_large"}


class Handshake:
    """What a connection does before it is a WebSocket."""

    _log = Logger()
    factory: HandshakeFactory
    transport: Any
    http_headers: dict[str, str]
    http_status_line: str
    http_request_path: str

    if TYPE_CHECKING:  # Autobahn's, as ChatProtocol has it: only declared here
        def sendData(self, data: bytes, sync: bool = False, chopsize: Optional[int] = None) -> None: ...

    def _head_too_large(self) -> None:
        """HTTP 431 for a request head (or what follows it before the
        answer) over MAX_REQUEST_HEAD; nothing more of it is read."""
        self.factory.metrics.handshake_failures.labels("too_large").inc()
        self.sendHttpErrorResponse(431, HEAD_TOO_LARGE)
        fastpath.drop_answered(self)

    def _refuse(self, reason: str) -> None:
        """HTTP 503 for a connection over a limit."""
        self.factory.metrics.handshake_failures.labels("limit").inc()
        self.sendHttpErrorResponse(503, reason, [("Retry-After", "5")])
        # A refusal chatd chose: counted, not logged per connection (a flood
        # must not become a flood of log lines), so Autobahn's failHandshake,
        # which logs twice, is not used here.
        fastpath.drop_answered(self)

    def onConnect(self, request: ConnectionRequest) -> None:
        # Autobahn answers any exception but ConnectionDeny with its text in
        # the HTTP response, so nothing else may escape from here.
        try:
            refusal = self.factory.identify(self, request.headers)
            if refusal is not None:
                raise ConnectionDeny(503, refusal)
            allowed = self.factory.allowed_origins
            origin = request.origin
            # Autobahn reports a missing Origin header as "": not a browser.
            if allowed and origin and normalise_origin(origin) not in allowed and not self._same_origin(origin):
                raise ConnectionDeny(403, "Origin not allowed")
            token = self._bearer_token(request.headers)
            if token is not None:
                return self._check_token(token)
        except ConnectionDeny:
            raise
        except Exception:
            self._log.failure("Unexpected error checking a handshake")
            raise ConnectionDeny(500, "Internal server error") from None
        return None

    def _bearer_token(self, headers: dict[str, str]) -> Optional[str]:
        """The token of an ``Authorization: Bearer`` header, when chatd checks
        tokens (another scheme is not chatd's: a proxy's, say)."""
        if self.factory.portal is None:
            return None
        scheme, _, token = headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        token = token.strip()
        if not token or len(token) > MAX_TOKEN:
            raise ConnectionDeny(401, INVALID_TOKEN)
        return token

    def _check_token(self, token: str) -> "Deferred[None]":
        """The handshake goes on once the token is good; 401 otherwise."""

        def good(result: Any) -> None:
            self._identity = result[1]

        def bad(failure: Failure) -> None:
            why = token_refused(failure, self.factory.metrics)
            if why is not None:
                raise ConnectionDeny(401, why)
            self._log.failure("Checking a token failed", failure)
            raise ConnectionDeny(500, "Internal server error")

        d = self.factory.portal.login(Token(token), None, IChatUser)
        return d.addCallbacks(good, bad)

    def _same_origin(self, origin: str) -> bool:
        """A page chatd served itself (the web client) may always connect back."""
        host = self.http_headers.get("host", "")
        scheme = "https" if ISSLTransport.providedBy(self.transport) else "http"
        return bool(host) and normalise_origin(origin) == normalise_origin(f"{scheme}://{host}")

    def failHandshake(
        self, reason: str, code: int = 400, responseHeaders: Optional[list[tuple[str, str]]] = None
    ) -> None:
        if code == 426:
            # A plain GET (no Upgrade): the web client, on the same port and
            # path as the WebSocket (Autobahn refuses other methods first).
            self._serve_page()
            return
        if code == 503:
            self._refuse(reason)  # a limit, as at accept time
            return
        if code == 405 and self._answer_head():
            return
        if code == 401:
            # A bad token: said once, with the scheme to use (RFC 6750).
            self.factory.metrics.handshake_failures.labels("auth").inc()
            self.sendHttpErrorResponse(401, reason, [("WWW-Authenticate", 'Bearer error="invalid_token"')])
            fastpath.drop_answered(self)
            return
        kind = "untrusted_proxy" if reason == UNTRUSTED_PROXY else _HANDSHAKE_REASONS.get(code, "bad_request")
        self.factory.metrics.handshake_failures.labels(kind).inc()
        super().failHandshake(reason, code, responseHeaders)

    def _answer_head(self) -> bool:
        """A HEAD request (an uptime monitor's): the page's headers, as a GET
        of the same path would have them, and no body.  False: not a HEAD."""
        method, _, rest = self.http_status_line.partition(" ")
        if method != "HEAD":
            return False
        page = self._pages().get(rest.partition(" ")[0].partition("?")[0])
        response = page if page is not None else _http_error(404, "Not Found")
        self.sendData(response[:response.index(b"\r\n\r\n") + 4])
        fastpath.drop_answered(self)
        return True

    def _pages(self) -> dict[str, bytes]:
        """The page's files, gzipped for a client that takes gzip."""
        headers = getattr(self, "http_headers", None) or {}
        accepts = headers.get("accept-encoding", "")
        return self.factory.gzipped_pages if "gzip" in accepts.lower() else self.factory.pages

    def _serve_page(self) -> None:
        page = self._pages().get(self.http_request_path)
        if page is None:
            self.factory.metrics.handshake_failures.labels("no_upgrade").inc()
            self.sendHttpErrorResponse(404, "Not Found")
        else:
            self.sendData(page)
        fastpath.drop_answered(self)

    def onOpenHandshakeTimeout(self) -> None:
        self.factory.metrics.handshake_failures.labels("timeout").inc()
        super().onOpenHandshakeTimeout()

    def sendHttpErrorResponse(
        self, code: int, reason: str, responseHeaders: Optional[list[tuple[str, str]]] = None
    ) -> None:
        # Autobahn's own error response has a status line only; give plain
        # HTTP clients (curl, a browser, a health checker) a complete one.
        self.sendData(_http_error(code, reason, responseHeaders))


def _http_error(code: int, reason: str, extra: Optional[list[tuple[str, str]]] = None) -> bytes:
    """A complete HTTP error response, with a short text body."""
    body = (
        f"{code} {reason}\n\nThis is a chatd WebSocket endpoint: connect with a "
        "WebSocket client (ws://...).\n"
    ).encode("utf-8")
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
    ]
    if code == 426:
        headers.append(("Upgrade", "websocket"))
    headers.extend(extra or ())
    head = f"HTTP/1.1 {code} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode("utf-8") + b"\r\n" + body


class HandshakeTimer:
    """
    Drops connections that have not finished the opening handshake within
    ``timeout`` seconds (never sooner; at most a second later): one sweep a
    second over those still shaking hands, instead of a timer set and
    cancelled for each.
    """

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout
        self._deadlines: dict[Any, float] = {}
        self._sweep = LoopingCall(self.sweep)
        self._sweep.clock = clock

    def begin(self, protocol: Any) -> None:
        if self.timeout > 0:
            self._deadlines[protocol] = self.clock.seconds() + self.timeout

    def done(self, protocol: Any) -> None:
        self._deadlines.pop(protocol, None)

    def sweep(self) -> None:
        now = self.clock.seconds()
        late = [protocol for protocol, deadline in self._deadlines.items() if deadline <= now]
        for protocol in late:
            del self._deadlines[protocol]
            protocol.onOpenHandshakeTimeout()  # drops it if it is still shaking hands

    def start(self) -> None:
        if self.timeout > 0 and not self._sweep.running:
            self._sweep.start(1.0, now=False)

    def stop(self) -> None:
        if self._sweep.running:
            self._sweep.stop()
