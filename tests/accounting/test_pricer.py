"""The pricer against real Redis and PostgreSQL: a model's prices rise under a synthetic backlog and with a block
left to one server, fall back to the catalogue's once both pass, and each step is kept in `far_model_prices`;
replicas take turns, so one interval steps a multiplier once."""

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
import redis.asyncio as aioredis

from accounting.pricer import keep_prices_moving, reprice, take_turn
from protocol import keys
from protocol.catalog import ModelCatalog, ModelSpec
from protocol.live_prices import read_live_price, read_price_histories
from protocol.pricing import PricingPolicy
from protocol.swarm import ServerSnapshot, SwarmSnapshot
from tests.fixtures.ledger import unique_id

POLICY = PricingPolicy()
PROMPT, COMPLETION = Decimal("0.00002"), Decimal("0.0003")


def swarm(model_id: str, *spans: tuple[int, int]) -> SwarmSnapshot:
    servers = tuple(
        ServerSnapshot(peer_id=f"Qm{n}", start_block=a, end_block=b, throughput=10.0, state="online")
        for n, (a, b) in enumerate(spans)
    )
    return SwarmSnapshot(model_id=model_id, dht_prefix="t", num_blocks=4, taken_at=datetime.now(UTC), servers=servers)


def catalog_of(model_id: str) -> ModelCatalog:
    spec = ModelSpec(model_id=model_id, prompt_price_per_token_far=PROMPT, completion_price_per_token_far=COMPLETION)
    return ModelCatalog(models=(spec,), default_model_id=model_id, default_price_far=Decimal("0.0001"))


async def publish(redis: aioredis.Redis, snapshot: SwarmSnapshot) -> None:
    await redis.hset(keys.SWARM_SNAPSHOTS, snapshot.model_id, snapshot.model_dump_json())  # type: ignore[misc]


async def ticks(
    redis: aioredis.Redis, connection: asyncpg.Connection, catalog: ModelCatalog, count: int, start: datetime
) -> list[Decimal]:
    """The multiplier after each of `count` recomputations, a pricing interval (10 s) apart."""
    seen = []
    for n in range(count):
        written = await reprice(redis, connection, catalog, POLICY, now=start + timedelta(seconds=10 * n))
        seen.append(written[catalog.default_model_id].multiplier)
    return seen


async def test_prices_rise_with_a_backlog_and_a_thin_block_and_fall_back_when_both_pass(
    redis: aioredis.Redis, migrated_postgres_dsn: str
) -> None:
    model = unique_id("priced/model")
    catalog = catalog_of(model)
    two_each = [(0, 4), (0, 4)]
    await publish(redis, swarm(model, *two_each))
    connection = await asyncpg.connect(migrated_postgres_dsn)
    try:
        start = datetime.now(UTC)
        # Served at the target, nothing queued: the catalogue price, recorded once.
        assert await ticks(redis, connection, catalog, 2, start) == [Decimal(1), Decimal(1)]

        # A synthetic backlog of 32 jobs: target 1 + 0.5 x 32/16 = 2, reached in smoothed steps.
        await redis.zadd(keys.queue_for(model), {f"job-{n}": n for n in range(32)})
        rising = await ticks(redis, connection, catalog, 6, start + timedelta(seconds=20))
        assert rising == [Decimal(s) for s in ("1.5", "1.75", "1.875", "1.9375", "2", "2")]
        live = await read_live_price(redis, model)
        assert live is not None and live.queue_depth == 32
        assert (live.prompt_price_per_token_far, live.completion_price_per_token_far) == (2 * PROMPT, 2 * COMPLETION)

        # The backlog drains, but blocks 2-3 are left with one server: 1 + (0.5 + 0.25) / 2 = 1.375.
        await redis.delete(keys.queue_for(model))
        await publish(redis, swarm(model, (0, 4), (0, 2)))
        thin = await ticks(redis, connection, catalog, 5, start + timedelta(seconds=80))
        assert thin[-1] == Decimal("1.375") and all(m > 1 for m in thin)
        live = await read_live_price(redis, model)
        assert live is not None and live.thinnest_block_servers == 1
        assert live.block_premium_bps == (10_000, 10_000, 15_000, 15_000)  # the thin blocks' providers' premium
        assert live.completion_price_per_token_far == Decimal("0.0004125")

        # The server comes back: the price falls back to the catalogue's, exactly.
        await publish(redis, swarm(model, *two_each))
        falling = await ticks(redis, connection, catalog, 5, start + timedelta(seconds=130))
        assert falling[-1] == Decimal(1) and falling == sorted(falling, reverse=True)
        live = await read_live_price(redis, model)
        assert live is not None and live.completion_price_per_token_far == COMPLETION

        # The history holds each step once (not every tick), in order, with what the formula saw.
        history = await connection.fetch(
            "SELECT multiplier, completion_price_per_token_far, queue_depth, thinnest_block_servers "
            "FROM far_model_prices WHERE model_id = $1 ORDER BY priced_at",
            model,
        )
        multipliers = [r["multiplier"] for r in history]
        assert multipliers == [Decimal(1), *rising[:5], *_steps(thin), *_steps([thin[-1], *falling])[1:]]
        assert max(r["queue_depth"] for r in history) == 32 and min(r["thinnest_block_servers"] for r in history) == 1
        assert all(r["completion_price_per_token_far"] == COMPLETION * r["multiplier"] for r in history)
        # and /models' recent window in Redis holds the same steps
        (recent,) = (await read_price_histories(redis, [model])).values()
        assert [p.multiplier for p in recent] == multipliers
    finally:
        await connection.close()


def _steps(multipliers: list[Decimal]) -> list[Decimal]:
    """The values of `multipliers` where each differs from the one before it."""
    return [m for n, m in enumerate(multipliers) if n == 0 or m != multipliers[n - 1]]


async def test_a_model_without_a_fresh_snapshot_keeps_its_price(
    redis: aioredis.Redis, migrated_postgres_dsn: str
) -> None:
    model = unique_id("unwatched/model")
    connection = await asyncpg.connect(migrated_postgres_dsn)
    try:
        await redis.zadd(keys.queue_for(model), {"job": 0})
        assert await reprice(redis, connection, catalog_of(model), POLICY) == {}
        assert await read_live_price(redis, model) is None
    finally:
        await connection.close()


@pytest.mark.parametrize(
    "outage",
    [
        OSError("the ledger is not up yet"),
        # a connection a PostgreSQL restart left mid-operation: it killed the usage consumer (the chaos soak, seed 33)
        asyncpg.exceptions.InternalClientError("cannot switch to state 15; another operation is in progress"),
    ],
    ids=type,
)
async def test_the_pricer_loop_prices_every_interval_and_survives_an_unreachable_ledger(
    redis: aioredis.Redis, migrated_postgres_dsn: str, outage: Exception
) -> None:
    model = unique_id("looped/model")
    await publish(redis, swarm(model, (0, 4)))  # one server on every block: target 1 + (0.5 + 0.5) / 2 = 1.5
    attempts = 0

    async def connect() -> asyncpg.Connection:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise outage
        return await asyncpg.connect(migrated_postgres_dsn)

    loop = asyncio.create_task(
        keep_prices_moving(redis, connect, catalog_of(model), POLICY, interval_s=0.05, owner="replica-a")
    )
    try:
        for _ in range(200):
            live = await read_live_price(redis, model)
            if live is not None and live.multiplier == Decimal("1.5"):
                break
            await asyncio.sleep(0.02)
        assert live is not None and live.multiplier == Decimal("1.5") and attempts == 2
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def test_one_replica_reprices_per_interval(redis: aioredis.Redis) -> None:
    assert await take_turn(redis, "replica-a", 10.0)
    assert not await take_turn(redis, "replica-b", 10.0)
    await redis.delete(keys.PRICER_LOCK)  # the interval passed
    assert await take_turn(redis, "replica-b", 10.0)


async def test_a_model_on_a_shard_is_priced_by_the_queue_on_its_own_redis(
    redis: aioredis.Redis, redis_url: str, migrated_postgres_dsn: str
) -> None:
    model = unique_id("sharded/model")
    shard = aioredis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/2")  # another database: another Redis to it
    await publish(redis, swarm(model, (0, 4), (0, 4)))
    await shard.zadd(keys.queue_for(model), {f"job-{n}": n for n in range(32)})
    await redis.zadd(keys.queue_for(model), {"stray": 0})  # not its queue: never read
    connection = await asyncpg.connect(migrated_postgres_dsn)
    try:
        written = await reprice(redis, connection, catalog_of(model), POLICY, queues={model: shard})
        assert written[model].queue_depth == 32 and written[model].multiplier > 1
        live = await read_live_price(redis, model)  # prices stay on the home Redis
        assert live is not None and live.queue_depth == 32
    finally:
        await connection.close()
        await shard.flushdb()
        await shard.aclose()
