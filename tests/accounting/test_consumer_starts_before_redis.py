"""Accounting (re)started while Redis restarts waits for it instead of exiting (found by the chaos soak, issue
#29: a consumer restarted during a Redis restart exited with status 1 and stayed down until restarted by hand)."""

import asyncio
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from accounting.consumer import UsageConsumer
from devstack.redis_server import RedisServer
from mesh.ports import free_port
from protocol import keys
from tests.accounting.helpers import consumer_settings, settled
from tests.fixtures.ledger import stored_sessions, unique_id, usage_record, wait_until


async def test_a_consumer_started_before_redis_answers_waits_then_stores_what_arrives(
    migrated_postgres_dsn: str, tmp_path: Path
) -> None:
    port = free_port()
    server = RedisServer(tmp_path / "redis", port=port)
    redis = aioredis.Redis.from_url(server.url)
    settings = consumer_settings(migrated_postgres_dsn, server.url, accounting_retry_max_s=0.2)
    consumer = UsageConsumer(redis, lambda: asyncpg.connect(migrated_postgres_dsn), settings)
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.sleep(1.0)  # several tries against nothing listening
        assert not task.done(), "the consumer exited while Redis was down"
        await asyncio.to_thread(server.start)
        records = [usage_record(unique_id("req"), {}) for _ in range(3)]
        await wait_until(lambda: _group_exists(redis), what="the consumer created its group once Redis answered")
        for record in records:
            await redis.xadd(keys.USAGE_STREAM, record.to_stream_fields())
        await wait_until(lambda: settled(redis), what="the records were stored and acknowledged")
        assert (await stored_sessions(migrated_postgres_dsn, [r.request_id for r in records]))[0] == len(records)
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 10)
        await redis.aclose()
        server.stop()


async def test_told_to_stop_before_redis_ever_answers_it_returns() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    redis = aioredis.Redis.from_url(url)
    settings = consumer_settings("postgresql://postgres@127.0.0.1:1/nothing", url, accounting_retry_max_s=0.2)
    consumer = UsageConsumer(redis, lambda: pytest.fail("no ledger without Redis"), settings)
    task = asyncio.create_task(consumer.run())
    await asyncio.sleep(0.5)
    consumer.stop()
    await asyncio.wait_for(task, 5)
    await redis.aclose()


async def _group_exists(redis: aioredis.Redis) -> bool:
    try:
        return any(g["name"] == keys.USAGE_CONSUMER_GROUP.encode() for g in await redis.xinfo_groups(keys.USAGE_STREAM))
    except aioredis.ResponseError:
        return False
