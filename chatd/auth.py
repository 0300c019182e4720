"""
Who a connection belongs to: tokens checked through ``twisted.cred``.

A client presents a bearer token (at the handshake, or with the ``auth``
action); a :class:`~twisted.cred.portal.Portal` checks it with the checker
``--auth NAME:options`` names and its realm makes the connection's
:class:`Identity`.  Checkers are Twisted plugins providing
:class:`twisted.cred.strcred.ICheckerFactory` for :class:`IToken`
credentials, found the way Twisted finds its own; the built-in one,
``jwt``, verifies JSON Web Tokens with PyJWT.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any, Optional

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.cred.strcred import ICheckerFactory, findCheckerFactories
from twisted.internet.defer import Deferred, fail, succeed
from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface, implementer

from chatd.settings import parse_moderator as parse_spec

#: Tokens longer than this are refused without being decoded.
MAX_TOKEN = 8 * 1024
#: The shortest HMAC secret accepted: HS256's hash size (RFC 7518, 3.2).
MIN_SECRET = 32
#: The longest user name (a token's ``sub``).
MAX_USER = 64
_PRINTABLE = set(string.printable) - set("\t\n\r\x0b\x0c")


class AuthError(ValueError):
    """An ``--auth`` that cannot be used; the message says why."""


class IToken(ICredentials):
    """A bearer token, as the client presented it."""

    token = Attribute("The token, as text.")


@implementer(IToken)
@dataclass(frozen=True)
class Token:
    token: str


class IChatUser(Interface):
    """The avatar of an authenticated connection: a :class:`Identity`."""


@dataclass(frozen=True)
class Identity:
    """An authenticated user: the name, the default nick, and when the
    credentials stop being good (POSIX seconds; None: never)."""

    user: str
    name: Optional[str] = None
    expires: Optional[float] = None


class InvalidToken(UnauthorizedLogin):
    """A token that is not good: malformed, badly signed, not for us."""


class TokenExpired(UnauthorizedLogin):
    """A token that was good, but is no longer."""


def valid_user(user: Any) -> bool:
    """1 to 64 printable characters."""
    return isinstance(user, str) and 0 < len(user) <= MAX_USER and all(c in _PRINTABLE for c in user)


@implementer(IRealm)
class ChatRealm:
    """Makes the connection's :class:`Identity` from what a checker
    answered: an Identity already, or a user name."""

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple[Any, Identity, Any]:
        if IChatUser not in interfaces:
            raise NotImplementedError("chatd's realm only makes chat users")
        identity = avatarId if isinstance(avatarId, Identity) else Identity(
            avatarId.decode("utf-8") if isinstance(avatarId, bytes) else str(avatarId))
        if not valid_user(identity.user):
            raise InvalidToken("the user name must be 1 to 64 printable characters")
        return IChatUser, identity, lambda: None


@implementer(ICredentialsChecker)
class JWTChecker:
    """
    Verifies a JSON Web Token with PyJWT: the signature with ``key`` by one
    of ``algorithms`` (never the token's own choice), ``exp`` and ``nbf``
    with ``leeway`` seconds, and ``aud`` and ``iss`` when given.  The
    avatar ID is an :class:`Identity` from ``sub``, ``name`` and ``exp``.
    """

    credentialInterfaces = (IToken,)

    def __init__(
        self, key: Any, algorithms: list[str], audience: Optional[str] = None,
        issuer: Optional[str] = None, leeway: float = 0.0,
    ) -> None:
        import jwt

        self._jwt = jwt
        self.key = key
        self.algorithms = algorithms
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway

    def requestAvatarId(self, credentials: Any) -> "Deferred[Identity]":
        jwt = self._jwt
        token = credentials.token
        if not isinstance(token, str) or len(token) > MAX_TOKEN:
            return fail(InvalidToken("too long"))
        try:
            claims = jwt.decode(
                token, self.key, algorithms=self.algorithms, audience=self.audience,
                issuer=self.issuer, leeway=self.leeway,
                options={"require": ["sub"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            return fail(TokenExpired())
        except (jwt.InvalidTokenError, ValueError, TypeError):
            return fail(InvalidToken())
        user, name = claims.get("sub"), claims.get("name")
        if not valid_user(user):
            return fail(InvalidToken("bad sub"))
        if not (isinstance(name, str) and name.strip()):
            name = None
        return succeed(Identity(user, name, self._deadline(claims)))

    def _deadline(self, claims: dict[str, Any]) -> Optional[float]:
        """
        When the token stops being good, as PyJWT judged it: ``exp`` read
        as PyJWT reads it (``int()``, so "1700000000" is a deadline too),
        plus the leeway it allowed.  None: no ``exp``.
        """
        if "exp" not in claims:
            return None
        return float(int(claims["exp"])) + self.leeway


@implementer(ICheckerFactory, IPlugin)
class JWTCheckerFactory:
    """``--auth jwt:key=PATH[:algorithms=A,B][:audience=A][:issuer=I][:leeway=SECONDS]``."""

    authType = "jwt"
    authHelp = (
        "JSON Web Tokens, checked with PyJWT. key is an HMAC secret file or a PEM "
        "public key; algorithms defaults to HS256 for a secret and to the key's "
        "own (RS256, ES256, EdDSA) for a PEM key."
    )
    argStringFormat = "key=PATH[:algorithms=HS256,RS256,...][:audience=A][:issuer=I][:leeway=SECONDS]"
    credentialInterfaces = (IToken,)

    def generateChecker(self, argstring: str = "") -> JWTChecker:
        import jwt
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        _, options = parse_spec(f"jwt:{argstring}" if argstring else "jwt")
        unknown = set(options) - {"key", "algorithms", "audience", "issuer", "leeway"}
        if unknown:
            raise AuthError(f"jwt: unknown option {sorted(unknown)[0]!r}")
        path = options.get("key")
        if not path:
            raise AuthError("jwt: key=PATH is required (an HMAC secret file or a PEM public key)")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise AuthError(f"jwt: cannot read the key {path}: {e.strerror}") from None
        if not data:
            raise AuthError(f"jwt: the key file {path} is empty")
        key: Any = data
        implied = "HS256"
        if not data.lstrip().startswith(b"-----BEGIN") and len(data) < MIN_SECRET:
            raise AuthError(
                f"jwt: the key {path} has {len(data)} bytes; an HMAC secret needs {MIN_SECRET} at least "
                f"(make one with: chatd-token --new-key PATH)")
        if data.lstrip().startswith(b"-----BEGIN"):
            try:
                key = load_pem_public_key(data)
            except ValueError:
                raise AuthError(f"jwt: {path} is not a PEM public key") from None
            implied = _implied_algorithm(key)
            if not implied:
                raise AuthError(f"jwt: {path}: unsupported key type {type(key).__name__}")
        algorithms = [a.strip() for a in options.get("algorithms", implied).split(",") if a.strip()]
        supported = jwt.algorithms.get_default_algorithms()
        for algorithm in algorithms:
            if algorithm not in supported or algorithm == "none":
                raise AuthError(f"jwt: unknown algorithm {algorithm!r}")
            if (algorithm.startswith("HS")) != (implied == "HS256"):
                what = "an HMAC secret" if implied == "HS256" else "a public key"
                raise AuthError(f"jwt: algorithm {algorithm} cannot be used with {what} ({path})")
        if not algorithms:
            raise AuthError("jwt: algorithms must name at least one")
        try:
            leeway = float(options.get("leeway", "0"))
        except ValueError:
            raise AuthError(f"jwt: leeway must be a number of seconds, not {options['leeway']!r}") from None
        if not 0 <= leeway < float("inf"):
            raise AuthError(f"jwt: leeway must be a number of seconds >= 0, not {options['leeway']!r}")
        return JWTChecker(key, algorithms, options.get("audience"), options.get("issuer"), leeway)


def _implied_algorithm(key: Any) -> str:
    """The algorithm a PEM public key's type implies ("": none we know)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ES256"
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return "EdDSA"
    return ""


def checker_factories() -> dict[str, Any]:
    """Every installed checker factory that checks tokens, by name."""
    return {
        factory.authType: factory for factory in findCheckerFactories()
        if IToken in getattr(factory, "credentialInterfaces", ())
    }


def build_portal(spec: str) -> Portal:
    """The portal for ``--auth NAME[:ARGS]``; AuthError says what is wrong."""
    name, _, argstring = spec.partition(":")
    installed = checker_factories()
    factory = installed.get(name)
    if factory is None:
        known = ", ".join(sorted(installed)) or "none"
        raise AuthError(f"no token checker named {name!r} (installed: {known})")
    try:
        checker = factory.generateChecker(argstring)
    except AuthError:
        raise
    except Exception as e:
        raise AuthError(f"{name}: {e}") from None
    return Portal(ChatRealm(), [checker])
