"""The fenced stream writer against a real Redis: one ending and one usage record per request, ever."""

from decimal import Decimal
from types import SimpleNamespace

import redis.asyncio as aioredis
import torch
from arq.constants import in_progress_key_prefix

from mesh.session import StepResult, served_spans
from protocol import keys
from protocol.catalog import ModelSpec
from protocol.events import DoneEvent, ErrorBody, TokenEvent
from protocol.ownership import RequestOwner
from protocol.served_steps import ServedStep, StepSpan
from protocol.usage import UsageRecord
from tests.fixtures.ledger import usage_record
from tests.fixtures.workers import make_job, usage_records
from workers.attribution import served_step
from workers.ending import end_abandoned
from workers.stream import StreamSoFar, TokenStreamWriter, Written

PRICE = Decimal("0.001")


def token(index: int, request_id: str = "req-1") -> TokenEvent:
    return TokenEvent(
        token=f"t{index}",
        request_id=request_id,
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
    assert await first.append_token(token(0)) is Written.WRITTEN
    assert await first.append_token(token(1)) is Written.WRITTEN

    second = TokenStreamWriter(redis, "req-1", "run-2", lease_ttl_s=5)
    so_far = await second.acquire()
    assert so_far.token_ids == (100, 101) and so_far.final is None and not so_far.cancelled

    assert await first.append_token(token(2)) is Written.SUPERSEDED
    assert await first.renew() is Written.SUPERSEDED
    assert await second.append_token(token(2)) is Written.WRITTEN
    assert (await stream_so_far(redis, "req-1")).token_ids == (100, 101, 102)


async def test_the_ending_and_usage_record_are_written_once_even_by_two_runs(redis: aioredis.Redis) -> None:
    first = TokenStreamWriter(redis, "req-1", "run-1", lease_ttl_s=5)
    await first.acquire()
    assert await first.finish(*ending(0)) is Written.WRITTEN
    second = TokenStreamWriter(redis, "req-1", "run-2", lease_ttl_s=5)
    await second.acquire()
    assert await second.finish(*ending(0)) is Written.CANCELLED
    assert await redis.xlen(keys.USAGE_STREAM) == 1
    assert isinstance((await stream_so_far(redis, "req-1")).final, DoneEvent)
    assert 0 < await redis.ttl(keys.token_stream("req-1")) <= keys.TOKEN_STREAM_TTL_S


async def test_a_set_cancel_flag_stops_the_next_token_without_writing_it(redis: aioredis.Redis) -> None:
    writer = TokenStreamWriter(redis, "req-1", "run-1", lease_ttl_s=5)
    await writer.acquire()
    assert await writer.append_token(token(0)) is Written.WRITTEN
    await redis.set(keys.cancel_flag("req-1"), 1)
    assert (await stream_so_far(redis, "req-1")).cancelled
    assert await writer.append_token(token(1)) is Written.CANCELLED
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
    assert await writer.renew() is Written.WRITTEN


async def test_a_token_written_renews_the_lease_and_arqs_in_progress_key_and_a_refused_one_renews_nothing(
    redis: aioredis.Redis,
) -> None:
    """Tokens that flow keep the lease without renewal round trips (`_keep_lease` then sends none)."""
    lease, in_progress = keys.job_lease("req-1"), in_progress_key_prefix + "req-1"
    writer = TokenStreamWriter(redis, "req-1", "run-1", lease_ttl_s=5)
    await writer.acquire()
    assert not writer.lease_renewed_within(5)
    await redis.set(in_progress, b"1", px=100)
    await redis.pexpire(lease, 100)  # about to lapse

    assert await writer.append_token(token(0)) is Written.WRITTEN
    assert 4000 < await redis.pttl(lease) <= 5000 and 4000 < await redis.pttl(in_progress) <= 5000
    assert writer.lease_renewed_within(1)

    await redis.set(keys.cancel_flag("req-1"), b"1")
    await redis.pexpire(lease, 100)
    assert await writer.append_token(token(1)) is Written.CANCELLED
    assert await redis.pttl(lease) <= 100


async def test_a_lapsed_lease_is_taken_back_with_arqs_in_progress_key_when_the_stream_is_as_the_run_left_it(
    redis: aioredis.Redis,
) -> None:
    """A stall longer than the lease (a GC pause, a slow step) must not leave the job claimable by another worker."""
    writer = TokenStreamWriter(redis, "req-1", "run-1", lease_ttl_s=5)
    await writer.acquire()
    assert await writer.append_token(token(0)) is Written.WRITTEN
    await redis.delete(keys.job_lease("req-1"), in_progress_key_prefix + "req-1")  # both lapsed during the stall

    assert await writer.renew() is Written.WRITTEN
    assert (await redis.get(keys.job_lease("req-1"))) == b"run-1"
    assert 0 < await redis.pttl(in_progress_key_prefix + "req-1") <= 5000
    assert await writer.append_token(token(1)) is Written.WRITTEN


async def test_a_lapsed_lease_is_not_taken_back_after_another_run_wrote_to_the_stream(redis: aioredis.Redis) -> None:
    first = TokenStreamWriter(redis, "req-1", "run-1", lease_ttl_s=5)
    await first.acquire()
    assert await first.append_token(token(0)) is Written.WRITTEN
    second = TokenStreamWriter(redis, "req-1", "run-2", lease_ttl_s=5)
    await second.acquire()
    assert await second.append_token(token(1)) is Written.WRITTEN
    await redis.delete(keys.job_lease("req-1"))  # the second run died too, and its lease lapsed

    assert await first.append_token(token(1)) is Written.SUPERSEDED
    assert (await stream_so_far(redis, "req-1")).token_ids == (100, 101)


async def test_an_unexpected_renewal_while_a_token_is_in_flight_still_counts_as_held(redis: aioredis.Redis) -> None:
    writer = TokenStreamWriter(redis, "req-1", "run-1", lease_ttl_s=5)
    await writer.acquire()
    await redis.xadd(keys.token_stream("req-1"), {"kind": "token", "data": token(0).model_dump_json()})  # in flight
    assert await writer.renew() is Written.WRITTEN


async def test_a_stream_redis_lost_under_the_run_refuses_tokens_and_takes_a_billed_ending(
    redis: aioredis.Redis,
) -> None:
    writer = TokenStreamWriter(redis, "req-1", "run-1", lease_ttl_s=5)
    await writer.acquire()
    assert await writer.append_token(token(0)) is Written.WRITTEN
    assert await writer.append_token(token(1)) is Written.WRITTEN
    await redis.flushdb()  # a restart without persistence

    assert await writer.renew() is Written.STATE_LOST
    assert await writer.append_token(token(2)) is Written.STATE_LOST
    assert await writer.finish(*ending(2)) is Written.STATE_LOST
    assert await writer.finish(*ending(2), state_lost=True) is Written.WRITTEN
    assert isinstance((await stream_so_far(redis, "req-1")).final, DoneEvent)
    assert await redis.xlen(keys.USAGE_STREAM) == 1


async def test_a_write_whose_reply_was_lost_is_recognised_when_it_is_retried(redis: aioredis.Redis) -> None:
    writer = TokenStreamWriter(redis, "req-1", "run-1", lease_ttl_s=5)
    await writer.acquire()
    assert await writer.append_token(token(0)) is Written.WRITTEN
    writer._written -= 1  # as if the reply never came: the run does not know the token is on the stream
    assert await writer.append_token(token(0)) is Written.WRITTEN
    assert await redis.xlen(keys.token_stream("req-1")) == 1

    done, usage = ending(1)
    assert await writer.finish(done, usage) is Written.WRITTEN
    assert await writer.finish(done, usage) is Written.WRITTEN  # the retry of a finish that landed
    assert await redis.xlen(keys.USAGE_STREAM) == 1


async def test_a_state_lost_ending_retried_after_its_reply_was_lost_counts_as_written_and_holds_no_lease(
    redis: aioredis.Redis,
) -> None:
    writer = TokenStreamWriter(redis, "req-1", "run-1", lease_ttl_s=5)
    await writer.acquire()
    assert await writer.append_token(token(0)) is Written.WRITTEN
    await redis.flushdb()  # a restart without persistence
    done, usage = ending(1)
    assert await writer.finish(done, usage, state_lost=True) is Written.WRITTEN
    assert await writer.finish(done, usage, state_lost=True) is Written.WRITTEN  # its retry: settled, not cancelled
    assert await redis.xlen(keys.USAGE_STREAM) == 1
    assert not await redis.exists(keys.job_lease("req-1"))  # the retry did not take back the lease it released


async def test_every_write_keeps_the_owner_key_alive_past_the_stream_and_restores_it_if_lost(
    redis: aioredis.Redis,
) -> None:
    owner = RequestOwner("key-1", "m")
    writer = TokenStreamWriter(redis, "req-1", "run-1", lease_ttl_s=5, owner=owner)
    await writer.acquire()
    await redis.set(keys.request_owner("req-1"), owner.encode(), ex=5)  # about to expire before the stream
    assert await writer.append_token(token(0)) is Written.WRITTEN
    stream_ttl = await redis.ttl(keys.token_stream("req-1"))
    assert await redis.ttl(keys.request_owner("req-1")) > stream_ttl

    await redis.delete(keys.request_owner("req-1"))
    assert await writer.finish(*ending(1)) is Written.WRITTEN
    assert RequestOwner.decode(await redis.get(keys.request_owner("req-1"))) == owner
    assert await redis.ttl(keys.request_owner("req-1")) > await redis.ttl(keys.token_stream("req-1"))


async def test_a_write_never_replaces_the_owner_another_key_holds(redis: aioredis.Redis) -> None:
    writer = TokenStreamWriter(redis, "req-1", "run-1", lease_ttl_s=5, owner=RequestOwner("key-1", "m"))
    await writer.acquire()
    await redis.set(keys.request_owner("req-1"), RequestOwner("key-2", "m").encode())
    assert await writer.append_token(token(0)) is Written.WRITTEN
    assert RequestOwner.decode(await redis.get(keys.request_owner("req-1"))).api_key_id == "key-2"


def step(tokens: int, first: str = "A") -> ServedStep:
    """A step of `tokens` positions through `first` (blocks 0-2) and B (blocks 2-4)."""
    return ServedStep(tokens=tokens, spans=(StepSpan(first, 0, 2), StepSpan("B", 2, 4, "b")))


async def test_each_tokens_step_is_kept_with_it_read_by_the_successor_and_deleted_by_the_ending(
    redis: aioredis.Redis,
) -> None:
    first = TokenStreamWriter(redis, "req-1", "run-1", lease_ttl_s=5)
    await first.acquire()
    assert await first.append_token(token(0), step(7)) is Written.WRITTEN  # the prefill's step: the prompt
    first._written -= 1  # as if the reply never came: the retried write must not keep the step twice
    assert await first.append_token(token(0), step(7)) is Written.WRITTEN
    assert await first.append_token(token(1), step(1)) is Written.WRITTEN
    await redis.set(keys.cancel_flag("req-1"), 1)
    assert await first.append_token(token(2), step(1)) is Written.CANCELLED  # not on the stream: not kept either
    assert 0 < await redis.ttl(keys.served_steps("req-1")) <= keys.TOKEN_STREAM_TTL_S

    second = TokenStreamWriter(redis, "req-1", "run-2", lease_ttl_s=5)
    so_far = await second.acquire()
    assert so_far.served_steps == (step(7), step(1)) and so_far.token_ids == (100, 101)
    assert await first.append_token(token(2), step(1, first="C")) is Written.SUPERSEDED
    assert await redis.llen(keys.served_steps("req-1")) == 2
    assert await second.finish(*ending(2)) is Written.WRITTEN
    assert not await redis.exists(keys.served_steps("req-1"))  # paid by the one usage record: never read again


async def test_an_abandoned_request_credits_the_nodes_that_served_the_tokens_it_bills(
    redis: aioredis.Redis, tiny_models: tuple[ModelSpec, ...]
) -> None:
    job = make_job(tiny_models[0], max_tokens=10)
    dead = TokenStreamWriter(redis, job.request_id, "dead-run", lease_ttl_s=5)
    await dead.acquire()
    for index, fed in enumerate((7, 1, 1)):
        assert await dead.append_token(token(index, job.request_id), step(fed)) is Written.WRITTEN
    await redis.delete(keys.job_lease(job.request_id))  # its worker died

    error = ErrorBody(code="model_not_served", message="misrouted")
    payload = job.model_dump(mode="json")
    assert await end_abandoned(redis, job.request_id, payload, error, worker_id="w", lease_ttl_s=5, prompt_tokens=7)
    (usage,) = await usage_records(redis, job.request_id)
    assert usage.tokens_generated == 3 and usage.total_cost_far > 0
    assert {c.node_id: c.work_units for c in usage.contributions} == {"A": 2 * 9, "B": 2 * 9}
    paid = sum(c.payment_far for c in usage.contributions)
    assert paid + usage.platform_fee_far + usage.platform_remainder_far == usage.total_cost_far
    assert usage.platform_remainder_far < Decimal("1e-17")  # before #29's fix: the whole cost, nobody credited


async def test_a_server_announcing_a_huge_public_name_costs_each_token_a_bounded_record_and_is_still_paid(
    redis: aioredis.Redis, tiny_models: tuple[ModelSpec, ...]
) -> None:
    wallet = "0x52908400098527886E0F7030069857D2E4169EE7"
    info = SimpleNamespace(public_name="x" * 200_000 + " far:" + wallet)
    petals_session = SimpleNamespace(
        _server_sessions=[SimpleNamespace(span=SimpleNamespace(peer_id="A", start=0, end=4, server_info=info))]
    )
    job = make_job(tiny_models[0], max_tokens=10)
    dead = TokenStreamWriter(redis, job.request_id, "dead-run", lease_ttl_s=5)
    await dead.acquire()
    for index, fed in enumerate((7, 1, 1)):
        result = StepResult(logits=torch.zeros(1), spans=served_spans(petals_session), tokens=fed)
        assert await dead.append_token(token(index, job.request_id), served_step(result)) is Written.WRITTEN

    kept = await redis.lrange(keys.served_steps(job.request_id), 0, -1)
    assert len(kept) == 3 and max(len(record) for record in kept) < 1024  # was over 200 KB a token
    await redis.delete(keys.job_lease(job.request_id))  # its worker died: the successor pays from the kept steps
    error = ErrorBody(code="model_not_served", message="misrouted")
    payload = job.model_dump(mode="json")
    assert await end_abandoned(redis, job.request_id, payload, error, worker_id="w", lease_ttl_s=5, prompt_tokens=7)
    (usage,) = await usage_records(redis, job.request_id)
    assert [(c.node_id, c.wallet, c.work_units) for c in usage.contributions] == [("A", wallet, 4 * 9)]


async def test_a_run_on_a_shard_writes_the_stream_there_and_keeps_the_owner_and_settles_on_the_home_redis(
    redis: aioredis.Redis, redis_url: str
) -> None:
    shard = aioredis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/1")  # another database: another Redis to it
    await shard.flushdb()
    owner = RequestOwner("key-1", "m")
    try:
        writer = TokenStreamWriter(shard, "req-1", "run-1", lease_ttl_s=5, owner=owner, home=redis)
        await writer.acquire()
        assert await redis.ttl(keys.request_owner("req-1")) > keys.TOKEN_STREAM_TTL_S  # taken: owner kept home
        assert await writer.append_token(token(0)) is Written.WRITTEN
        done, usage = ending(1)
        await redis.expire(keys.request_owner("req-1"), 5)  # as if the run outlived the gateway's first TTL
        assert await writer.finish(done, usage) is Written.WRITTEN

        assert await redis.ttl(keys.request_owner("req-1")) > keys.TOKEN_STREAM_TTL_S  # ended: it outlives the stream
        assert RequestOwner.decode((await redis.get(keys.request_owner("req-1"))).decode()) == owner
        assert await shard.xlen(keys.token_stream("req-1")) == 2 and await shard.xlen(keys.USAGE_STREAM) == 1
        assert not await redis.exists(keys.token_stream("req-1"), keys.USAGE_STREAM, keys.job_lease("req-1"))
    finally:
        await shard.flushdb()
        await shard.aclose()
