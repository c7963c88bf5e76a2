"""Who is signed in, and whether a state-changing request really comes from the portal's own page.

The session is a signed cookie (itsdangerous): the wallet that signed in and a random CSRF token, HttpOnly
(scripts cannot read it), SameSite=Lax (other sites' forms do not carry it), Secure unless configured off,
expiring after PORTAL_SESSION_TTL_S or when the session signs out (`portal.sign_out` refuses the cookie's copies
from then on). Every POST that acts for a signed-in wallet must echo the CSRF token,
as the form field `csrf_token` or the header `X-CSRF-Token`; pages embed it, other origins cannot read it.
"""

import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from portal.errors import CsrfRefused, NotSignedIn
from protocol.wallet import is_checksum_address

COOKIE = "far_portal_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class Session:
    wallet: str
    csrf_token: str


class SessionCodec:
    def __init__(self, secret_key: str, *, max_age_s: float, secure: bool) -> None:
        self._serializer = URLSafeTimedSerializer(secret_key, salt="far-mesh-portal-session")
        self.max_age_s = max_age_s
        self.secure = secure

    def new(self, wallet: str) -> Session:
        return Session(wallet, secrets.token_urlsafe(24))

    def read(self, request: Request) -> Session | None:
        raw = request.cookies.get(COOKIE)
        if not raw:
            return None
        try:
            data = self._serializer.loads(raw, max_age=int(self.max_age_s))
        except BadSignature:
            return None
        if not isinstance(data, dict):
            return None
        wallet, token = data.get("wallet"), data.get("csrf")
        if not isinstance(wallet, str) or not isinstance(token, str) or not is_checksum_address(wallet):
            return None
        return Session(wallet, token)

    def write(self, response: Response, session: Session) -> None:
        response.set_cookie(
            COOKIE,
            self._serializer.dumps({"wallet": session.wallet, "csrf": session.csrf_token}),
            max_age=int(self.max_age_s),
            httponly=True,
            samesite="lax",
            secure=self.secure,
            path="/",
        )

    def clear(self, response: Response) -> None:
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax", secure=self.secure)


def require_session(session: Session | None) -> Session:
    if session is None:
        raise NotSignedIn("sign in with your wallet first")
    return session


def check_csrf(session: Session, presented: str | None) -> None:
    """The request must echo the session's CSRF token; a form or script from another origin cannot know it."""
    if not presented or not hmac.compare_digest(presented.encode(), session.csrf_token.encode()):
        raise CsrfRefused("the form's CSRF token is missing or wrong; reload the page and try again", field=CSRF_FIELD)
