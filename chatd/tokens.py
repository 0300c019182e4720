"""
chatd-token: the secret and the tokens of a small deployment of chatd with
``--auth jwt:key=PATH`` (an HMAC secret file).

    chatd-token --new-key /etc/chatd/jwt.key
    chatd-token --key /etc/chatd/jwt.key --name "Alice A." alice

The first writes a new secret: 32 random bytes, readable by its owner only.
The second prints an HS256 JSON Web Token (made with PyJWT, as chatd checks
it) whose ``sub`` is the user, ``name`` the default nick and ``exp`` the
expiry.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Optional

from chatd.auth import valid_user

#: How long a token is good for unless --ttl says otherwise: a day.
DEFAULT_TTL = 24 * 3600
#: The bytes of secret --new-key writes (HS256's hash size, as RFC 7518 asks).
KEY_BYTES = 32


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
    parser.add_argument("user", nargs="?", help="the user name: 1 to 64 printable characters")
    parser.add_argument("--key", help="the HMAC secret file chatd's --auth jwt:key= names")
    parser.add_argument("--new-key", metavar="PATH",
                        help=f"write a new secret to PATH ({KEY_BYTES} random bytes, mode 0600) and stop")
    parser.add_argument("--ttl", type=float, default=DEFAULT_TTL,
                        help=f"seconds the token is good for (default {DEFAULT_TTL}, a day)")
    parser.add_argument("--name", help="the display name: the user's nick unless it sets another")
    args = parser.parse_args(argv)
    if args.new_key is not None:
        if args.key is not None or args.user is not None:
            return _fail("--new-key makes a key and nothing else: no --key, no user")
        return _new_key(args.new_key)
    if args.key is None:
        return _fail("--key PATH is needed to sign a token (make one with --new-key PATH)")
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


def _new_key(path: str) -> int:
    """A new secret at ``path``, readable by its owner only; never over another."""
    import os

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _fail(f"{path} exists already: a new key would lock out every token made with it")
    except OSError as e:
        return _fail(f"cannot write {path}: {e.strerror}")
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(KEY_BYTES))
    sys.stderr.write(f"chatd-token: wrote a new {KEY_BYTES}-byte key to {path} (mode 0600)\n")
    return 0


def _fail(message: str) -> int:
    sys.stderr.write(f"chatd-token: {message}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
