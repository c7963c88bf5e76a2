"""Past one Redis (#32 item 5): two models through the whole system, each model's requests on its own Redis.

The session's e2e system (swarm, ledger, its home Redis and its own processes) is reused; beside it run a second
redis-server (the shard), and a gateway, a worker and accounting that all read FAR_MESH_MODEL_REDIS putting the
second tiny model on the shard. The worker serves both models, so it holds one connection per Redis. What must
hold: each request's queue, job and stream keys and usage record are on its model's Redis only; its owner, and
the budget it is settled against, are on the home Redis; a resume or a re-POST finds the stream by the owner
record, whatever model the body names; and the tokens each client received are the tokens billed in the ledger.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from devstack.harness.gateway import start_gateway, stop_gateway
from devstack.harness.sse import stream_events
from devstack.redis_server import RedisServer
from gateway.api_keys import KeyLimits, create_key
from protocol import keys
from protocol.budgets import to_nano
from tests.fixtures.system import (
    SystemUnderTest,
    assert_books_balance,
    collect,
    ledger_rows,
    token_events,
    wait_until_accounted,
)
from tests.fixtures.workers import RunningFleet, settings_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0


class Sharded:
    """The shard's URL and the sharded gateway's; model `home_model` stays on the system's Redis."""

    def __init__(self, shard_url: str, gateway_url: str, home_model: str, shard_model: str) -> None:
        self.shard_url = shard_url
        self.gateway_url = gateway_url
        self.home_model = home_model
        self.shard_model = shard_model


@pytest.fixture(scope="module")
def sharded(e2e_system: SystemUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sharded]:
    work_dir = tmp_path_factory.mktemp("shards")
    home_model, shard_model = (m.model_id for m in e2e_system.models[:2])
    shard = RedisServer(work_dir / "shard").start()
    system = e2e_system.system
    assert system.swarm is not None
    shard_map = {"FAR_MESH_MODEL_REDIS": json.dumps({shard_model: shard.url}), "FAR_MESH_TRACING": "off"}
    gateway = accounting = fleet = None
    try:
        with (work_dir / "accounting.log").open("wb") as log:
            accounting = subprocess.Popen(
                [sys.executable, "-m", "cli", "accounting"],
                env=system._env_for("accounting")
                | dict(system.plan.env)
                | shard_map
                | {"ACCOUNTING_METRICS_PORT": "0"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=REPO,
            )
        with ThreadPoolExecutor(max_workers=1) as pool:  # the gateway starts while the worker joins the swarm
            starting = pool.submit(
                start_gateway,
                system._env_for("web") | dict(system.plan.env) | shard_map | {"GATEWAY_METRICS_PORT": "0"},
                work_dir / "gateway.log",
            )
            try:
                fleet = RunningFleet(
                    settings_for(
                        e2e_system.redis_url,
                        system.swarm.initial_peers,
                        e2e_system.models,
                        far_mesh_model_redis=shard_map["FAR_MESH_MODEL_REDIS"],
                    )
                ).start()
            finally:
                gateway, gateway_url = starting.result()
        asyncio.run(_until_consumed(shard.url, accounting, work_dir / "accounting.log"))
        yield Sharded(shard.url, gateway_url, home_model, shard_model)
    finally:
        for process in (accounting, gateway):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)  # both stop while the worker does
        if fleet is not None:
            fleet.stop()
        if gateway is not None:
            stop_gateway(gateway)
        if accounting is not None:
            accounting.wait(20)
        shard.stop()


async def _until_consumed(shard_url: str, accounting: subprocess.Popen[bytes], log: Path) -> None:
    """Until accounting's consumer group exists on the shard's usage stream (it consumes every Redis)."""
    redis = aioredis.Redis.from_url(shard_url, decode_responses=True)
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        while True:
            if await redis.exists(keys.USAGE_STREAM):
                groups = {g["name"] for g in await redis.xinfo_groups(keys.USAGE_STREAM)}
                if keys.USAGE_CONSUMER_GROUP in groups:
                    return
            if accounting.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"accounting never consumed the shard; its log:\n{log.read_text()}")
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()


async def _budgeted_key(dsn: str) -> tuple[str, str]:
    connection = await asyncpg.connect(dsn)
    try:
        issued = await create_key(connection, "0x" + "5" * 40, "shards", KeyLimits(max_budget_far=Decimal(10)))
        return issued.secret_key, issued.key.key_id
    finally:
        await connection.close()


async def _present(redis: aioredis.Redis, request_id: str) -> list[str]:
    return [key for key in keys.job_traces(request_id) if await redis.exists(key)]


async def _usage_ids(redis: aioredis.Redis) -> set[str]:
    return {
        json.loads(value)["request_id"]
        for _, fields in await redis.xrange(keys.USAGE_STREAM)
        for value in fields.values()
        if value.startswith("{")
    }


async def test_two_models_on_two_redis_servers_are_served_routed_and_billed_each_on_its_own(
    e2e_system: SystemUnderTest, sharded: Sharded
) -> None:
    secret, key_id = await _budgeted_key(e2e_system.postgres_url)
    run = uuid.uuid4().hex[:8]
    bodies: dict[str, dict[str, Any]] = {
        model: {
            "prompt": "Two Redis servers",
            "max_tokens": 6,
            "temperature": 0,
            "model_id": model,
            "request_id": f"shards-{run}-{i}",
        }
        for i, model in enumerate((sharded.home_model, sharded.shard_model))
    }
    headers = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(base_url=sharded.gateway_url, headers=headers, timeout=60) as gateway:
        streams = dict(zip(bodies, await asyncio.gather(*(collect(gateway, b) for b in bodies.values())), strict=True))
        for events in streams.values():
            assert events[-1].get("status") == "completed", events[-1]
            assert len(token_events(events)) == 6

        # The shard's request read back by its id alone: the owner record (home) names its model, hence its Redis.
        home_id, shard_id = (b["request_id"] for b in bodies.values())
        replayed = [e async for e in _replay(gateway, shard_id)]
        assert token_events(replayed) == token_events(streams[sharded.shard_model])
        # Re-POSTed naming the other model: it attaches to the first submission's stream, never starts a second job.
        again = await collect(gateway, {**bodies[sharded.shard_model], "model_id": sharded.home_model})
        assert token_events(again) == token_events(streams[sharded.shard_model])

    home = aioredis.Redis.from_url(e2e_system.redis_url, decode_responses=True)
    shard = aioredis.Redis.from_url(sharded.shard_url, decode_responses=True)
    try:
        # Each request's queue, job and stream keys and its usage record live on its model's Redis only.
        assert await _present(home, home_id) and not await _present(shard, home_id)
        assert await _present(shard, shard_id) and not await _present(home, shard_id)
        assert not await home.exists(keys.queue_for(sharded.shard_model), keys.token_stream(shard_id))
        # Owners stay home, where admission and resumes look them up.
        assert await home.exists(keys.request_owner(home_id), keys.request_owner(shard_id)) == 2

        await asyncio.gather(wait_until_accounted(e2e_system.redis_url), wait_until_accounted(sharded.shard_url))
        home_usage, shard_usage = await _usage_ids(home), await _usage_ids(shard)
        assert home_id in home_usage and home_id not in shard_usage
        assert shard_id in shard_usage and shard_id not in home_usage

        # Delivered = billed, for both models; the budget on the home Redis settled exactly both costs.
        rows = await ledger_rows(e2e_system.postgres_url, [home_id, shard_id])
        costs = []
        for model, body in bodies.items():
            (session,) = rows[body["request_id"]]
            assert session.row["model_id"] == model
            assert_books_balance(session, len(token_events(streams[model])))
            costs.append(session.row["total_cost_far"])
        account = await home.hgetall(keys.budget_account(key_id))
        assert int(account["spent"]) == sum(map(to_nano, costs)) and int(account.get("held", 0)) == 0
        assert not await shard.keys(keys.BUDGET_PREFIX + "*")
    finally:
        await home.aclose()
        await shard.aclose()


async def _replay(gateway: httpx.AsyncClient, request_id: str) -> AsyncIterator[dict[str, Any]]:
    async for _, (_, event) in stream_events(gateway, "GET", f"/inference/{request_id}/stream"):
        yield event
