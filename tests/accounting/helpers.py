"""Steps the accounting tests share: a usage consumer's settings and a running one, whether the usage stream is
settled. The payer's are in tests/payouts/helpers.py."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from accounting.consumer import UsageConsumer
from accounting.settings import AccountingSettings
from protocol import keys

ROOT = Path(__file__).resolve().parents[2]
PAYER_PROCESS = ROOT / "tests" / "chain" / "payer_process.py"


def consumer_settings(dsn: str, redis_url: str, **overrides: object) -> AccountingSettings:
    values: dict[str, object] = {
        "postgres_url": dsn,
        "redis_url": redis_url,
        "accounting_batch_size": 50,
        "accounting_batch_wait_ms": 20,
        "accounting_claim_idle_ms": 300,
        "accounting_claim_interval_s": 0.1,
        "accounting_trim_interval_s": 0.1,
        "accounting_metrics_port": 0,
    } | overrides
    return AccountingSettings.from_env(**values)


@asynccontextmanager
async def running_consumer(
    dsn: str, redis_url: str, redis: aioredis.Redis, **overrides: object
) -> AsyncIterator[UsageConsumer]:
    settings = consumer_settings(dsn, redis_url, **overrides)
    running = UsageConsumer(redis, lambda: asyncpg.connect(dsn), settings)
    task = asyncio.create_task(running.run())
    try:
        yield running
    finally:
        running.stop()
        await asyncio.wait_for(task, 10)


async def settled(redis: aioredis.Redis) -> bool:
    groups = await redis.xinfo_groups(keys.USAGE_STREAM)
    group = next(g for g in groups if g["name"] == keys.USAGE_CONSUMER_GROUP.encode())
    return bool(group["pending"] == 0 and group["lag"] == 0)
