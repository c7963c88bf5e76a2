"""Faults injected into the running system while clients stream, each checked from the outside.

After every fault: the client got every token exactly once (or a clear error event), the ledger holds exactly
one session per request with the right totals, and accounting has nothing left pending. Each test puts back
what it broke, so the session's one system serves the next test.
"""

import asyncio
import os
import signal
import sys
import time
from contextlib import aclosing
from typing import Any

import pytest

from devstack.supervisor import Child
from mesh.local_swarm import group_members
from tests.e2e.helpers import (
    LONG,
    PROMPT,
    assert_complete_once,
    assert_exactly_once_in_the_ledger,
    greedy,
    kill_group,
    killed_then_restarted,
    new_request_id,
    worker_running,
)
from tests.fixtures.system import (
    SystemUnderTest,
    collect,
    stream_events,
    the_ledger_session,
    token_events,
    wait_for_postgres,
    wait_until_accounted,
)
from tests.fixtures.workers import reference_continuation

pytestmark = [pytest.mark.e2e, pytest.mark.swarm]


async def test_a_worker_killed_mid_stream_is_taken_over_and_the_client_gets_every_token_once(
    e2e_system: SystemUnderTest,
) -> None:
    request_id = new_request_id()
    events: list[dict[str, Any]] = []
    victim: Child | None = None
    async with e2e_system.client() as client:
        async for _, (_, event) in stream_events(client, "POST", "/inference/generate", json=greedy(request_id)):
            events.append(event)
            if len(events) == 5:
                victim = await worker_running(e2e_system, request_id)
                kill_group(victim)
    assert victim is not None
    async with killed_then_restarted(e2e_system, victim.name):
        assert_complete_once(events, reference_continuation(e2e_system.models[0], PROMPT, LONG))
        await assert_exactly_once_in_the_ledger(e2e_system, {request_id: events})


# A server killed mid-session: Petals reroutes through the 2:4 replica (or the worker opens a fresh route).
async def test_a_swarm_server_killed_mid_stream_fails_over_to_its_replica(e2e_system: SystemUnderTest) -> None:
    swarm = e2e_system.system.swarm
    assert swarm is not None
    model = e2e_system.models[0]
    replicas = [s for s in swarm.servers if s.plan.model == model and s.plan.start_block == 2 and s.exit_status is None]
    assert len(replicas) >= 2, "the system runs the default model's last span twice"
    ids = [new_request_id(), new_request_id()]  # two sessions, so the victim is on a route more often than not
    victim = replicas[0]

    async def follow(request_id: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        async for _, (_, event) in stream_events(client, "POST", "/inference/generate", json=greedy(request_id)):
            events.append(event)
            if len(events) == 5 and victim.exit_status is None:
                await asyncio.to_thread(victim.kill)
        return events

    try:
        async with e2e_system.client() as client:
            streams = await asyncio.gather(*(follow(r) for r in ids))
        expected = reference_continuation(model, PROMPT, LONG)
        for events in streams:
            assert_complete_once(events, expected)
        await assert_exactly_once_in_the_ledger(e2e_system, dict(zip(ids, streams, strict=True)))
        for request_id in ids:
            session = await the_ledger_session(e2e_system.postgres_url, request_id)
            served = {c["node_id"] for c in session.contributions}
            if victim.peer_id in served:  # it served the first steps, then a replica took the rest
                assert session.row["failovers"] >= 1 or len(served) == 3
    finally:
        await asyncio.to_thread(swarm.start_server, victim.plan)


SERVER_RECOVERY_BOUND_S = 60.0
"""A crashed server of `make run`'s swarm serves again, with the same peer id, within this (about 10 s here)."""


async def test_a_swarm_server_that_crashes_is_restarted_with_its_peer_id_and_serves_its_blocks_again(
    e2e_system: SystemUnderTest,
) -> None:
    swarm = e2e_system.system.swarm
    assert swarm is not None
    model = e2e_system.models[0]
    (victim,) = [s for s in swarm.servers if s.plan.model == model and s.plan.start_block == 0]  # no replica
    peer_id, restarts, crashed_group = victim.peer_id, victim.restarts, victim.pid

    crashed_at = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)  # its main process, as a crash would: the swarm cleans up the rest
    while victim.restarts == restarts:
        assert time.monotonic() - crashed_at < 10, "the swarm did not notice the crash"
        await asyncio.sleep(0.1)
    await asyncio.to_thread(swarm.ensure_serving, SERVER_RECOVERY_BOUND_S)
    await asyncio.to_thread(e2e_system.wait_until_ready, SERVER_RECOVERY_BOUND_S)  # the gateway's view too
    assert time.monotonic() - crashed_at < SERVER_RECOVERY_BOUND_S
    assert group_members(crashed_group) == []  # nothing of the crashed server outlives it (its p2pd daemon)

    request_id = new_request_id()
    async with e2e_system.client() as client:
        events = await collect(client, greedy(request_id, 8))
    assert_complete_once(events, reference_continuation(model, PROMPT, 8))
    await wait_until_accounted(e2e_system.redis_url)
    session = await the_ledger_session(e2e_system.postgres_url, request_id)
    assert peer_id in {c["node_id"] for c in session.contributions}  # the same identity, paid for its blocks


async def test_the_accounting_consumer_killed_between_commit_and_ack_leaves_the_ledger_exact(
    e2e_system: SystemUnderTest,
) -> None:
    kill_group(e2e_system.system.process("accounting"))
    # The worst moment: its batch is committed but not acknowledged, so it is delivered again after the restart.
    dying = [sys.executable, "-m", "tests.accounting.consumer_dying_after_commit"]
    crashing = e2e_system.system.start_process("accounting", argv=dying)
    async with killed_then_restarted(e2e_system, "accounting"):
        ids = [new_request_id() for _ in range(3)]
        async with e2e_system.client() as client:
            streams = await asyncio.gather(*(collect(client, greedy(r, 8)) for r in ids))
        deadline = time.monotonic() + 30
        while crashing.process.poll() is None:
            assert time.monotonic() < deadline, "the consumer never committed a batch"
            await asyncio.sleep(0.1)
        assert crashing.process.returncode == -signal.SIGKILL
    await assert_exactly_once_in_the_ledger(e2e_system, dict(zip(ids, streams, strict=True)))


async def test_postgresql_restarted_under_load_loses_no_usage_record(e2e_system: SystemUnderTest) -> None:
    ids = [new_request_id() for _ in range(4)]
    started = asyncio.Event()

    async def follow(request_id: str) -> list[dict[str, Any]]:
        events = []
        async for _, (_, event) in stream_events(client, "POST", "/inference/generate", json=greedy(request_id, 40)):
            events.append(event)
            started.set()
        return events

    async with e2e_system.client() as client:
        running = asyncio.gather(*(follow(r) for r in ids))
        await started.wait()
        await asyncio.to_thread(e2e_system.postgres.stop)
        try:
            streams = await running  # generation needs no database: every stream completes meanwhile
            await asyncio.sleep(1)  # accounting meets the outage with records to write
        finally:
            await asyncio.to_thread(e2e_system.postgres.restart)
    await wait_for_postgres(e2e_system.postgres_url)
    expected = reference_continuation(e2e_system.models[0], PROMPT, 40)
    for events in streams:
        assert_complete_once(events, expected)
    await assert_exactly_once_in_the_ledger(e2e_system, dict(zip(ids, streams, strict=True)))
    assert e2e_system.dead_processes() == []


async def test_a_client_leaving_mid_stream_cancels_the_job_and_is_billed_for_the_tokens_generated(
    e2e_system: SystemUnderTest,
) -> None:
    request_id = new_request_id()
    async with e2e_system.client() as client:
        received = 0
        async with aclosing(stream_events(client, "POST", "/inference/generate", json=greedy(request_id, 200))) as s:
            async for _ in s:
                received += 1
                if received == 5:
                    break  # aclosing closes the connection now, not when the generator is collected
        await asyncio.sleep(2)  # past the reconnect grace (0.5 s): reconnecting sooner would keep the job alive

        deadline = time.monotonic() + 30
        while True:  # the stream as a reconnecting client replays it, once it has ended
            replay = [e async for _, (_, e) in stream_events(client, "GET", f"/inference/{request_id}/stream")]
            if replay and "token" not in replay[-1]:
                break
            assert time.monotonic() < deadline
    done = replay[-1]
    assert done["status"] == "cancelled" and done["finish_reason"] == "cancelled"
    assert 5 <= done["tokens_generated"] == len(token_events(replay)) < 200
    await assert_exactly_once_in_the_ledger(e2e_system, {request_id: replay})
    session = await the_ledger_session(e2e_system.postgres_url, request_id)
    assert session.row["status"] == "cancelled"
