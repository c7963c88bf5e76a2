"""streams.consumer_group against a real Redis: what accounting and the verifier rely on from their group."""

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from streams import ConsumerGroup
from streams.consumer_group import FIRST

STREAM = "test-stream"


def member(redis: aioredis.Redis, name: str, group: str = "readers") -> ConsumerGroup:
    return ConsumerGroup(redis, STREAM, group, name)


async def test_joining_creates_the_stream_and_again_is_harmless_and_a_new_group_reads_from_the_first_entry(
    redis: aioredis.Redis,
) -> None:
    first = member(redis, "a")
    await first.join()
    assert await redis.exists(STREAM)
    await redis.xadd(STREAM, {"n": "1"})
    await first.join()  # every member joins at start: BUSYGROUP is the answer that it exists
    late = member(redis, "b", group="late")
    await late.join()  # a group made after entries exist still gets them all
    [(_, fields)] = await late.read(count=10)
    assert fields == {b"n": b"1"}


async def test_joining_raises_what_redis_refuses_other_than_an_existing_group(redis: aioredis.Redis) -> None:
    await redis.set(STREAM, "not a stream")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await member(redis, "a").join()


async def test_each_new_entry_goes_to_one_member_and_stays_pending_in_its_name_until_acknowledged(
    redis: aioredis.Redis,
) -> None:
    a, b = member(redis, "a"), member(redis, "b")
    await a.join()
    ids = [await redis.xadd(STREAM, {"n": str(n)}) for n in range(3)]
    got_a = await a.read(count=2)
    got_b = await b.read(count=10, block_ms=10)
    assert [entry_id for entry_id, _ in got_a + got_b] == ids
    assert [entry_id for entry_id, _ in await a.read(FIRST, count=10)] == ids[:2]  # a's own pending entries
    await a.ack(ids[0])
    await a.ack()  # nothing to acknowledge: no command
    assert [entry_id for entry_id, _ in await a.read(FIRST, count=10)] == ids[1:2]


async def test_a_read_after_redis_lost_the_group_joins_again_reads_nothing_then_reads_what_comes(
    redis: aioredis.Redis,
) -> None:
    a = member(redis, "a")
    await a.join()
    await redis.delete(STREAM)  # a Redis restarted without its data has neither stream nor group
    assert await a.read(count=10) == []
    entry_id = await redis.xadd(STREAM, {"n": "1"})
    assert [got for got, _ in await a.read(count=10)] == [entry_id]


async def test_a_claim_takes_over_idle_entries_only_and_a_trimmed_pending_entry_is_read_without_fields(
    redis: aioredis.Redis,
) -> None:
    dead, alive = member(redis, "dead"), member(redis, "alive")
    await dead.join()
    ids = [await redis.xadd(STREAM, {"n": str(n)}) for n in range(3)]
    await dead.read(count=3)
    assert await alive.claim(60_000, count=10) == (FIRST, [])  # not idle long enough: still the dead one's
    await redis.xdel(STREAM, ids[1])  # trimmed away while pending
    [(_, own_trimmed)] = [entry for entry in await dead.read(FIRST, count=10) if entry[0] == ids[1]]
    assert own_trimmed == {}
    await asyncio.sleep(0.01)
    cursor, claimed = await alive.claim(5, count=10)
    assert cursor == FIRST  # the scan went round
    assert claimed == [(ids[0], {b"n": b"0"}), (ids[2], {b"n": b"2"})]  # Redis 7 drops the trimmed one itself
    assert [entry_id for entry_id, _ in await alive.read(FIRST, count=10)] == [ids[0], ids[2]]
