# chatd's built-in token checker, found like any other through Twisted's
# plugin system (twisted.cred.strcred.ICheckerFactory for chatd.auth.IToken).
from chatd.auth import JWTCheckerFactory

jwt_tokens = JWTCheckerFactory()
