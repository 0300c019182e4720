"""
chatd-token: a signed token for a user, for a small deployment of chatd
with ``--auth jwt:key=PATH`` (an HMAC secret file).

    chatd-token --key /etc/chatd/jwt.key --name "Alice A." alice

prints an HS256 JSON Web Token (made with PyJWT, as chatd checks it) whose
``sub`` is the user, ``name`` the default nick and ``exp`` the expiry.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Optional

from chatd.auth import valid_user

#: How long a token is good for unless --ttl says otherwise: a day.
DEFAULT_TTL = 24 * 3600


def make_token(secret: bytes, user: str, ttl: float, now: float, name: Optional[str] = None) -> str:
    """An HS256 token for ``user``, good for ``ttl`` seconds from ``now``."""
    import jwt

    issued = int(now)
    claims: dict[str, object] = {"sub": user, "iat": issued, "exp": issued + int(ttl)}
    if name is not None:
        claims["name"] = name
    return jwt.encode(claims, secret, algorithm="HS256")


def main(argv: Optional[list[str]] = None, clock: Any = None) -> int:
    """``clock``: an ``IReactorTime`` (default: Twisted's reactor)."""
    parser = argparse.ArgumentParser(
        prog="chatd-token", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("user", help="the user name: 1 to 64 printable characters")
    parser.add_argument("--key", required=True, help="the HMAC secret file chatd's --auth jwt:key= names")
    parser.add_argument("--ttl", type=float, default=DEFAULT_TTL,
                        help=f"seconds the token is good for (default {DEFAULT_TTL}, a day)")
    parser.add_argument("--name", help="the display name: the user's nick unless it sets another")
    args = parser.parse_args(argv)
    if not valid_user(args.user):
        return _fail("the user name must be 1 to 64 printable characters")
    if not 0 < args.ttl < 10 * 365 * 24 * 3600:
        return _fail(f"--ttl must be a number of seconds above 0, not {args.ttl:g}")
    try:
        with open(args.key, "rb") as f:
            secret = f.read()
    except OSError as e:
        return _fail(f"cannot read the key {args.key}: {e.strerror}")
    if not secret:
        return _fail(f"the key file {args.key} is empty")
    if secret.lstrip().startswith(b"-----BEGIN"):
        return _fail(f"{args.key} is a PEM key: chatd-token signs with a shared secret file (HS256)")
    if clock is None:
        from twisted.internet import reactor as clock
    sys.stdout.write(make_token(secret, args.user, args.ttl, clock.seconds(), args.name) + "\n")
    return 0


def _fail(message: str) -> int:
    sys.stderr.write(f"chatd-token: {message}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
