"""The portal's Starlette app: lifespan (ledger pool, Redis), error pages and JSON errors, security headers."""

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.templating import Jinja2Templates

from portal.auth import SessionCodec
from portal.errors import PortalError, TooMany, Unavailable
from portal.message_limits import TooManyMessages
from portal.nonces import TooManyPending
from portal.settings import PortalSettings
from portal.sign_out import SignedOutSessions
from portal.state import TEMPLATES_DIR, PortalState
from protocol.backoff import Backoff, until_it_answers
from schema.transient import LEDGER_AWAY

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    # scripts only from the portal itself (no inline script runs), no framing (clickjacking), no MIME sniffing
    "content-security-policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path == "/openapi.json"


def _error(request: Request, status: int, body: dict[str, object]) -> Response:
    if _wants_json(request):
        return JSONResponse(body, status_code=status)
    state: PortalState = request.app.state.portal
    error = body["error"]
    assert isinstance(error, dict)
    session = state.sessions.read(request)
    return state.templates.TemplateResponse(
        request,
        "error.html",
        {"status": status, "error": error, "session": session, "csrf_token": session.csrf_token if session else ""},
        status_code=status,
    )


async def _portal_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PortalError)
    response = _error(request, exc.status, exc.body())
    if isinstance(exc, TooManyMessages):
        response.headers["retry-after"] = str(exc.retry_after_s)
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error(request, exc.status_code, {"error": {"code": code, "message": str(exc.detail)}})


async def _too_many_nonces(request: Request, exc: Exception) -> Response:
    response = await _portal_error(request, TooMany(str(exc)))
    response.headers["retry-after"] = "60"
    return response


async def _ledger_error(request: Request, exc: Exception) -> Response:
    log.warning("ledger unavailable path=%s error=%s", request.url.path, type(exc).__name__)
    return await _portal_error(request, Unavailable("the ledger did not answer; try again shortly"))


class SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        # Pages and answers are a signed-in wallet's own (a new key's secret, balances): no cache may keep one.
        if not request.url.path.startswith("/static/"):
            response.headers["cache-control"] = "no-store"
        return response


LEDGER_WAIT_FIRST_S = 0.2
LEDGER_WAIT_CAP_S = 5.0


def _never() -> bool:
    return False


async def open_pool_once_postgres_answers(
    settings: PortalSettings, stopping: Callable[[], bool]
) -> asyncpg.Pool | None:
    """The ledger pool, once PostgreSQL accepts its first connection; None if told to stop first.

    Started while PostgreSQL restarted, the portal's pool raised and uvicorn exited with status 3 ("Application
    startup failed"; the chaos soak, seed 33), as a verifier once did: the portal waits for the ledger instead, with
    capped backoff, and looks at `stopping` (uvicorn's should_exit) so SIGTERM still stops it at once
    (`protocol.backoff.until_it_answers`).
    """

    def waiting(exc: Exception, delay_s: float) -> None:
        log.warning(
            "portal waiting for PostgreSQL at POSTGRES_URL (%s: %s); retrying in %.1fs",
            type(exc).__name__,
            exc,
            delay_s,
        )

    return await until_it_answers(
        lambda: asyncpg.create_pool(settings.postgres_url, min_size=1, max_size=8, timeout=5),
        LEDGER_AWAY,
        Backoff(LEDGER_WAIT_FIRST_S, LEDGER_WAIT_CAP_S),
        stopping,
        waiting,
    )


def create_app(settings: PortalSettings, stopping: Callable[[], bool] = _never) -> Starlette:
    """The app; `stopping` says the server was told to stop (uvicorn's should_exit), which ends a start-up that
    waits for PostgreSQL."""
    from portal.routes import ROUTES

    state = PortalState(
        settings=settings,
        sessions=SessionCodec(
            settings.portal_secret_key.get_secret_value(),
            max_age_s=settings.portal_session_ttl_s,
            secure=settings.portal_secure_cookies,
        ),
        templates=Jinja2Templates(directory=str(TEMPLATES_DIR)),
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.pool = pool = await open_pool_once_postgres_answers(settings, stopping)
        if pool is None:  # stopped while waiting: uvicorn shuts down as soon as the start-up returns
            log.info("portal stopped before PostgreSQL answered")
            yield
            return
        state.redis = aioredis.Redis.from_url(str(settings.redis_url), decode_responses=True)
        log.info("portal started domain=%s chain_id=%d", settings.portal_domain, settings.portal_chain_id)
        try:
            yield
        finally:
            await state.redis.aclose()
            await pool.close()

    app = Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        middleware=[Middleware(SecurityHeaders), Middleware(SignedOutSessions)],
        exception_handlers={
            PortalError: _portal_error,
            TooManyPending: _too_many_nonces,
            HTTPException: _http_error,
            asyncpg.PostgresConnectionError: _ledger_error,
            asyncpg.InterfaceError: _ledger_error,
            asyncpg.exceptions.InternalClientError: _ledger_error,  # a pooled connection PostgreSQL left mid-operation
            ConnectionRefusedError: _ledger_error,
        },
    )
    app.state.portal = state
    return app
