"""The multiplexed relay over real Redis: one blocking XREAD per reader, many clients, exact positions."""

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.relay import Entry, StreamRelay
from protocol.stream_ids import parse_entry_id


@pytest.fixture
async def relay(redis_url: str, redis: aioredis.Redis) -> AsyncIterator[StreamRelay]:
    client = aioredis.Redis.from_url(redis_url)
    relay = StreamRelay(client, readers=1, keepalive_s=0.2, block_ms=30_000)  # a wake must not wait for this timeout
    relay.start()
    yield relay
    await relay.stop()
    await client.aclose()


async def test_a_new_subscriber_wakes_the_reader_already_blocked_on_other_streams(
    relay: StreamRelay, redis: aioredis.Redis
) -> None:
    first = await relay.subscribe("gen:a")
    await asyncio.sleep(0.1)  # the reader is now blocked on gen:a only
    await redis.xadd("gen:b", {"kind": "token", "data": "{}"})
    second = await relay.subscribe("gen:b")
    batch = await asyncio.wait_for(second.next_batch(), timeout=5)
    assert batch is not None and len(batch) == 1
    assert await asyncio.wait_for(first.next_batch(), timeout=5) == []  # a keep-alive tick: nothing for gen:a


async def test_clients_of_one_stream_at_different_positions_each_get_exactly_what_follows_theirs(
    relay: StreamRelay, redis: aioredis.Redis
) -> None:
    ids = [await redis.xadd("gen:c", {"kind": "token", "data": f'{{"i": {i}}}'}) for i in range(3)]
    from_start = await relay.subscribe("gen:c")
    from_second = await relay.subscribe("gen:c", ids[1].decode())
    await redis.xadd("gen:c", {"kind": "done", "data": "{}"})

    async def drain(sub: object) -> list[str]:
        seen: list[str] = []
        while not seen or seen[-1] != "done":
            batch = await asyncio.wait_for(sub.next_batch(), timeout=5)  # type: ignore[attr-defined]
            seen.extend(entry.kind for entry in batch)
        return seen

    assert await drain(from_start) == ["token", "token", "token", "done"]
    assert await drain(from_second) == ["token", "done"]
    relay.unsubscribe(from_start)
    relay.unsubscribe(from_second)
    assert relay.subscriptions == 0


async def test_a_client_joining_a_followed_stream_from_an_earlier_id_misses_nothing_the_reader_had_in_flight(
    relay: StreamRelay, redis: aioredis.Redis, redis_url: str
) -> None:
    """A resume (or a repeated POST) while another connection follows the stream: the reply to the XREAD already
    out started past the newcomer's position, so taking it would skip what lies between."""
    import redis as blocking_redis

    writer = blocking_redis.Redis.from_url(redis_url)  # writes without a turn of the event loop
    live = await relay.subscribe("gen:join")
    for i in range(3):
        await redis.xadd("gen:join", {"kind": "token", "data": f'{{"i": {i}}}'})
    seen = 0
    while seen < 3:
        seen += len(await asyncio.wait_for(live.next_batch(), timeout=5) or [])
    await asyncio.sleep(0.1)  # the reader is blocked again, reading from after the third token
    writer.xadd("gen:join", {"kind": "token", "data": '{"i": 3}'})  # answered at once; the reply waits unread
    resumed = await relay.subscribe("gen:join", "0-0")
    writer.xadd("gen:join", {"kind": "done", "data": "{}"})
    writer.close()

    kinds: list[str] = []
    while not kinds or kinds[-1] != "done":
        kinds.extend(entry.kind for entry in await asyncio.wait_for(resumed.next_batch(), timeout=5) or [])
    assert kinds == ["token"] * 4 + ["done"]


async def test_an_entry_is_relayed_with_its_kind_and_data_whatever_the_order_of_its_fields(
    relay: StreamRelay, redis: aioredis.Redis
) -> None:
    first = await redis.xadd("gen:d", {"data": '{"i": 0}', "kind": "token"})
    await redis.xadd("gen:d", {"kind": "done", "data": '{"i": 1}'})
    sub = await relay.subscribe("gen:d")
    batch: list[Entry] = []
    while len(batch) < 2:
        batch += await asyncio.wait_for(sub.next_batch(), timeout=5) or []
    assert [(e.entry_id, e.kind, e.data, e.final) for e in batch][0] == (first.decode(), "token", b'{"i": 0}', False)
    assert (batch[1].kind, batch[1].data, batch[1].final) == ("done", b'{"i": 1}', True)
    relay.unsubscribe(sub)


@pytest.mark.parametrize(
    "text", ["", "abc", "1-x", "-1", "1--1", "1" * 30, "18446744073709551616-0", "1-" + "9" * 25, "١-0"]
)
def test_entry_ids_that_redis_would_not_issue_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_entry_id(text)
