"""A verifier (re)started while Redis or PostgreSQL restarts waits for them instead of exiting (found by the chaos
soak, issue #29: a verifier restarted after its own fault was still starting when PostgreSQL restarted, and exited
with status 1 from connecting its pool)."""

import asyncio
import json
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
import torch
from redis.exceptions import ResponseError

from devstack.redis_server import RedisServer
from mesh.ports import free_port
from protocol import keys
from protocol.catalog import ModelSpec
from tests.fixtures.ledger import wait_until
from verifier.service import Verifier, serve
from verifier.settings import VerifierSettings

NO_POSTGRES = "postgresql://postgres@127.0.0.1:1/nothing"


async def test_a_verifier_started_while_redis_and_postgresql_are_down_waits_and_joins_its_group_once_redis_answers(
    tmp_path: Path, tiny_models: tuple[ModelSpec, ...]
) -> None:
    server = RedisServer(tmp_path / "redis", port=free_port())
    settings = VerifierSettings.from_env(
        redis_url=server.url,
        postgres_url=NO_POSTGRES,
        far_mesh_models=json.dumps([tiny_models[0].model_dump(mode="json")]),
        default_model_id=tiny_models[0].model_id,
        verifier_metrics_port=0,
        verifier_threads=torch.get_num_threads(),  # serve() sets it for the whole process
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    redis = aioredis.Redis.from_url(server.url)
    try:
        await asyncio.sleep(1.0)  # several tries against nothing listening
        assert not task.done(), "the verifier exited while Redis and PostgreSQL were down"
        await asyncio.to_thread(server.start)
        await wait_until(lambda: _group_exists(redis), what="the verifier joined its group once Redis answered")
        await asyncio.sleep(0.5)  # PostgreSQL is still down: the loop waits it out
        assert not task.done(), "the verifier exited while PostgreSQL was down"
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await redis.aclose()
        server.stop()


async def _group_exists(redis: aioredis.Redis) -> bool:
    try:
        groups = await redis.xinfo_groups(keys.VERIFICATION_STREAM)
    except ResponseError:  # no stream yet
        return False
    return any(g["name"] == keys.VERIFICATION_CONSUMER_GROUP.encode() for g in groups)


async def test_a_ledger_connection_left_mid_operation_is_waited_out_not_fatal(
    redis_url: str, migrated_postgres_dsn: str, tiny_models: tuple[ModelSpec, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart leaves a pooled connection mid-operation and its next use raises InternalClientError ("another
    operation is in progress"), which the loop did not count as an outage: the accounting consumer died of it
    (the chaos soak, seed 33), and the verifier would have too."""
    refreshed = asyncio.Event()
    calls = 0
    real_refresh = Verifier.refresh_from_ledger

    async def left_mid_operation_once(self: Verifier) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise asyncpg.exceptions.InternalClientError("cannot switch to state 15; another operation is in progress")
        await real_refresh(self)
        refreshed.set()

    monkeypatch.setattr(Verifier, "refresh_from_ledger", left_mid_operation_once)
    settings = VerifierSettings.from_env(
        redis_url=redis_url,
        postgres_url=migrated_postgres_dsn,
        far_mesh_models=json.dumps([tiny_models[0].model_dump(mode="json")]),
        default_model_id=tiny_models[0].model_id,
        verifier_metrics_port=0,
        verifier_threads=torch.get_num_threads(),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    try:
        await asyncio.wait_for(refreshed.wait(), 10)
        assert not task.done(), "the verifier exited on InternalClientError"
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
