"""
The web client: a single page served by chatd itself on its WebSocket port
(a plain GET of ``/``; the WebSocket upgrade of ``/`` is unchanged).  Plain
HTML, CSS and JavaScript modules, no build step, nothing from elsewhere.
"""

from __future__ import annotations

import gzip
from importlib.resources import files

from chatd import __version__

_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/view.js": ("view.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}

# Only this page's own files, and WebSocket connections back to where it came from.
_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _response(name: str, content_type: str, sign_in: bool = False, compressed: bool = False) -> bytes:
    body = files("chatd.web").joinpath(name).read_bytes()
    if sign_in and name == "index.html":
        # The page offers sign-in where the server checks tokens.
        body = body.replace(b"<body>", b'<body data-sign-in="yes">', 1)
    encoding = ""
    if compressed:
        # Made once, at start-up: every file of the page then fits in TCP's
        # first window, so a browser has the page one round trip after asking.
        body = gzip.compress(body, compresslevel=9, mtime=0)
        encoding = "Content-Encoding: gzip\r\n"
    head = (
        "HTTP/1.1 200 OK\r\n"
        f"Server: chatd/{__version__}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"{encoding}Vary: Accept-Encoding\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-cache\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        f"Content-Security-Policy: {_POLICY}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def pages(sign_in: bool = False, compressed: bool = False) -> dict[str, bytes]:
    """Request path -> the complete HTTP response (made once per server);
    ``sign_in``: the server checks tokens, so the page offers to sign in;
    ``compressed``: gzip, for a client that accepts it."""
    return {path: _response(name, kind, sign_in, compressed) for path, (name, kind) in _FILES.items()}


#: The pages of a server without authentication.
PAGES: dict[str, bytes] = pages()
