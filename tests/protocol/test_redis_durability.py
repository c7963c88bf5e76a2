"""The start-up check of what Redis must guarantee, against real redis-servers run both ways."""

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from devstack.redis_server import RedisServer
from mesh.ports import free_port
from protocol.redis_durability import check_redis_durability, durability_problems
from protocol.settings import SettingsError


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "durable", durable=True).start()
    yield server
    server.stop()


async def test_a_redis_without_persistence_or_with_eviction_is_named_for_each_setting(redis: aioredis.Redis) -> None:
    await redis.config_set("maxmemory-policy", "allkeys-lru")
    try:
        problems = await durability_problems(redis.config_get)
    finally:
        await redis.config_set("maxmemory-policy", "noeviction")
    assert problems == ["appendonly=no (needs yes)", "maxmemory-policy=allkeys-lru (needs noeviction)"]


async def test_required_durability_refuses_to_start_naming_the_variable(redis: aioredis.Redis) -> None:
    with pytest.raises(SettingsError, match="FAR_MESH_REDIS_REQUIRE_DURABLE: Redis is not durable: appendonly=no"):
        await check_redis_durability(redis.config_get, require=True)


async def test_otherwise_a_volatile_redis_is_a_warning(redis: aioredis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    await check_redis_durability(redis.config_get, require=False)
    assert "Redis is not durable: appendonly=no" in caplog.text


async def test_the_dev_stacks_redis_is_durable_and_keeps_its_data_across_a_restart(durable_redis: RedisServer) -> None:
    client = aioredis.Redis.from_url(durable_redis.url)
    try:
        assert await durability_problems(client.config_get) == []
        await check_redis_durability(client.config_get, require=True)
        await client.set("kept", "1")
        await client.connection_pool.disconnect()
        durable_redis.stop()  # a clean stop flushes the append-only file, as `everysec` does within a second
        durable_redis.start()
        assert await client.get("kept") == b"1"
    finally:
        await client.aclose()


async def test_a_redis_that_cannot_be_asked_is_only_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    try:
        with caplog.at_level(logging.WARNING):
            await check_redis_durability(client.config_get, require=True)
    finally:
        await client.aclose()
    assert "could not check that Redis is durable" in caplog.text
