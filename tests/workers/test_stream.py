"""The fenced stream writer against a real Redis: one ending and one usage record per request, ever."""

from decimal import Decimal

import redis.asyncio as aioredis
from arq.constants import in_progress_key_prefix

from protocol import keys
from protocol.events import DoneEvent, TokenEvent
from protocol.usage import UsageRecord
from tests.fixtures.ledger import usage_record
from workers.stream import Appended, StreamSoFar, TokenStreamWriter

PRICE = Decimal("0.001")


def token(index: int) -> TokenEvent:
    return TokenEvent(
        token=f"t{index}",
        request_id="req-1",
        index=index,
        token_id=100 + index,
        tokens_generated=index + 1,
        cost_far=PRICE * (index + 1),
    )


async def stream_so_far(redis: aioredis.Redis, request_id: str) -> StreamSoFar:
    """What a run acquiring the request now would find, read without taking the lease."""
    entries = await redis.xrange(keys.token_stream(request_id))
    return StreamSoFar.parse(entries, cancelled=bool(await redis.exists(keys.cancel_flag(request_id))))


def ending(tokens: int) -> tuple[DoneEvent, UsageRecord]:
    usage = usage_record("req-1", {}, tokens_generated=tokens, price_far=PRICE, model_id="m")
    done = DoneEvent(
        request_id="req-1",
        status="completed",
        finish_reason="length",
        prompt_tokens=usage.prompt_tokens,
        tokens_generated=tokens,
        total_cost_far=usage.total_cost_far,
    )
    return done, usage


async def test_a_recovering_run_reads_the_delivered_tokens_and_fences_out_the_old_run(redis: aioredis.Redis) -> None:
    first = TokenStreamWriter(redis, "req-1", "run-1", lease_ttl_s=5)
    await first.acquire()
    assert await first.append_token(token(0)) is Appended.WRITTEN
    assert await first.append_token(token(1)) is Appended.WRITTEN

    second = TokenStreamWriter(redis, "req-1", "run-2", lease_ttl_s=5)
    so_far = await second.acquire()
    assert so_far.token_ids == (100, 101) and so_far.final is None and not so_far.cancelled

    assert await first.append_token(token(2)) is Appended.LEASE_LOST
    assert not await first.renew()
    assert await second.append_token(token(2)) is Appended.WRITTEN
    assert (await stream_so_far(redis, "req-1")).token_ids == (100, 101, 102)


async def test_the_ending_and_usage_record_are_written_once_even_by_two_runs(redis: aioredis.Redis) -> None:
    first = TokenStreamWriter(redis, "req-1", "run-1", lease_ttl_s=5)
    await first.acquire()
    assert await first.finish(*ending(0))
    second = TokenStreamWriter(redis, "req-1", "run-2", lease_ttl_s=5)
    await second.acquire()
    assert not await second.finish(*ending(0))
    assert await redis.xlen(keys.USAGE_STREAM) == 1
    assert isinstance((await stream_so_far(redis, "req-1")).final, DoneEvent)
    assert 0 < await redis.ttl(keys.token_stream("req-1")) <= keys.TOKEN_STREAM_TTL_S


async def test_a_set_cancel_flag_stops_the_next_token_without_writing_it(redis: aioredis.Redis) -> None:
    writer = TokenStreamWriter(redis, "req-1", "run-1", lease_ttl_s=5)
    await writer.acquire()
    assert await writer.append_token(token(0)) is Appended.WRITTEN
    await redis.set(keys.cancel_flag("req-1"), 1)
    assert (await stream_so_far(redis, "req-1")).cancelled
    assert await writer.append_token(token(1)) is Appended.CANCELLED
    assert await redis.xlen(keys.token_stream("req-1")) == 1


async def test_the_lease_shortens_arqs_in_progress_key_so_a_dead_workers_job_frees_quickly(
    redis: aioredis.Redis,
) -> None:
    in_progress = in_progress_key_prefix + "req-1"
    await redis.set(in_progress, b"1", px=910_000)  # what arq sets: job timeout + 10 s
    writer = TokenStreamWriter(redis, "req-1", "run-1", lease_ttl_s=2)
    await writer.acquire()
    assert 0 < await redis.pttl(in_progress) <= 2000
    assert 0 < await redis.pttl(keys.job_lease("req-1")) <= 2000
    assert await writer.renew()
