"""Signed-in users for the tests: the shared key, and tokens made with it."""

from __future__ import annotations

from typing import Any

import jwt

SECRET = b"a shared secret of the test, long enough for HS256"


def token(user: str, **claims: Any) -> str:
    """A token chatd started with ``--auth jwt:key=`` a file of SECRET takes."""
    return jwt.encode({"sub": user, **claims}, SECRET, algorithm="HS256")
