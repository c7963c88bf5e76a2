"""Jobs arq gives up on, against a real Redis (no swarm: these paths end before any Petals call).

Whatever happens to a job, its client must see its stream end with exactly one error event, and delivered
tokens must be billed by exactly one usage record.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis
from arq import create_pool
from arq.connections import RedisSettings
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix

from protocol import keys
from protocol.catalog import ModelSpec
from protocol.error_codes import StreamErrorCode
from protocol.events import DoneEvent, ErrorBody, ErrorEvent, TokenEvent
from protocol.jobs import GENERATE_FUNCTION, GenerateJob
from protocol.money import cost_of
from tests.fixtures.workers import PRICE_FAR, enqueue, make_job, read_stream, settings_for, usage_records, wait_for_end
from workers import generate as generate_module
from workers.generate import WorkerContext
from workers.queue_worker import QueueWorker
from workers.stream import TokenStreamWriter

UNREACHABLE_PEERS = ["/ip4/127.0.0.1/tcp/9/p2p/QmNotDialledBecauseTheseJobsNeverReachTheSwarm"]
PROMPT_TOKENS = 3


class PromptOnly:
    """Stands in for a served model on paths that only count the prompt's tokens (no chat template, no swarm)."""

    tokenizer = None

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    def encode(self, text: str) -> list[int]:
        return list(range(PROMPT_TOKENS))


def context(redis: aioredis.Redis, redis_url: str, models: Sequence[ModelSpec], **overrides: Any) -> WorkerContext:
    settings = settings_for(redis_url, UNREACHABLE_PEERS, models, **overrides)
    served: Any = {models[0].model_id: PromptOnly(models[0])}
    return WorkerContext(redis=redis, settings=settings, served=served, worker_id="test-worker")


async def run_until_queue_is_empty(ctx: WorkerContext, model: ModelSpec) -> None:
    worker = QueueWorker(ctx, model.model_id, burst=True)
    try:
        await asyncio.wait_for(worker.main(), 30)
    finally:
        await worker.close()


async def deliver_tokens(redis: aioredis.Redis, request_id: str, count: int) -> None:
    """What an earlier run of the request streamed before its worker died."""
    writer = TokenStreamWriter(redis, request_id, "earlier-run", lease_ttl_s=5)
    await writer.acquire()
    for index in range(count):
        event = TokenEvent(
            token=f"t{index}",
            request_id=request_id,
            index=index,
            token_id=10 + index,
            tokens_generated=index + 1,
            cost_far=cost_of(index + 1, PRICE_FAR),
        )
        await writer.append_token(event)


async def the_error(redis: aioredis.Redis, request_id: str, tokens: int) -> ErrorEvent:
    events = await read_stream(redis, request_id)
    assert [e.index for e in events if isinstance(e, TokenEvent)] == list(range(tokens))
    assert len(events) == tokens + 1
    error = events[-1]
    assert isinstance(error, ErrorEvent)
    assert error.tokens_generated == tokens and error.total_cost_far == cost_of(tokens, PRICE_FAR)
    return error


async def test_a_job_out_of_tries_ends_its_stream_and_bills_the_tokens_already_delivered(
    redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...]
) -> None:
    model = tiny_models[0]
    job = make_job(model)
    await deliver_tokens(redis, job.request_id, 2)
    await enqueue(redis_url, job)
    await redis.set(retry_key_prefix + job.request_id, 3)  # three workers died running it

    await run_until_queue_is_empty(context(redis, redis_url, tiny_models, worker_job_max_tries=3), model)

    error = await the_error(redis, job.request_id, 2)
    assert error.error.code == "retries_exhausted"
    (usage,) = await usage_records(redis, job.request_id)
    assert (usage.status, usage.tokens_generated, usage.prompt_tokens) == ("failed", 2, PROMPT_TOKENS)
    assert usage.total_cost_far == usage.platform_remainder_far == cost_of(2, PRICE_FAR)
    assert await redis.zcard(keys.queue_for(model.model_id)) == 0


async def test_a_job_whose_run_times_out_ends_its_stream_with_a_job_timeout_error(
    redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def stalls_after_two_tokens(job: GenerateJob, *args: Any, **kwargs: Any) -> str:
        await deliver_tokens(redis, job.request_id, 2)
        await asyncio.sleep(60)
        return "unreachable"

    monkeypatch.setattr("workers.generate.run_request", stalls_after_two_tokens)
    model = tiny_models[0]
    job = make_job(model)
    await enqueue(redis_url, job)

    await run_until_queue_is_empty(context(redis, redis_url, tiny_models, worker_job_timeout_s=0.5), model)

    error = await the_error(redis, job.request_id, 2)
    assert error.error.code == "job_timeout" and "0.5 s" in error.error.message
    (usage,) = await usage_records(redis, job.request_id)
    assert usage.tokens_generated == 2 and usage.total_cost_far == cost_of(2, PRICE_FAR)


async def test_an_expired_job_ends_its_stream_without_a_usage_record_when_nothing_was_delivered(
    redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...]
) -> None:
    model = tiny_models[0]
    job = make_job(model)
    await enqueue(redis_url, job)
    await redis.delete(job_key_prefix + job.request_id)  # what arq's expiry does to a job left queued too long

    await run_until_queue_is_empty(context(redis, redis_url, tiny_models), model)

    assert (await the_error(redis, job.request_id, 0)).error.code == "job_expired"
    assert await redis.xlen(keys.USAGE_STREAM) == 0


async def test_an_invalid_payload_ends_its_stream_with_an_invalid_job_error_and_logs_no_prompt(
    redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...], caplog: pytest.LogCaptureFixture
) -> None:
    model = tiny_models[0]
    request_id = "req-invalid-payload"
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    caplog.set_level(logging.INFO)
    try:
        payload = {"request_id": request_id, "model_id": model.model_id, "max_tokens": -1, "prompt": "my-secret"}
        await pool.enqueue_job(
            GENERATE_FUNCTION, payload, _job_id=request_id, _queue_name=keys.queue_for(model.model_id)
        )
    finally:
        await pool.aclose()

    await run_until_queue_is_empty(context(redis, redis_url, tiny_models), model)

    assert (await the_error(redis, request_id, 0)).error.code == "invalid_job"
    assert await redis.xlen(keys.USAGE_STREAM) == 0
    assert "job rejected" in caplog.text and "max_tokens" in caplog.text
    assert "my-secret" not in caplog.text


async def test_a_request_that_already_ended_is_not_ended_again(
    redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...]
) -> None:
    job = make_job(tiny_models[0])
    ctx = context(redis, redis_url, tiny_models)
    payload = job.model_dump(mode="json")
    first, second = StreamErrorCode.JOB_EXPIRED, StreamErrorCode.WORKER_ERROR
    assert await ctx.end_abandoned(job.request_id, payload, ErrorBody(code=first, message="test"))
    assert not await ctx.end_abandoned(job.request_id, payload, ErrorBody(code=second, message="test"))

    assert (await the_error(redis, job.request_id, 0)).error.code == first
    (usage,) = await usage_records(redis, job.request_id)
    assert usage.total_cost_far == Decimal(0)


async def test_a_taken_job_is_marked_in_progress_only_for_one_lease_until_its_run_renews_it(
    redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...]
) -> None:
    model = tiny_models[0]
    job = make_job(model)
    await enqueue(redis_url, job)
    worker = QueueWorker(context(redis, redis_url, tiny_models, worker_lease_ttl_s=2), model.model_id)
    worker._pool = await create_pool(RedisSettings.from_dsn(redis_url))

    async def dies_before_its_first_lease_write(job_id: str, score: int) -> None:
        return None

    worker.run_job = dies_before_its_first_lease_write  # type: ignore[method-assign]
    try:
        await worker.start_jobs([job.request_id.encode()])
        assert 0 < await redis.pttl(in_progress_key_prefix + job.request_id) <= 2000
    finally:
        await worker.close()


async def test_an_announced_job_is_taken_at_once_rather_than_at_the_next_poll(
    redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...]
) -> None:
    model = tiny_models[0]
    async with polling_only_at_start(QueueWorker(context(redis, redis_url, tiny_models), model.model_id)):
        job = await cancelled_job(redis, model)
        await enqueue(redis_url, job)

        (done,) = await wait_for_end(redis, job.request_id, timeout_s=30)
        assert isinstance(done, DoneEvent) and done.status == "cancelled"


async def test_an_announced_job_is_claimed_by_its_id_without_a_look_at_the_queue(
    redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...]
) -> None:
    """A look at the queue is a round trip on the way to the first token; the wake-up already names the job."""
    model = tiny_models[0]
    worker = QueueWorker(context(redis, redis_url, tiny_models), model.model_id)
    async with polling_only_at_start(worker):
        looks = 0
        poll_iteration = worker._poll_iteration

        async def counted() -> None:
            nonlocal looks
            looks += 1
            await poll_iteration()

        worker._poll_iteration = counted  # type: ignore[method-assign]
        await redis.publish(keys.queue_wake(model.model_id), "req_not_queued")  # a stray id is claimed by nobody
        job = await cancelled_job(redis, model)
        await enqueue(redis_url, job)
        (done,) = await wait_for_end(redis, job.request_id, timeout_s=30)
    assert isinstance(done, DoneEvent) and done.status == "cancelled"
    assert looks == 0


async def test_a_job_queued_behind_a_full_worker_starts_as_soon_as_a_slot_frees(
    redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...]
) -> None:
    """...oldest first: a job announced while others waited does not take the slot before them."""
    model = tiny_models[0]
    worker = QueueWorker(context(redis, redis_url, tiny_models, worker_max_jobs=1), model.model_id)
    jobs = [await cancelled_job(redis, model) for _ in range(4)]
    first, waiting, held = jobs[0], jobs[1:3], jobs[3]
    may_run = {job.request_id: asyncio.Event() for job in jobs}
    started: list[str] = []
    run_job = worker.run_job

    async def in_turn(job_id: str, score: int) -> None:
        started.append(job_id)
        await may_run[job_id].wait()
        await run_job(job_id, score)

    worker.run_job = in_turn  # type: ignore[method-assign]
    async with polling_only_at_start(worker):
        for job in (first, *waiting):
            await enqueue(redis_url, job)  # their wake-ups find the worker full
        await wait_until(lambda: started == [first.request_id])
        may_run[first.request_id].set()
        await wait_until(lambda: len(started) == 2)
        heard: list[bytes] = []

        class Heard(list[bytes]):
            def append(self, job_id: bytes) -> None:
                heard.append(job_id)
                super().append(job_id)

        async with worker._polling:  # the poller wakes for the announcement below but must wait for this
            worker._announced = Heard()
            await enqueue(redis_url, held)  # announced while the last of the waiting ones still waits
            await wait_until(lambda: bool(heard) and not worker._announced)  # the poller holds it now
            may_run[waiting[0].request_id].set()  # a slot frees while the poller holds the announcement
            await wait_until(lambda: worker.job_counter == 0)
        for job in (waiting[1], held):
            may_run[job.request_id].set()

        for job in jobs:
            (done,) = await wait_for_end(redis, job.request_id, timeout_s=30)
            assert isinstance(done, DoneEvent) and done.status == "cancelled"
    assert started == [job.request_id for job in jobs]


async def cancelled_job(redis: aioredis.Redis, model: ModelSpec) -> GenerateJob:
    """A job whose run ends before any Petals call: its request is cancelled before it starts."""
    job = make_job(model)
    await redis.set(keys.cancel_flag(job.request_id), 1)
    return job


@contextlib.asynccontextmanager
async def polling_only_at_start(worker: QueueWorker) -> AsyncIterator[None]:
    """Run `worker` until the block ends; after its first look at the queue, only a wake-up brings a job in."""
    worker.poll_delay_s = 3600
    running = asyncio.create_task(worker.main())
    try:
        redis = worker.context.redis
        channel = keys.queue_wake(worker.model_id)
        async with asyncio.timeout(10):
            while not (await redis.exists(worker.health_check_key) and (await redis.pubsub_numsub(channel))[0][1]):
                await asyncio.sleep(0.01)  # the health check is written by the first poll
        yield
    finally:
        running.cancel()
        if worker.tasks:  # a job that published its end may still be finishing; close() would cancel it
            await asyncio.wait(list(worker.tasks.values()), timeout=10)
        await worker.close()


async def wait_until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_job_whose_lease_lapsed_while_its_run_goes_on_in_this_worker_is_not_started_twice(
    redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...]
) -> None:
    model = tiny_models[0]
    job = make_job(model)
    await enqueue(redis_url, job)
    worker = QueueWorker(context(redis, redis_url, tiny_models), model.model_id)
    started: list[str] = []
    stalled = asyncio.Event()

    async def stalls(job_id: str, score: int) -> None:
        started.append(job_id)
        await stalled.wait()

    worker.run_job = stalls  # type: ignore[method-assign]
    try:
        await worker.start_jobs([job.request_id.encode()])
        await asyncio.sleep(0)
        await redis.delete(in_progress_key_prefix + job.request_id)  # the stalled run did not renew its lease
        await worker.start_jobs([job.request_id.encode()])
        await asyncio.sleep(0)
        assert started == [job.request_id]
        assert worker.job_counter == 1
    finally:
        stalled.set()
        await worker.close()


async def test_a_job_is_claimed_by_one_worker_only_and_not_before_it_is_due(
    redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...]
) -> None:
    model = tiny_models[0]
    due, deferred = make_job(model), make_job(model)
    await enqueue(redis_url, due)
    await redis.zadd(keys.queue_for(model.model_id), {deferred.request_id: time.time() * 1000 + 60_000})
    started: list[tuple[str, str]] = []
    workers = [QueueWorker(context(redis, redis_url, tiny_models), model.model_id) for _ in range(2)]
    for name, worker in zip("ab", workers, strict=True):

        async def record(job_id: str, score: int, name: str = name) -> None:
            started.append((name, job_id))

        worker.run_job = record  # type: ignore[method-assign]
    try:
        ids = [due.request_id.encode(), deferred.request_id.encode()]
        await asyncio.gather(*(worker.start_jobs(ids) for worker in workers))
        await asyncio.sleep(0)  # let the started tasks run
        assert [job_id for _, job_id in started] == [due.request_id]
    finally:
        for worker in workers:
            await worker.close()


async def test_a_run_superseded_by_another_leaves_the_job_to_its_successor(
    redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the first run deleted the job, the successor's death would lose the request: nobody would end it."""
    model = tiny_models[0]
    job = await cancelled_job(redis, model)
    run_to_end = generate_module._run_to_end
    successor = asyncio.Event()

    async def taken_over_while_running(*args: Any) -> str:
        await TokenStreamWriter(redis, job.request_id, "successor-run", lease_ttl_s=30).acquire()
        await redis.set(in_progress_key_prefix + job.request_id, b"1", px=30_000)  # what the successor's claim set
        try:
            return await run_to_end(*args)
        finally:
            successor.set()

    monkeypatch.setattr(generate_module, "_run_to_end", taken_over_while_running)
    async with polling_only_at_start(QueueWorker(context(redis, redis_url, tiny_models), model.model_id)):
        await enqueue(redis_url, job)
        async with asyncio.timeout(10):
            await successor.wait()
        await asyncio.sleep(0.2)  # arq's finish_job would run now

    assert await redis.exists(job_key_prefix + job.request_id)
    assert await redis.zscore(keys.queue_for(model.model_id), job.request_id) is not None
    assert await redis.pttl(in_progress_key_prefix + job.request_id) > 20_000
    assert await redis.xlen(keys.token_stream(job.request_id)) == 0  # the superseded run wrote nothing
