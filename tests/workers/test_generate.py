"""The generate job end to end: a real local swarm, a real Redis, the worker fleet running in this process."""

import asyncio
import time
from collections.abc import Callable
from decimal import ROUND_DOWN, Decimal
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from protocol import keys
from protocol.catalog import ModelSpec
from protocol.events import DoneEvent, ErrorEvent, TokenEvent
from protocol.money import FAR_QUANTUM, cost_of
from protocol.peer_measurements import read_measurements
from protocol.provider_preferences import ProviderPreferences
from protocol.swarm import SwarmSnapshot
from tests.fixtures.swarm import SWARM_WALLETS
from tests.fixtures.workers import (
    PRICE_FAR,
    RunningFleet,
    decode_locally,
    enqueue,
    make_job,
    reference_continuation,
    usage_records,
    wait_for_end,
    wait_for_tokens,
)
from workers.sampling import choose_next_token

pytestmark = pytest.mark.swarm

OTHER_PEER = "12D3KooWAbCdEfGhJkLmNpQrStUvWxYz123456789abcdefghijk"
"""A peer id no server of the swarm has."""


async def test_greedy_tokens_equal_the_local_reference_and_every_node_is_paid_for_blocks_times_tokens(
    two_server_fleet: RunningFleet, redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...]
) -> None:
    model = tiny_models[0]
    job = make_job(model, prompt="Café, naïve — the mesh streams", max_tokens=30)
    await enqueue(redis_url, job)
    events = await wait_for_end(redis, job.request_id)

    tokens = [e for e in events if isinstance(e, TokenEvent)]
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.status == "completed"
    assert [t.token_id for t in tokens] == reference_continuation(model, job.prompt, job.max_tokens)
    assert [t.index for t in tokens] == list(range(len(tokens)))
    # a random model may emit bytes that are not UTF-8 at all; only those may decode to "\ufffd"
    full_text = decode_locally(model, [t.token_id for t in tokens])
    streamed_text = "".join(t.token for t in tokens)
    assert full_text.startswith(streamed_text) and full_text[len(streamed_text) :].strip("\ufffd") == ""
    assert [t.cost_far for t in tokens] == [cost_of(i + 1, PRICE_FAR) for i in range(len(tokens))]
    assert done.tokens_generated == len(tokens) and done.total_cost_far == cost_of(len(tokens), PRICE_FAR)
    assert await redis.ttl(keys.token_stream(job.request_id)) > 0

    (usage,) = await usage_records(redis, job.request_id)
    steps_fed = done.prompt_tokens + len(tokens) - (1 if done.finish_reason == "length" else 0)
    assert sum(c.work_units for c in usage.contributions) == 4 * steps_fed  # 4 blocks x every token fed
    assert sorted((c.blocks_served, c.tokens_contributed) for c in usage.contributions) == [(2, steps_fed)] * 2
    for contribution in usage.contributions:
        share = (usage.total_cost_far * contribution.work_units / (4 * steps_fed)).quantize(FAR_QUANTUM, ROUND_DOWN)
        assert contribution.payment_far == share
    assert sum(c.payment_far for c in usage.contributions) + usage.platform_remainder_far == usage.total_cost_far
    assert usage.status == "completed" and usage.failovers == 0 and usage.time_to_first_token_ms is not None


async def test_a_cancel_flag_stops_the_stream_within_one_step_and_bills_only_delivered_tokens(
    two_server_fleet: RunningFleet, redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...]
) -> None:
    job = make_job(tiny_models[0], max_tokens=200)
    await enqueue(redis_url, job)
    await wait_for_tokens(redis, job.request_id, 3)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.cancel_flag(job.request_id), 1)
        pipe.xlen(keys.token_stream(job.request_id))
        _, delivered = await pipe.execute()

    events = await wait_for_end(redis, job.request_id)
    done = events[-1]
    assert isinstance(done, DoneEvent) and (done.status, done.finish_reason) == ("cancelled", "cancelled")
    assert len(events) - 1 == delivered == done.tokens_generated
    (usage,) = await usage_records(redis, job.request_id)
    assert usage.status == "cancelled" and usage.total_cost_far == cost_of(delivered, PRICE_FAR)


async def test_a_job_cancelled_while_queued_never_generates(
    two_server_fleet: RunningFleet, redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...]
) -> None:
    job = make_job(tiny_models[0])
    await redis.set(keys.cancel_flag(job.request_id), 1)
    await enqueue(redis_url, job)
    (done,) = await wait_for_end(redis, job.request_id)
    assert isinstance(done, DoneEvent) and done.status == "cancelled" and done.tokens_generated == 0
    (usage,) = await usage_records(redis, job.request_id)
    assert usage.total_cost_far == Decimal(0) and usage.contributions == ()


async def test_a_model_no_server_holds_ends_with_a_no_route_error_naming_the_blocks_within_the_bound(
    two_server_fleet: RunningFleet, redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...]
) -> None:
    job = make_job(tiny_models[1])
    started = time.monotonic()
    await enqueue(redis_url, job)
    (error,) = await wait_for_end(redis, job.request_id)
    bound = two_server_fleet.settings.worker_no_route_timeout_s
    assert time.monotonic() - started < bound + 15
    assert isinstance(error, ErrorEvent) and error.error.code == "no_route"
    assert "blocks 0..5" in error.error.message and tiny_models[1].model_id in error.error.message
    (usage,) = await usage_records(redis, job.request_id)
    assert usage.status == "failed" and usage.tokens_generated == 0


async def test_many_concurrent_jobs_in_one_worker_each_stream_their_own_complete_sequence(
    two_server_fleet: RunningFleet, redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...]
) -> None:
    model = tiny_models[0]
    prompts = ["A request walks", "Numbers: 0 1 2", "Привет, мир", "日本語のテキスト", "def generate", "The mesh"]
    jobs = [make_job(model, prompt=p, max_tokens=16) for p in prompts]
    for job in jobs:
        await enqueue(redis_url, job)
    for job in jobs:
        events = await wait_for_end(redis, job.request_id)
        assert [e.token_id for e in events if isinstance(e, TokenEvent)] == reference_continuation(
            model, job.prompt, job.max_tokens
        )
    assert await redis.xlen(keys.USAGE_STREAM) == len(jobs)


async def test_the_worker_publishes_a_snapshot_of_each_served_models_swarm(
    two_server_fleet: RunningFleet, redis: aioredis.Redis, tiny_models: tuple[ModelSpec, ...], two_server_swarm: Any
) -> None:
    snapshots = await _wait_for_snapshots(redis, [m.model_id for m in tiny_models])
    served = snapshots[tiny_models[0].model_id]
    assert served.healthy and served.num_blocks == 4
    assert {(s.peer_id, s.start_block, s.end_block) for s in served.servers} == {
        (server.peer_id, server.plan.start_block, server.plan.end_block) for server in two_server_swarm.servers
    }
    unserved = snapshots[tiny_models[1].model_id]
    assert not unserved.healthy and unserved.servers == ()


async def test_a_running_worker_whose_clients_hold_the_dht_reports_itself_healthy(
    two_server_fleet: RunningFleet,
) -> None:
    port = two_server_fleet.settings.worker_metrics_port
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        health = await client.get("/healthz")
    assert health.status_code == 200 and health.json()["healthy"] is True


async def _wait_for_snapshots(redis: aioredis.Redis, model_ids: list[str]) -> dict[str, SwarmSnapshot]:
    deadline = time.monotonic() + 30
    while True:
        raw: dict[bytes, bytes] = await redis.hgetall(keys.SWARM_SNAPSHOTS)  # type: ignore[misc]
        found = {k.decode(): SwarmSnapshot.model_validate_json(v) for k, v in raw.items()}
        if set(model_ids) <= set(found) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


async def test_a_vanishing_temperature_generates_the_greedy_sequence_and_bills_it(
    two_server_fleet: RunningFleet, redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...]
) -> None:
    model = tiny_models[0]
    job = make_job(model, temperature=1e-45, max_tokens=8)
    await enqueue(redis_url, job)
    events = await wait_for_end(redis, job.request_id, timeout_s=30)
    assert isinstance(events[-1], DoneEvent) and events[-1].status == "completed"
    tokens = [e.token_id for e in events if isinstance(e, TokenEvent)]
    assert tokens == reference_continuation(model, job.prompt, job.max_tokens)
    (usage,) = await usage_records(redis, job.request_id)
    assert usage.tokens_generated == len(tokens) and usage.failovers == 0


def nan_logits_at(poisoned: Callable[[int], bool]) -> Callable[..., int]:
    """`choose_next_token` handed NaN logits at the steps (counted from 1) `poisoned` names, as a bad server gives."""
    steps = 0

    def choose(logits: Any, **kwargs: Any) -> int:
        nonlocal steps
        steps += 1
        return choose_next_token(logits * float("nan") if poisoned(steps) else logits, **kwargs)

    return choose


async def test_nan_logits_take_one_fresh_route_then_end_the_request_billed_for_what_was_delivered(
    two_server_fleet: RunningFleet,
    redis: aioredis.Redis,
    redis_url: str,
    tiny_models: tuple[ModelSpec, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NaN logits are the servers' numbers (every request setting is finite), so another route may not have them:
    one is tried; a model that overflows on it too ends the request then, not at the no-route timeout."""
    monkeypatch.setattr("workers.sampling.choose_next_token", nan_logits_at(lambda step: step >= 4))
    job = make_job(tiny_models[0], max_tokens=20)
    started = time.monotonic()
    await enqueue(redis_url, job)
    events = await wait_for_end(redis, job.request_id, timeout_s=30)
    assert time.monotonic() - started < 10
    error = events[-1]
    assert isinstance(error, ErrorEvent) and error.error.code == "sampling_error"
    assert "2 routes" in error.error.message
    assert error.tokens_generated == 3 == len(events) - 1
    (usage,) = await usage_records(redis, job.request_id)
    assert (usage.status, usage.tokens_generated, usage.failovers) == ("failed", 3, 1)
    assert usage.total_cost_far == cost_of(3, PRICE_FAR)


async def test_nan_logits_once_are_sidestepped_by_a_fresh_route_and_the_sequence_is_unchanged(
    two_server_fleet: RunningFleet,
    redis: aioredis.Redis,
    redis_url: str,
    tiny_models: tuple[ModelSpec, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("workers.sampling.choose_next_token", nan_logits_at(lambda step: step == 4))
    model, job = tiny_models[0], make_job(tiny_models[0], max_tokens=8)
    await enqueue(redis_url, job)
    events = await wait_for_end(redis, job.request_id, timeout_s=30)
    assert isinstance(events[-1], DoneEvent) and events[-1].status == "completed"
    tokens = [e.token_id for e in events if isinstance(e, TokenEvent)]
    assert tokens == reference_continuation(model, job.prompt, job.max_tokens)
    (usage,) = await usage_records(redis, job.request_id)
    assert (usage.tokens_generated, usage.failovers) == (8, 1)


async def test_provider_preferences_exclude_the_ignored_peer_and_fail_fast_naming_blocks_no_allowed_server_holds(
    two_server_fleet: RunningFleet,
    redis: aioredis.Redis,
    redis_url: str,
    tiny_models: tuple[ModelSpec, ...],
    two_server_swarm: Any,
) -> None:
    model = tiny_models[0]
    first, second = two_server_swarm.servers  # blocks 0..1 and 2..3
    ignoring_first = make_job(model, provider=ProviderPreferences(ignore=[first.peer_id]))
    only_first = make_job(model, provider=ProviderPreferences(only=[SWARM_WALLETS[0]], sort="latency"))
    allowed = ProviderPreferences(only=list(SWARM_WALLETS), ignore=[OTHER_PEER], sort="throughput")
    routed = make_job(model, max_tokens=6, provider=allowed)
    for job in (ignoring_first, only_first, routed):
        await enqueue(redis_url, job)
    bound = two_server_fleet.settings.worker_no_route_timeout_s
    for job, blocks in ((ignoring_first, "blocks 0..1"), (only_first, "blocks 2..3")):
        (error,) = await wait_for_end(redis, job.request_id)
        assert isinstance(error, ErrorEvent) and error.error.code == "route_unsatisfiable", error
        assert blocks in error.error.message
        (usage,) = await usage_records(redis, job.request_id)
        assert usage.status == "failed" and usage.tokens_generated == 0
        assert (usage.finished_at - usage.started_at).total_seconds() < bound / 2  # never waiting out the timeout
    events = await wait_for_end(redis, routed.request_id)
    assert [e.token_id for e in events if isinstance(e, TokenEvent)] == reference_continuation(model, routed.prompt, 6)
    (usage,) = await usage_records(redis, routed.request_id)
    assert {c.node_id for c in usage.contributions} == {first.peer_id, second.peer_id}
    assert usage.route_policy is not None and "prefs:sort-throughput,only:2,ignore:1" in usage.route_policy
    deadline = time.monotonic() + 10  # the fleet measures every server each snapshot interval (2 s here)
    while len(measured := await read_measurements(redis, model.model_id)) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert set(measured) == {first.peer_id, second.peer_id}
    assert all(m.reachable and m.rtt_s is not None and m.throughput for m in measured.values())
