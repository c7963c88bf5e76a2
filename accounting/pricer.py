"""The pricer: every PRICING_INTERVAL_S, each model's prices follow its queue depth and its swarm's coverage.

It runs in the accounting process, beside the node registry refresher, because that is the one process that
already reads every model's swarm snapshot on a schedule and holds both Redis (where the gateway reads the
current price at admission) and PostgreSQL (where the price history is kept); a gateway or worker replica would
need a ledger connection it does not otherwise have. Accounting replicas take `keys.PRICER_LOCK` for one interval
before recomputing, so however many run, each interval steps each multiplier once.

A tick reads the fresh snapshots, the current live prices and each model's queue depth (ZCARD of its arq queue:
jobs queued or running, the workers' queue-depth metric), moves each multiplier one smoothed step towards the
formula's target (`protocol.pricing`), writes the changed steps to `far_model_prices` and then, in one
transaction, the live prices and the latest steps (`keys.price_history`, for /models) to Redis. A model with no
fresh snapshot keeps its price: nothing says how its swarm is served. The ledger's history is written first, so
a tick that fails part-way leaves Redis as it was and the next tick recomputes from there.
"""

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import redis.asyncio as aioredis

from accounting import periodic
from protocol import keys
from protocol.catalog import ModelCatalog
from protocol.live_prices import (
    PRICE_HISTORY_POINTS,
    LivePrice,
    PricePoint,
    catalogue_prices,
    current_prices,
    read_live_prices,
)
from protocol.pricing import PricingPolicy, block_premium_bps, next_multiplier, scaled_price, target_multiplier
from protocol.swarm import read_swarm_snapshots

log = logging.getLogger(__name__)

_INSERT_STEP = """
INSERT INTO far_model_prices (model_id, priced_at, multiplier, prompt_price_per_token_far,
                              completion_price_per_token_far, catalogue_prompt_price_far,
                              catalogue_completion_price_far, queue_depth, thinnest_block_servers)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (model_id, priced_at) DO NOTHING
"""


async def reprice(
    redis: aioredis.Redis,
    connection: asyncpg.Connection,
    catalog: ModelCatalog,
    policy: PricingPolicy,
    now: datetime | None = None,
    *,
    queues: Mapping[str, aioredis.Redis] | None = None,
) -> dict[str, LivePrice]:
    """One recomputation of every catalogue model's price; returns the live prices written. `queues`: the Redis of
    each model whose queue is not on `redis` (FAR_MESH_MODEL_REDIS); prices and snapshots are on `redis`."""
    now = now or datetime.now(UTC)
    snapshots = await read_swarm_snapshots(redis, fresh_only=True)
    live = await read_live_prices(redis)
    depths = await _queue_depths(redis, catalog, queues or {})
    written: dict[str, LivePrice] = {}
    steps: list[LivePrice] = []
    for spec, depth in zip(catalog.models, depths, strict=True):
        snapshot = snapshots.get(spec.model_id)
        if snapshot is None:
            continue
        coverage = snapshot.block_coverage
        previous = live.get(spec.model_id)
        # From what the gateway quotes now: 1 after a catalogue change or a stopped pricer's stale price.
        quoted = current_prices(catalog, spec, previous, now).multiplier
        multiplier = next_multiplier(quoted, target_multiplier(depth, coverage, policy), policy)
        base = catalogue_prices(catalog, spec)
        price = LivePrice(
            model_id=spec.model_id,
            multiplier=multiplier,
            prompt_price_per_token_far=scaled_price(base.prompt_price_per_token_far, multiplier),
            completion_price_per_token_far=scaled_price(base.completion_price_per_token_far, multiplier),
            catalogue_prompt_price_far=base.prompt_price_per_token_far,
            catalogue_completion_price_far=base.completion_price_per_token_far,
            queue_depth=depth,
            thinnest_block_servers=min(coverage, default=0),
            priced_at=now,
            block_premium_bps=block_premium_bps(coverage, policy),
        )
        written[spec.model_id] = price
        if previous is None or _step_of(previous) != _step_of(price):
            steps.append(price)
    if steps:
        await connection.executemany(_INSERT_STEP, [_row(p) for p in steps])
    if written:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.LIVE_PRICES, mapping={m: p.model_dump_json() for m, p in written.items()})
            for price in steps:
                pipe.lpush(keys.price_history(price.model_id), PricePoint.of(price).model_dump_json())
                pipe.ltrim(keys.price_history(price.model_id), 0, PRICE_HISTORY_POINTS - 1)
            await pipe.execute()
    for price in steps:
        log.info(
            "price set model_id=%s multiplier=%s queue_depth=%d thinnest_block_servers=%d",
            price.model_id,
            price.multiplier,
            price.queue_depth,
            price.thinnest_block_servers,
        )
    return written


def _step_of(price: LivePrice) -> tuple[Decimal, Decimal, Decimal]:
    """What makes a new step of the history: the multiplier, or the catalogue prices it multiplies."""
    return price.multiplier, price.catalogue_prompt_price_far, price.catalogue_completion_price_far


def _row(price: LivePrice) -> tuple[object, ...]:
    return (
        price.model_id,
        price.priced_at,
        price.multiplier,
        price.prompt_price_per_token_far,
        price.completion_price_per_token_far,
        price.catalogue_prompt_price_far,
        price.catalogue_completion_price_far,
        price.queue_depth,
        price.thinnest_block_servers,
    )


async def take_turn(redis: aioredis.Redis, owner: str, interval_s: float) -> bool:
    """True when this replica holds the pricer's lock for the coming interval (slightly less, so the next holder
    is never locked out by a tick that ran late)."""
    return bool(await redis.set(keys.PRICER_LOCK, owner, nx=True, px=max(1, int(interval_s * 900))))


async def _queue_depths(
    redis: aioredis.Redis, catalog: ModelCatalog, queues: Mapping[str, aioredis.Redis]
) -> list[int]:
    """Each catalogue model's queue length, in catalogue order, read on its own Redis: one pipeline per Redis."""
    by_redis: dict[int, tuple[aioredis.Redis, list[str]]] = {}
    for spec in catalog.models:
        queue_redis = queues.get(spec.model_id, redis)
        by_redis.setdefault(id(queue_redis), (queue_redis, []))[1].append(spec.model_id)
    depth: dict[str, int] = {}
    for queue_redis, model_ids in by_redis.values():
        async with queue_redis.pipeline(transaction=False) as pipe:
            for model_id in model_ids:
                pipe.zcard(keys.queue_for(model_id))
            depth.update(zip(model_ids, await pipe.execute(), strict=True))
    return [depth[spec.model_id] for spec in catalog.models]


async def keep_prices_moving(
    redis: aioredis.Redis,
    connect: Callable[[], Awaitable[asyncpg.Connection]],
    catalog: ModelCatalog,
    policy: PricingPolicy,
    *,
    interval_s: float,
    owner: str,
    queues: Mapping[str, aioredis.Redis] | None = None,
) -> None:
    """Reprice every `interval_s` until cancelled, when this replica's turn; an outage only delays the next tick."""

    async def tick(connection: periodic.Connect) -> None:
        if await take_turn(redis, owner, interval_s):
            await reprice(redis, await connection(), catalog, policy, queues=queues)

    await periodic.repeat("prices not recomputed", tick, connect, interval_s)


async def stop_pricing(redis: aioredis.Redis) -> None:
    """With the pricer off, drop the live prices an earlier pricer left, so every model sells at its catalogue
    prices at once rather than once they are stale. Redis may not answer yet (accounting starts before it): the
    gateway then drops those prices itself once they are LIVE_PRICE_MAX_AGE_S old."""
    try:
        await redis.delete(keys.LIVE_PRICES)
    except (OSError, aioredis.RedisError) as exc:
        log.warning("live prices of an earlier pricer not cleared (%s); they lapse on their own", type(exc).__name__)
