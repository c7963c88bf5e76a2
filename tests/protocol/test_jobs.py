"""Enqueueing a generate job on a real Redis: arq's job, its queue and the wake-up, in one call, never twice."""

import pytest
import redis.asyncio as aioredis
from arq import create_pool
from arq.connections import RedisSettings
from arq.jobs import Job

from protocol import keys
from protocol.jobs import GENERATE_FUNCTION, GenerateJob, enqueue_generate
from tests.fixtures.workers import PRICE_FAR


def job(request_id: str) -> GenerateJob:
    return GenerateJob(
        request_id=request_id,
        model_id="test/model",
        prompt="hello",
        max_tokens=4,
        temperature=0.0,
        top_p=1.0,
        price_per_token_far=PRICE_FAR,
        enqueued_at=0.0,
    )


async def test_a_job_is_queued_as_arq_queues_it_and_its_workers_are_woken_in_the_same_call(
    redis: aioredis.Redis, redis_url: str
) -> None:
    """One atomic call: the job arq's worker reads as its own, on the model's queue, and the wake-up with it."""
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    wake_ups = redis.pubsub()
    await wake_ups.subscribe(keys.queue_wake("test/model"))
    await wake_ups.get_message(timeout=1)  # the subscription's confirmation
    try:
        assert await enqueue_generate(pool, job("req-queued")) is True
        woken = await wake_ups.get_message(timeout=5)
        info = await Job("req-queued", pool, _queue_name=keys.queue_for("test/model")).info()
    finally:
        await wake_ups.aclose()
        await pool.aclose()
    assert woken is not None and woken["data"] == b"req-queued"
    assert info is not None and info.function == GENERATE_FUNCTION and info.args == (job("req-queued").payload(),)
    assert 0 < await redis.pttl(keys.arq_job("req-queued")) <= 86_400_000  # arq's expiry of a queued job
    assert await redis.zscore(keys.queue_for("test/model"), "req-queued") == info.enqueue_time.timestamp() * 1000


@pytest.mark.parametrize("trace", ["queued", "ran"])
async def test_a_request_id_already_queued_or_run_is_refused_and_wakes_no_worker(
    redis: aioredis.Redis, redis_url: str, trace: str
) -> None:
    """The duplicate is told False, so a repeated request never runs twice, and the queue is left as it was."""
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        if trace == "queued":
            assert await enqueue_generate(pool, job("req-twice")) is True
        else:
            await redis.set(keys.arq_result("req-twice"), b"result")
        before = await redis.zrange(keys.queue_for("test/model"), 0, -1, withscores=True)
        wake_ups = redis.pubsub()
        await wake_ups.subscribe(keys.queue_wake("test/model"))
        await wake_ups.get_message(timeout=1)
        assert await enqueue_generate(pool, job("req-twice")) is False
        assert await wake_ups.get_message(timeout=0.5) is None
        await wake_ups.aclose()
    finally:
        await pool.aclose()
    assert await redis.zrange(keys.queue_for("test/model"), 0, -1, withscores=True) == before


def test_a_job_enqueued_before_the_sampling_controls_existed_still_parses_and_samples_as_before() -> None:
    old_payload = {
        "request_id": "req-old",
        "model_id": "test/tiny-llama",
        "prompt": "hi",
        "max_tokens": 4,
        "temperature": 0.7,
        "top_p": 0.9,
        "user_wallet": None,
        "api_key_id": None,
        "price_per_token_far": str(PRICE_FAR),
        "enqueued_at": 1.0,
    }
    job = GenerateJob.model_validate(old_payload)
    assert (job.stop, job.seed, job.top_k, job.logprobs, job.logit_bias) == ([], None, 0, False, {})
    assert (job.repetition_penalty, job.frequency_penalty, job.presence_penalty) == (1.0, 0.0, 0.0)


def test_an_untraced_job_leaves_the_trace_field_out_so_an_older_worker_still_parses_it() -> None:
    payload = job("req-untraced").payload()
    assert "trace_parent" not in payload
    assert GenerateJob.model_validate(payload) == job("req-untraced")


def test_a_traced_job_carries_the_gateway_traceparent_to_the_worker() -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    traced = job("req-traced").model_copy(update={"trace_parent": traceparent})
    assert GenerateJob.model_validate(traced.payload()).trace_parent == traceparent
