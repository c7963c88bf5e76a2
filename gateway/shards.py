"""The gateway's connections to each Redis a model's requests live on (`protocol.redis_shards`).

Each distinct Redis gets what the home Redis has for its models: a client for the request's keys (cancel flags,
stream tails, job traces), an arq pool to enqueue on its queues, and a relay whose readers block on its token
streams. A request's model picks its shard; admission, keys and wallets stay on the home Redis.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from arq import create_pool
from arq.connections import RedisSettings
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.metrics import GatewayMetrics
from gateway.relay import StreamRelay
from gateway.settings import GatewaySettings
from protocol.backoff import Backoff, until_it_answers
from protocol.redis_durability import check_redis_durability

log = logging.getLogger(__name__)

REDIS_WAIT_FIRST_S = 0.2
REDIS_WAIT_CAP_S = 5.0
REDIS_AWAY: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
"""What opening a shard raises while its Redis is down or restarting (arq gives up with a ConnectionError)."""


@dataclass(frozen=True)
class Shard:
    """One Redis's connections: `redis` (replies decoded), `relay` (its own readers, on `reader_redis`) and `arq`
    (its queues)."""

    redis: aioredis.Redis
    relay: StreamRelay
    arq: Any  # arq.connections.ArqRedis (arq ships no type hints)
    reader_redis: aioredis.Redis | None = None


async def open_shard(url: str, settings: GatewaySettings, metrics: GatewayMetrics) -> Shard:
    """Connect to the Redis at `url` (its durability checked as the home Redis's is); the relay is not started."""
    redis = aioredis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=2, socket_timeout=5)
    try:
        await check_redis_durability(redis.config_get, require=settings.far_mesh_redis_require_durable)
    except BaseException:
        await redis.aclose()
        raise
    reader_redis = aioredis.Redis.from_url(url, socket_connect_timeout=2)
    relay = StreamRelay(
        reader_redis,
        readers=settings.gateway_relay_readers,
        keepalive_s=settings.gateway_heartbeat_interval_s,
        observe_latencies_s=metrics.relay_latency.observe_many,
    )
    arq = await create_pool(RedisSettings.from_dsn(url))
    return Shard(redis=redis, relay=relay, arq=arq, reader_redis=reader_redis)


async def close_shard(shard: Shard) -> None:
    """Stop the relay (its readers end their reads) and close the connections."""
    await shard.relay.stop()
    await shard.arq.aclose()
    if shard.reader_redis is not None:
        await shard.reader_redis.aclose()
    await shard.redis.aclose()


async def open_shards(settings: GatewaySettings, metrics: GatewayMetrics) -> tuple[Shard, dict[str, Shard]]:
    """The home Redis's connections, and each model's that lives elsewhere (model id -> its shard; models sharing
    one Redis share its connections); on a failure, those already opened are closed."""
    shards = settings.redis_shards
    by_url: dict[str, Shard] = {}
    try:
        for url in shards.urls:
            by_url[url] = await open_shard(url, settings, metrics)
    except BaseException:
        for opened in by_url.values():
            await close_shard(opened)
        raise
    return by_url[shards.home], {model: by_url[url] for model, url in shards.by_model.items() if url != shards.home}


async def open_shards_once_redis_answers(
    settings: GatewaySettings, metrics: GatewayMetrics, stopping: Callable[[], bool]
) -> tuple[Shard, dict[str, Shard]] | None:
    """`open_shards`, waiting out a Redis that does not answer yet (`protocol.backoff.until_it_answers`); None once
    `stopping` (uvicorn's should_exit) says to stop first. Started while Redis restarted, the gateway
    exited instead (status 3), and under a Procfile runner one exit stops every process."""

    def waiting(exc: Exception, delay_s: float) -> None:
        log.warning("gateway waiting for Redis (%s); retrying in %.1fs", type(exc).__name__, delay_s)

    return await until_it_answers(
        lambda: open_shards(settings, metrics),
        REDIS_AWAY,
        Backoff(REDIS_WAIT_FIRST_S, REDIS_WAIT_CAP_S),
        stopping,
        waiting,
    )
