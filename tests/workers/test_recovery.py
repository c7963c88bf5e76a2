"""Crashes mid-stream: a server SIGKILLed (with a replica) and a worker process SIGKILLed (with another running).

Either way the client-visible stream must hold the complete greedy sequence exactly once, end once, and the
request must be billed by exactly one usage record, which credits every step that made a billed token once: the
dead run's steps too, which its successor reads from beside the stream (#29).
"""

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis

from mesh.local_swarm import LocalSwarm, ServerPlan
from mesh.session import SwarmSession, served_spans
from protocol import keys
from protocol.catalog import ModelSpec
from protocol.events import DoneEvent, StreamEvent, TokenEvent
from tests.fixtures.workers import (
    RunningFleet,
    WorkerProcess,
    enqueue,
    lease_holder,
    make_job,
    reference_continuation,
    usage_records,
    wait_for_end,
    wait_for_tokens,
    worker_environment,
)

pytestmark = pytest.mark.swarm

PROMPT = "A request walks through the gateway"
MAX_TOKENS = 150
STEP_TIMEOUT_S = 5.0


def assert_complete_once(events: list[StreamEvent], expected: list[int]) -> None:
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert [t.index for t in tokens] == list(range(len(tokens)))
    assert [t.token_id for t in tokens] == expected
    assert isinstance(events[-1], DoneEvent) and events[-1].status == "completed"
    assert sum(not isinstance(e, TokenEvent) for e in events) == 1


# hivemind's p2p client drops its unix-socket stream to the killed peer without closing it; the GC reports it.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <function StreamWriter.__del__:pytest.PytestUnraisableExceptionWarning"
)
async def test_a_server_killed_mid_stream_fails_over_to_its_replica_without_repeating_or_losing_a_token(
    local_swarm_factory: Callable[..., LocalSwarm],
    fleet_factory: Callable[..., RunningFleet],
    tiny_models: tuple[ModelSpec, ...],
    redis: aioredis.Redis,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = tiny_models[0]
    swarm = local_swarm_factory([ServerPlan(model, 0, 2), ServerPlan(model, 2, 4), ServerPlan(model, 2, 4)])
    sessions: list[Any] = []

    class RecordedSession(SwarmSession):  # a spy: tells the test which replica the route goes through
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            sessions.append(self._session)

    monkeypatch.setattr("workers.served_model.SwarmSession", RecordedSession)
    # A step cut off by the kill waits out the request timeout; the tiny model's steps take milliseconds.
    fleet_factory(swarm.initial_peers, [model], worker_petals_request_timeout_s=STEP_TIMEOUT_S)
    job = make_job(model, prompt=PROMPT, max_tokens=MAX_TOKENS)
    await enqueue(redis_url, job)
    await wait_for_tokens(redis, job.request_id, 3)

    (in_route,) = [s for s in served_spans(sessions[-1]) if s.start_block == 2]
    (victim,) = [s for s in swarm.servers if s.peer_id == in_route.peer_id]
    victim.kill()

    events = await wait_for_end(redis, job.request_id)
    assert_complete_once(events, reference_continuation(model, PROMPT, MAX_TOKENS))
    (usage,) = await usage_records(redis, job.request_id)
    assert usage.failovers >= 1
    (survivor,) = [s for s in swarm.servers if s.plan.start_block == 2 and s is not victim]
    assert {victim.peer_id, survivor.peer_id} <= {c.node_id for c in usage.contributions}


async def test_workers_killed_mid_stream_are_replaced_within_seconds_and_every_run_that_served_a_billed_token_is_paid(
    two_server_swarm: LocalSwarm,
    worker_process_factory: Callable[[dict[str, str]], WorkerProcess],
    tiny_models: tuple[ModelSpec, ...],
    redis: aioredis.Redis,
    redis_url: str,
) -> None:
    """Two requests mid-stream when their workers die (one worker or two; a third is left to take over): one
    generates on in its successor, the other is cancelled before the takeover, so its successor ends it at once
    with no step of its own (the chaos soak's finding, #29). Each is billed by one usage record, which credits
    every step that made a billed token once: the dead run's, read from beside the stream, and the successor's."""
    model = tiny_models[0]
    env = worker_environment(redis_url, two_server_swarm.initial_peers, [model])
    workers = [worker_process_factory(env) for _ in range(3)]
    for worker in workers:
        worker.wait_until_started()
    generating, cancelled = (make_job(model, prompt=PROMPT, max_tokens=MAX_TOKENS) for _ in range(2))
    for job in (generating, cancelled):
        await enqueue(redis_url, job)
    for job in (generating, cancelled):
        await wait_for_tokens(redis, job.request_id, 3)
    holders = [await lease_holder(redis, job.request_id, workers) for job in (generating, cancelled)]
    for victim in {id(holder): holder for holder in holders}.values():
        victim.kill()
    await redis.set(keys.cancel_flag(cancelled.request_id), "cancelled by client")  # well before its 2 s lease lapses
    killed_at = time.monotonic()
    delivered = {job.request_id: await redis.xlen(keys.token_stream(job.request_id)) for job in (generating, cancelled)}
    await wait_for_tokens(redis, generating.request_id, delivered[generating.request_id] + 1, timeout_s=30)
    assert time.monotonic() - killed_at < 10

    events = await wait_for_end(redis, generating.request_id)
    assert_complete_once(events, reference_continuation(model, PROMPT, MAX_TOKENS))
    (usage,) = await usage_records(redis, generating.request_id)
    # Each run's steps once: the dead run fed the prompt and its tokens but the last; the successor re-prefilled
    # the prompt and those tokens (real work, paid as a failover's re-prefill is) and fed on from there.
    assert isinstance(events[-1], DoneEvent) and usage.failovers == 0
    dead_fed = usage.prompt_tokens + delivered[generating.request_id] - 1
    successor_fed = usage.prompt_tokens + usage.tokens_generated - (events[-1].finish_reason == "length")
    fed = dead_fed + successor_fed
    assert sorted((c.blocks_served, c.work_units) for c in usage.contributions) == [(2, 2 * fed)] * 2

    events = await wait_for_end(redis, cancelled.request_id)
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.status == "cancelled"
    assert done.tokens_generated == delivered[cancelled.request_id] == len(events) - 1
    (usage,) = await usage_records(redis, cancelled.request_id)
    assert usage.tokens_generated == done.tokens_generated and usage.total_cost_far > 0
    fed = usage.prompt_tokens + usage.tokens_generated - 1  # the prefill fed the prompt, each later step a token
    by_node = sorted((c.node_id, c.blocks_served, c.tokens_contributed, c.work_units) for c in usage.contributions)
    assert by_node == sorted((s.peer_id, 2, fed, 2 * fed) for s in two_server_swarm.servers)
    paid = sum(c.payment_far for c in usage.contributions)
    assert paid + usage.platform_fee_far + usage.platform_remainder_far == usage.total_cost_far
    assert usage.platform_remainder_far < Decimal("1e-17")  # before the fix: the whole cost, no node credited
    assert not await redis.exists(keys.served_steps(cancelled.request_id))
    assert await redis.xlen(keys.USAGE_STREAM) == 2  # one usage record each, nothing more
