"""Signing out ends the session on the server too: a copy of its cookie is refused from then on.

The session cookie is signed, not stored, so by itself it stays valid until it expires (PORTAL_SESSION_TTL_S):
clearing it in the browser would not stop a copy taken earlier (another device, a stolen cookie). Signing out
therefore records the session in Redis (`keys.portal_signed_out`, by a digest of its random CSRF token, which
is unique per session) for as long as its cookie could be presented, and `SignedOutSessions` drops the cookie of
a recorded session from every request before any route reads it. If Redis does not answer, cookies are dropped
too: a sign-out is never ignored for want of a check.
"""

import hashlib
import logging
from http.cookies import SimpleCookie

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from portal.auth import COOKIE, Session
from protocol import keys

log = logging.getLogger(__name__)


def _signed_out_key(session: Session) -> str:
    return keys.portal_signed_out(hashlib.sha256(session.csrf_token.encode()).hexdigest()[:32])


async def sign_out(redis: aioredis.Redis, session: Session, *, session_ttl_s: float) -> None:
    """Refuse `session`'s cookie from now until it would have expired anyway."""
    await redis.set(_signed_out_key(session), "1", ex=max(1, int(session_ttl_s) + 1))


async def is_signed_out(redis: aioredis.Redis, session: Session) -> bool:
    return bool(await redis.exists(_signed_out_key(session)))


def _without_session_cookie(headers: list[tuple[bytes, bytes]], cookies: dict[str, str]) -> list[tuple[bytes, bytes]]:
    kept = SimpleCookie()
    for name, value in cookies.items():
        if name != COOKIE:
            kept[name] = value
    others = [(name, value) for name, value in headers if name != b"cookie"]
    remaining = "; ".join(f"{name}={morsel.coded_value}" for name, morsel in kept.items())
    return others + ([(b"cookie", remaining.encode("latin-1"))] if remaining else [])


class SignedOutSessions:
    """ASGI middleware: a request presenting a signed-out session's cookie is served as if it had none."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request = Request(scope)
            state = scope["app"].state.portal
            session = state.sessions.read(request)
            if session is not None:
                try:
                    refused = await is_signed_out(state.swarm, session)
                except (RedisError, OSError) as exc:
                    log.warning("sign-out check failed, session cookie ignored error=%s", type(exc).__name__)
                    refused = True
                if refused:
                    scope = {**scope, "headers": _without_session_cookie(scope["headers"], request.cookies)}
        await self.app(scope, receive, send)
