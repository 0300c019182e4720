"""
The HTTP server API: an application's backend acts on the chat without a
WebSocket, on its own listener (``--api``), with a key of ``--api-keys``.
JSON in and out, under ``/v1/``; every error is ``{"error": "..."}`` with
its status.  It acts through the node's chat, so on a cluster every call is
cluster-wide, from any node.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from chatd import codec
from chatd.config import ConfigError
from chatd.errors import ChatError, Unavailable
from chatd.settings import read_entries

class ApiError(Exception):
    """A request the API refuses: its HTTP status and the words of its error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def read_keys(path: str) -> list[bytes]:
    """The keys of ``--api-keys``: one a line; blank lines and ``#``
    comments are no keys.  A file that cannot be read, or holds none, is a
    configuration error (the API would let nobody in)."""
    try:
        keys = [key.encode("utf-8") for key in read_entries(path, "the API keys")]
    except ValueError as e:
        raise ConfigError(f"--api-keys: {e}") from None
    if not keys:
        raise ConfigError(f"--api-keys {path}: no key in it (one a line)")
    return keys


class Api(Resource):
    """``/v1/...``: each request authorized, routed and answered in JSON."""

    isLeaf = True
    _log = Logger()

    def __init__(self, chat: Any, keys: list[bytes]) -> None:
        super().__init__()
        self.chat = chat
        self._keys = keys
        # (method, path pattern) -> handler; a pattern's "{}" is one path segment.
        self._routes: list[tuple[bytes, tuple[str, ...], Callable[..., Awaitable[tuple[int, Any]]]]] = [
            (b"GET", ("v1", "rooms"), self._list_rooms),
        ]

    def render(self, request: Request) -> Any:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        gone: list[bool] = []  # the client went before its answer
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d = Deferred.fromCoroutine(self._answer(request))
        d.addErrback(self._internal, request)
        d.addCallback(lambda answer: None if gone else self._write(request, *answer))
        return NOT_DONE_YET

    async def _answer(self, request: Request) -> tuple[int, Any]:
        try:
            if not self._authorized(request):
                request.setHeader(b"www-authenticate", b'Bearer realm="chatd"')
                raise ApiError(401, "A valid API key is required: Authorization: Bearer KEY")
            handler, args = self._route(request)
            return await handler(request, *args)
        except ApiError as e:
            return e.status, {"error": str(e)}
        except Unavailable as e:
            return 503, {"error": str(e)}
        except ChatError as e:
            return 409, {"error": str(e)}

    def _authorized(self, request: Request) -> bool:
        header = request.getHeader(b"authorization") or b""
        scheme, _, given = header.partition(b" ")
        key = given.strip()
        if scheme.lower() != b"bearer" or not key:
            return False
        found = False
        for known in self._keys:  # every key compared, in constant time each
            found |= hmac.compare_digest(key, known)
        return found

    def _route(self, request: Request) -> tuple[Callable[..., Awaitable[tuple[int, Any]]], list[str]]:
        segments = tuple(s.decode("utf-8", "replace") for s in request.path.split(b"/")[1:])
        allowed = False
        for method, pattern, handler in self._routes:
            if len(pattern) != len(segments):
                continue
            if any(p != "{}" and p != s for p, s in zip(pattern, segments, strict=True)):
                continue
            if method != request.method:
                allowed = True
                continue
            return handler, [s for p, s in zip(pattern, segments, strict=True) if p == "{}"]
        if allowed:
            method_name = request.method.decode("ascii", "replace")
            raise ApiError(405, f"{method_name} is not allowed on {request.path.decode('utf-8', 'replace')}")
        raise ApiError(404, f"No such endpoint: {request.path.decode('utf-8', 'replace')}")

    # -- the endpoints ---------------------------------------------------------------

    async def _list_rooms(self, request: Request) -> tuple[int, Any]:
        """``GET /v1/rooms?limit=K&after=CURSOR``: every room, private ones too."""
        query = _query(request)
        limit = _int_param(query, "limit", codec.DEFAULT_PAGE, 1, codec.MAX_PAGE)
        after = query.get("after")
        if after is not None and not (after.isdigit() and after.isascii() and len(after) <= 20):
            raise ApiError(400, "'after' must be the 'next' string of a previous page")
        reply = await self.chat.list_all(limit, after)
        reply.pop("status", None)
        return 200, reply

    # -- answering -----------------------------------------------------------------------

    def _write(self, request: Request, status: int, body: Any) -> None:
        request.setResponseCode(status)
        request.write(json.dumps(body).encode("utf-8"))
        request.finish()

    def _internal(self, failure: Any, request: Request) -> tuple[int, Any]:
        self._log.failure("The server API failed on {path}", failure, path=request.path)
        return 500, {"error": "Internal error"}


def _query(request: Request) -> dict[str, str]:
    """The query string's parameters, the last of each name."""
    raw = request.uri.partition(b"?")[2].decode("utf-8", "replace")
    return {name: values[-1] for name, values in parse_qs(raw, keep_blank_values=True).items()}


def _int_param(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    value = query.get(name)
    if value is None:
        return default
    if not (value.isdigit() and value.isascii()) or not low <= int(value) <= high:
        raise ApiError(400, f"'{name}' must be a whole number from {low} to {high}")
    return int(value)


class ApiSite(Site):
    """The API's site (its name is in the log line of its port); no
    traceback ever reaches a caller."""

    displayTracebacks = False


def api_site(chat: Any, keys: list[bytes]) -> Site:
    return ApiSite(Api(chat, keys))
