"""Steps the verifier's swarm tests share: one request through the worker, its usage record stored as accounting
stores it, and waiting for what the verifier does about it."""

import asyncio
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from accounting.batch_writer import write_batch
from protocol.catalog import ModelSpec
from protocol.events import TokenEvent
from tests.fixtures.workers import enqueue, make_job, usage_records, wait_for_end

PROMPT = "The mesh streams tokens"
TOKENS = 6


async def generate(redis_url: str, redis: aioredis.Redis, model: ModelSpec, dsn: str) -> tuple[str, list[int]]:
    """One request through the worker; its usage record stored by accounting's writer. Returns its id, tokens."""
    job = make_job(model, PROMPT, max_tokens=TOKENS)
    await enqueue(redis_url, job)
    events = await wait_for_end(redis, job.request_id)
    (record,) = await usage_records(redis, job.request_id)
    connection = await asyncpg.connect(dsn)
    try:
        await write_batch(connection, [record])
    finally:
        await connection.close()
    return job.request_id, [e.token_id for e in events if isinstance(e, TokenEvent)]


async def until(condition: Callable[[], Any], what: str, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := await condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)
    return value
