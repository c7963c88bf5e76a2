"""The gateway's Starlette app: routes, error mapping, and the connections it holds while it runs.

It imports no model code (torch, transformers, petals, hivemind, workers, mesh): it holds no model, so any number
of replicas can run side by side, each able to serve any request's stream.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import asyncpg
from prometheus_client import start_http_server
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import batch_api, inference, mesh_status, openai_api, usage_api
from gateway.api_keys import KeyStore, KeyStoreUnavailable
from gateway.balances import Balances
from gateway.batch_runner import BatchRunner
from gateway.budget_admission import RESERVATION_MARGIN_S, Budgets
from gateway.direct_send import DirectSendMiddleware
from gateway.errors import ApiError, error_response
from gateway.inflight import Inflight
from gateway.metrics import GatewayMetrics, RequestMetricsMiddleware
from gateway.openapi import build_openapi
from gateway.rate_limit import RateLimiter
from gateway.request_history import RequestHistory
from gateway.settings import GatewaySettings
from gateway.shards import close_shard, open_shards_once_redis_answers
from gateway.state import GatewayState
from protocol.redis_shards import redacted

log = logging.getLogger(__name__)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = "no such route; see /openapi.json" if exc.status_code == 404 else str(exc.detail)
    return error_response(exc.status_code, code, message, headers=dict(exc.headers or {}))


async def _redis_down(request: Request, exc: Exception) -> Response:
    log.warning("redis unavailable during %s: %s", request.url.path, type(exc).__name__)
    return error_response(
        503, "redis_unavailable", "the gateway cannot reach Redis; retry shortly", headers={"Retry-After": "5"}
    )


async def _key_store_down(request: Request, exc: Exception) -> Response:
    log.warning("key store unavailable: %s", exc)
    return error_response(
        503,
        "key_store_unavailable",
        "the ledger (API keys, used request ids) cannot be reached right now; retry shortly",
        headers={"Retry-After": "5"},
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s: %s", request.method, request.url.path, type(exc).__name__, exc_info=exc)
    return error_response(500, "internal_error", "the gateway failed unexpectedly; the failure was logged")


def _never() -> bool:
    return False


def create_app(settings: GatewaySettings, stopping: Callable[[], bool] = _never) -> Starlette:
    """The app; its lifespan opens Redis (waiting for it, until `stopping` says uvicorn was told to stop), the arq
    pool, PostgreSQL and the relay readers, and closes them."""
    metrics = GatewayMetrics()
    openapi = build_openapi(settings)
    if settings.gateway_metrics_port:
        openapi["paths"].pop("/metrics", None)  # served on its own port, not this one

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        opened = await open_shards_once_redis_answers(settings, metrics, stopping)
        if opened is None:  # stopped while waiting: uvicorn shuts down as soon as the start-up returns
            log.info("gateway stopped before Redis answered")
            yield
            return
        home, elsewhere = opened
        redis, relay, arq = home.redis, home.relay, home.arq
        # min_size=0: no connection at start, so a PostgreSQL outage means 503s on key lookups, not a crash loop
        pool = await asyncpg.create_pool(settings.postgres_url, min_size=0, max_size=4)
        lease_s = max(3 * settings.gateway_heartbeat_interval_s, 2 * settings.gateway_cancel_grace_s, 5.0)
        inflight = Inflight(
            redis,
            lease_s=lease_s,
            cancel_grace_s=settings.gateway_cancel_grace_s,
            request_redis=lambda model_id: (elsewhere.get(model_id) or home).redis,
        )
        app.state.gateway = GatewayState(
            settings=settings,
            metrics=metrics,
            redis=redis,
            arq=arq,
            key_store=KeyStore(pool, cache_s=settings.gateway_key_cache_s, timeout_s=settings.gateway_ledger_timeout_s),
            request_history=RequestHistory(pool, timeout_s=settings.gateway_ledger_timeout_s),
            relay=relay,
            inflight=inflight,
            rate_limiter=RateLimiter(redis, per_minute=settings.gateway_rate_limit_per_minute),
            budgets=Budgets(
                redis,
                pool,
                timeout_s=settings.gateway_ledger_timeout_s,
                reservation_ttl_s=settings.gateway_stream_deadline_s + RESERVATION_MARGIN_S,
            ),
            balances=Balances(
                redis,
                pool,
                timeout_s=settings.gateway_ledger_timeout_s,
                hold_ttl_s=settings.gateway_stream_deadline_s + RESERVATION_MARGIN_S,
            )
            if settings.gateway_require_prepaid_balance
            else None,
            shards=elsewhere,
        )
        distinct = [home, *{id(shard): shard for shard in elsewhere.values()}.values()]
        for shard in distinct:
            shard.relay.start()
        renewer = asyncio.create_task(inflight.renew_forever(lease_s / 3))
        runner = BatchRunner(app.state.gateway)
        batch_runner = asyncio.create_task(runner.run_forever())
        # Its own listener (a thread of prometheus_client), so the public port never serves /metrics.
        metrics_server = (
            start_http_server(settings.gateway_metrics_port, settings.gateway_host, registry=metrics.registry)[0]
            if settings.gateway_metrics_port
            else None
        )
        log.info(
            "gateway started models=%s readers=%d shards=%s",
            ",".join(settings.catalog.model_ids),
            settings.gateway_relay_readers,
            ",".join(f"{m}@{redacted(u)}" for m, u in settings.redis_shards.by_model.items()) or "none",
        )
        try:
            yield
        finally:
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            renewer.cancel()
            await runner.stop(batch_runner)
            await inflight.drain_pending()
            await pool.close()
            for shard in distinct:
                await close_shard(shard)
            log.info("gateway stopped")

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(openapi)

    routes = [
        Route("/health", mesh_status.health, methods=["GET"]),
        Route("/mesh/status", mesh_status.mesh_status, methods=["GET"]),
        Route("/models", mesh_status.models, methods=["GET"]),
        Route("/inference/generate", inference.generate, methods=["POST"]),
        Route("/inference/{request_id}/stream", inference.resume, methods=["GET"]),
        Route("/inference/{request_id}/cancel", inference.cancel, methods=["POST"]),
        Route("/v1/chat/completions", openai_api.chat_completions, methods=["POST"]),
        Route("/v1/completions", openai_api.completions, methods=["POST"]),
        Route("/v1/models", openai_api.list_models, methods=["GET"]),
        Route("/v1/usage", usage_api.usage, methods=["GET"]),
        Route("/v1/files", batch_api.files, methods=["GET", "POST"]),
        Route("/v1/files/{file_id}", batch_api.file, methods=["GET", "DELETE"]),
        Route("/v1/files/{file_id}/content", batch_api.file_content, methods=["GET"]),
        Route("/v1/batches", batch_api.batches, methods=["GET", "POST"]),
        Route("/v1/batches/{batch_id}", batch_api.retrieve_batch, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", batch_api.cancel_batch, methods=["POST"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
    ]
    if not settings.gateway_metrics_port:
        routes.append(Route("/metrics", metrics.endpoint, methods=["GET"]))
    return Starlette(
        routes=routes,
        # first: a streamed body skips the middleware after it, which only watch a response's start
        middleware=[Middleware(DirectSendMiddleware), Middleware(RequestMetricsMiddleware, metrics=metrics)],
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            RedisConnectionError: _redis_down,
            RedisTimeoutError: _redis_down,
            KeyStoreUnavailable: _key_store_down,
            Exception: _unexpected,
        },
        lifespan=lifespan,
    )
