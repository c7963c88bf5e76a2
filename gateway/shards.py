"""The gateway's connections to each Redis a model's requests live on (`protocol.redis_shards`).

Each distinct Redis gets what the home Redis has for its models: a client for the request's keys (cancel flags,
stream tails, job traces), an arq pool to enqueue on its queues, and a relay whose readers block on its token
streams. A request's model picks its shard; admission, keys and wallets stay on the home Redis.
"""

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from arq import create_pool
from arq.connections import RedisSettings

from gateway.metrics import GatewayMetrics
from gateway.relay import StreamRelay
from gateway.settings import GatewaySettings
from protocol.redis_durability import check_redis_durability


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
    await check_redis_durability(redis.config_get, require=settings.far_mesh_redis_require_durable)
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
    one Redis share its connections)."""
    shards = settings.redis_shards
    by_url = {shards.home: await open_shard(shards.home, settings, metrics)}
    for url in shards.urls[1:]:
        by_url[url] = await open_shard(url, settings, metrics)
    return by_url[shards.home], {model: by_url[url] for model, url in shards.by_model.items() if url != shards.home}
