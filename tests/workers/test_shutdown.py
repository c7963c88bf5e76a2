"""SIGTERM, as Kubernetes sends it on a rollout: the worker hands its running job back and exits cleanly,
another worker finishes the request, and the client still sees every token exactly once, billed once."""

import asyncio
import signal
import subprocess
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from mesh.local_swarm import LocalSwarm
from protocol.catalog import ModelSpec
from protocol.events import DoneEvent, TokenEvent
from tests.fixtures.workers import (
    WorkerProcess,
    job_mid_stream_on_two_workers,
    reference_continuation,
    usage_records,
    wait_for_end,
)

pytestmark = pytest.mark.swarm

PROMPT = "A rollout replaces every worker"
MAX_TOKENS = 120


async def test_sigterm_mid_stream_hands_the_job_to_another_worker_and_nothing_is_lost_or_billed_twice(
    two_server_swarm: LocalSwarm,
    worker_process_factory: Callable[[dict[str, str]], WorkerProcess],
    tiny_models: tuple[ModelSpec, ...],
    redis: aioredis.Redis,
    redis_url: str,
) -> None:
    model = tiny_models[0]
    job, _, draining = await job_mid_stream_on_two_workers(
        two_server_swarm, worker_process_factory, model, redis, redis_url, prompt=PROMPT, max_tokens=MAX_TOKENS
    )
    draining.process.send_signal(signal.SIGTERM)

    try:
        exit_status = await asyncio.to_thread(draining.process.wait, 30)
    except subprocess.TimeoutExpired:
        exit_status = None
    assert exit_status == 0, draining.log_path.read_text(errors="replace")[-3000:]
    events = await wait_for_end(redis, job.request_id)
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert [t.index for t in tokens] == list(range(MAX_TOKENS))
    assert [t.token_id for t in tokens] == reference_continuation(model, PROMPT, MAX_TOKENS)
    assert isinstance(events[-1], DoneEvent) and events[-1].tokens_generated == MAX_TOKENS
    assert len(await usage_records(redis, job.request_id)) == 1
