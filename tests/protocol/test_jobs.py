"""Enqueueing a generate job on a real Redis: once it is queued, the caller is told so, whatever else fails."""

from typing import Any

import pytest
import redis.asyncio as aioredis
from arq import create_pool
from arq.connections import RedisSettings
from redis.exceptions import ConnectionError as RedisConnectionError

from protocol import keys
from protocol.jobs import GenerateJob, enqueue_generate
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


async def test_a_failed_wake_up_after_the_enqueue_still_reports_the_job_queued(
    redis: aioredis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answering 503 for a job that will run and bill would make the client retry into a second bill."""
    pool = await create_pool(RedisSettings.from_dsn(redis_url))

    async def publish_fails(*args: Any, **kwargs: Any) -> int:
        raise RedisConnectionError("Connection reset by peer")

    monkeypatch.setattr(pool, "publish", publish_fails)
    try:
        assert await enqueue_generate(pool, job("req-queued")) is True
        assert await enqueue_generate(pool, job("req-queued")) is False  # the duplicate, refused as before
    finally:
        await pool.aclose()
    assert await redis.zscore(keys.queue_for("test/model"), "req-queued") is not None


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
