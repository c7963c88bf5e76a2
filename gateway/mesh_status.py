"""GET /health, /mesh/status and /models: the seed's status endpoints, served from the workers' snapshots (and,
for each node /models lists, the reputation and bans the verifier publishes). /models says what each model is
(family, parameters, context length, license) as its catalogue entry says it.

With no fresh snapshot the gateway says "disconnected" / "unavailable" and reports no node counts rather
than guessing. `active_sessions` counts the requests streaming to clients on every replica.
"""

import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.state import state_of
from gateway.submission import resolve_model
from protocol import keys
from protocol.live_prices import all_prices_now, prices_now, read_price_histories
from protocol.swarm import read_swarm_snapshot, read_swarm_snapshots
from protocol.version import VERSION

SERVICE = "far-mesh-coordinator"


async def health(request: Request) -> JSONResponse:
    """Healthy when Redis answers: without it the gateway can neither enqueue nor relay."""
    state = state_of(request)
    try:
        await state.redis.ping()
    except (OSError, RedisError) as exc:
        return JSONResponse(
            {"status": "unhealthy", "service": SERVICE, "version": VERSION, "redis": type(exc).__name__},
            status_code=503,
        )
    return JSONResponse({"status": "healthy", "service": SERVICE, "version": VERSION})


async def mesh_status(request: Request) -> JSONResponse:
    state = state_of(request)
    spec = resolve_model(state, request.query_params.get("model_id"))
    snapshot = await read_swarm_snapshot(state.redis, spec.model_id)
    body: dict[str, Any] = {
        "model_id": spec.model_id,
        "active_nodes": snapshot.active_nodes if snapshot else None,
        "active_sessions": await state.inflight.active_sessions(spec.model_id),
        **(await prices_now(state.redis, state.settings.catalog, spec)).quote(),
        "status": "connected" if snapshot else "disconnected",
        "healthy": bool(snapshot and snapshot.healthy),
        "snapshot_taken_at": snapshot.taken_at.isoformat() if snapshot else None,
    }
    return JSONResponse(body)


async def models(request: Request) -> JSONResponse:
    """Every model on sale, what it is and its current prices (`protocol.live_prices`), with the servers of its
    fresh snapshot and the trust the verifier gives each."""
    state = state_of(request)
    catalog = state.settings.catalog
    snapshots = await read_swarm_snapshots(state.redis, fresh_only=True)
    prices = await all_prices_now(state.redis, catalog)
    histories = await read_price_histories(state.redis, catalog.model_ids)
    reputation, banned = await _trust(state.redis)
    listed = []
    for spec in catalog.models:
        snapshot = snapshots.get(spec.model_id)
        servers = snapshot.servers if snapshot else ()
        listed.append(
            {
                "model_id": spec.model_id,
                "active_nodes": snapshot.active_nodes if snapshot else None,
                **catalog.describe(spec),
                **prices[spec.model_id].quote(),
                "status": "available" if snapshot and snapshot.healthy else "unavailable",
                "nodes": [
                    {
                        "node_id": s.peer_id,
                        "start_block": s.start_block,
                        "end_block": s.end_block,
                        "state": s.state,
                        "reputation": reputation.get(s.peer_id),
                        "banned": s.peer_id in banned,
                    }
                    for s in servers
                ],
                "price_history": [point.listed() for point in histories[spec.model_id]],
            }
        )
    return JSONResponse({"models": listed})


async def _trust(redis: aioredis.Redis) -> tuple[dict[str, str], set[str]]:
    """Each node's reputation (as the verifier wrote it) and the nodes banned from routing right now."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.NODE_REPUTATION)
        pipe.zrangebyscore(keys.BANNED_NODES, time.time(), "+inf")
        reputation, banned = await pipe.execute()
    return dict(reputation), set(banned)
