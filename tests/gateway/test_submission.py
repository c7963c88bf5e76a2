"""Who may start, re-attach to or repeat a request id, over real HTTP with a synthetic worker.

A request id must never make the swarm work twice for one bill, whatever Redis forgot, and every connection a key
opens counts against its limits.
"""

import asyncio
import time

import asyncpg
import httpx
import redis.asyncio as aioredis
from arq.constants import result_key_prefix

from accounting.batch_writer import write_batch
from gateway.api_keys import KeyLimits
from protocol import keys
from protocol.ownership import RequestOwner
from protocol.swarm import SwarmSnapshot
from tests.fixtures.gateway import MODEL_ID, IssueKey, SseReader, SyntheticWorker, auth, read_events
from tests.fixtures.ledger import unique_id, usage_record


async def bill_in_the_ledger(dsn: str, request_id: str, tokens: int) -> None:
    """What the accounting consumer does with the request's usage record."""
    connection = await asyncpg.connect(dsn)
    try:
        await write_batch(connection, [usage_record(request_id, {}, tokens_generated=tokens)])
    finally:
        await connection.close()


async def test_a_request_id_the_ledger_billed_never_runs_again_after_redis_forgot_it(
    gateway_url: str,
    healthy_swarm: SwarmSnapshot,
    synthetic_worker: SyntheticWorker,
    issue_key: IssueKey,
    redis: aioredis.Redis,
    migrated_postgres_dsn: str,
) -> None:
    key, _ = await issue_key()
    request_id = unique_id("reuse")
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as client:
        body = {"prompt": "once", "max_tokens": 1, "request_id": request_id}
        async with client.stream("POST", "/inference/generate", json=body, headers=auth(key)) as response:
            assert (await read_events(response))[-1][1]["tokens_generated"] == 1
        await bill_in_the_ledger(migrated_postgres_dsn, request_id, 1)
        # its keys expire (or Redis loses them)
        forgotten = [keys.request_owner(request_id), keys.token_stream(request_id), result_key_prefix + request_id]
        await redis.delete(*forgotten)

        again = await client.post("/inference/generate", json={**body, "max_tokens": 40}, headers=auth(key))
    assert again.status_code == 409
    error = again.json()["error"]
    assert error["code"] == "request_id_used" and error["field"] == "request_id"
    assert [job.request_id for job in synthetic_worker.jobs] == [request_id]  # nothing ran a second time


async def test_a_request_redis_cut_between_its_owner_key_and_its_job_is_started_by_its_retry(
    gateway_url: str,
    healthy_swarm: SwarmSnapshot,
    synthetic_worker: SyntheticWorker,
    issue_key: IssueKey,
    redis: aioredis.Redis,
) -> None:
    # What a Redis outage between the two leaves (the chaos soak's finding): the owner key, which the failed
    # submission could not undo without Redis, and no job, no stream. Its retry used to follow it for good.
    key, key_id = await issue_key()
    request_id = unique_id("cut")
    await redis.set(keys.request_owner(request_id), RequestOwner(key_id, MODEL_ID).encode())
    body = {"prompt": "again", "max_tokens": 3, "request_id": request_id}
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as client:
        async with client.stream("POST", "/inference/generate", json=body, headers=auth(key)) as response:
            assert (await read_events(response))[-1][1]["tokens_generated"] == 3
        async with client.stream("POST", "/inference/generate", json=body, headers=auth(key)) as response:
            assert (await read_events(response))[-1][1]["tokens_generated"] == 3  # a later retry re-attaches
    assert [job.request_id for job in synthetic_worker.jobs] == [request_id]


async def test_the_owner_of_a_request_outlives_its_stream(
    gateway_url: str,
    healthy_swarm: SwarmSnapshot,
    synthetic_worker: SyntheticWorker,
    issue_key: IssueKey,
    redis: aioredis.Redis,
) -> None:
    key, _ = await issue_key()
    body = {"prompt": "short", "max_tokens": 2, "request_id": unique_id("owned")}
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as client:
        async with client.stream("POST", "/inference/generate", json=body, headers=auth(key)) as response:
            await read_events(response)
    async with asyncio.timeout(5):  # the synthetic worker sets the stream's TTL just after its final event
        while (stream_ttl := await redis.ttl(keys.token_stream(body["request_id"]))) < 0:
            await asyncio.sleep(0.01)
    assert 0 < stream_ttl < await redis.ttl(keys.request_owner(body["request_id"]))


async def test_re_attaching_takes_a_connection_slot_so_one_request_cannot_hold_unbounded_connections(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    key, _ = await issue_key()  # GATEWAY_MAX_CONCURRENT_STREAMS=3 in the test gateway
    body = {"prompt": "hold on", "max_tokens": 4, "request_id": unique_id("held")}
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as client:
        path = f"/inference/{body['request_id']}/stream"
        streams = [client.stream("POST", "/inference/generate", json=body, headers=auth(key))]
        streams += [client.stream("GET", path, headers=auth(key)) for _ in range(2)]
        opened = [await s.__aenter__() for s in streams]
        try:
            assert [r.status_code for r in opened] == [200, 200, 200]
            readers = [SseReader(response) for response in opened]  # kept: a dropped reader closes its connection
            for reader in readers:
                await reader.events(limit=1)
            refused = await client.get(path, headers=auth(key))
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_streams"
            repeated = await client.post("/inference/generate", json=body, headers=auth(key))
            assert repeated.status_code == 429
        finally:
            for s in streams:
                await s.__aexit__(None, None, None)


async def test_re_attaching_counts_against_the_keys_own_stream_limit_not_the_gateways(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    key, _ = await issue_key(limits=KeyLimits(max_concurrent_streams=4))  # the gateway's own limit is 3
    body = {"prompt": "hold on", "max_tokens": 4, "request_id": unique_id("own-limit")}
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as client:
        path = f"/inference/{body['request_id']}/stream"
        streams = [client.stream("POST", "/inference/generate", json=body, headers=auth(key))]
        streams += [client.stream("GET", path, headers=auth(key)) for _ in range(2)]
        streams += [client.stream("POST", "/inference/generate", json=body, headers=auth(key))]
        opened, readers = [], []  # readers kept: a dropped reader closes its connection
        try:
            for s in streams:  # one at a time: each holds its slot before the next asks
                opened.append(await s.__aenter__())
                readers.append(SseReader(opened[-1]))
                await readers[-1].events(limit=1)
            assert [r.status_code for r in opened] == [200, 200, 200, 200]
            async with asyncio.timeout(5):  # admitted, it would stream on: the worker holds the request
                refused = await client.get(path, headers=auth(key))
            assert refused.status_code == 429 and "4 requests" in refused.json()["error"]["message"]
        finally:
            for s in streams[: len(opened)]:
                await s.__aexit__(None, None, None)


async def test_resuming_is_rate_limited_like_starting(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    key, _ = await issue_key()  # GATEWAY_RATE_LIMIT_PER_MINUTE=12 in the test gateway
    body = {"prompt": "short", "max_tokens": 1, "request_id": unique_id("resumed")}
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as client:
        async with client.stream("POST", "/inference/generate", json=body, headers=auth(key)) as response:
            await read_events(response)
        statuses = []
        started = time.monotonic()
        path = f"/inference/{body['request_id']}/stream"
        for _ in range(12):
            statuses.append((await client.get(path, headers=auth(key))).status_code)
    assert time.monotonic() - started < 30
    assert statuses[:11] == [200] * 11 and statuses[11] == 429
