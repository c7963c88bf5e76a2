"""A request's cancel flag goes where its worker looks for it (its model's Redis), its slot and lease stay home."""

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.inflight import FollowedRequest, Inflight
from protocol import keys


@pytest.fixture
async def shard(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/3")  # another database: another Redis to it
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


async def test_a_cancel_flags_the_request_on_its_models_redis_and_ends_its_lease_on_home(
    redis: aioredis.Redis, shard: aioredis.Redis
) -> None:
    inflight = Inflight(
        redis, lease_s=30, cancel_grace_s=0, request_redis=lambda model_id: shard if model_id == "sharded" else redis
    )
    on_shard, at_home = FollowedRequest("key-1", "sharded", "req-s"), FollowedRequest("key-1", "home", "req-h")
    for followed in (on_shard, at_home):
        assert await inflight.admit(followed, max_streams=4) is not None
        await inflight.cancel(followed, "cancelled by client")

    assert await shard.exists(keys.cancel_flag("req-s")) and not await redis.exists(keys.cancel_flag("req-s"))
    assert await redis.exists(keys.cancel_flag("req-h")) and not await shard.exists(keys.cancel_flag("req-h"))
    assert await redis.zscore(keys.active_requests("sharded"), "req-s") is None  # the lease ended where admitted
    assert await redis.zcard(keys.active_streams("key-1")) == 2  # slots are the key's, on home, until released
    assert not await shard.exists(keys.active_requests("sharded"), keys.active_streams("key-1"))
