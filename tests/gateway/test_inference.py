"""The seed's inference API over real HTTP: event shapes, resume, idempotency, cancel."""

import asyncio
from decimal import Decimal

import httpx
import redis.asyncio as aioredis

from protocol import keys
from protocol.swarm import SwarmSnapshot
from tests.fixtures.gateway import MODEL_ID, PRICE, WALLET, IssueKey, SseReader, SyntheticWorker, auth, read_events


async def test_generate_streams_the_seeds_token_events_then_done(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    key, key_id = await issue_key()
    body = {
        "prompt": "Explain quantum computing",
        "max_tokens": 5,
        "temperature": 0.7,
        "top_p": 0.9,
        "user_wallet": WALLET,
        "request_id": "req_abc123",
        "model_id": MODEL_ID,
    }
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as client:
        async with client.stream("POST", "/inference/generate", json=body, headers=auth(key)) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = await read_events(response)
    tokens, (_, done) = events[:-1], events[-1]
    assert [data["tokens_generated"] for _, data in tokens] == [1, 2, 3, 4, 5]
    for n, (event_id, data) in enumerate(tokens, start=1):
        assert event_id is not None and data["request_id"] == "req_abc123"
        assert {"token", "request_id", "tokens_generated", "cost_far"} <= data.keys()
        assert Decimal(data["cost_far"]) == PRICE * n and isinstance(data["cost_far"], str)
    assert done["done"] is True and done["tokens_generated"] == 5 and Decimal(done["total_cost_far"]) == PRICE * 5
    job = synthetic_worker.jobs[0]
    assert (job.request_id, job.user_wallet, job.api_key_id, job.price_per_token_far) == (
        "req_abc123",
        WALLET,
        key_id,
        PRICE,
    )


async def test_reconnect_with_last_event_id_resumes_after_that_token(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    key, _ = await issue_key()
    body = {"prompt": "slow story", "max_tokens": 12, "request_id": "req_resume"}
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as client:
        async with client.stream("POST", "/inference/generate", json=body, headers=auth(key)) as response:
            first = await read_events(response, limit=4)
        last_id = first[-1][0]
        assert last_id is not None
        headers = {**auth(key), "Last-Event-ID": last_id}
        async with client.stream("GET", "/inference/req_resume/stream", headers=headers) as response:
            assert response.status_code == 200
            rest = await read_events(response)
    generated = [data["tokens_generated"] for _, data in first + rest[:-1]]
    assert generated == list(range(1, 13))
    assert rest[-1][1]["done"] is True and rest[-1][1]["status"] == "completed"


async def test_repeating_a_request_id_attaches_to_the_same_job_instead_of_running_it_again(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    key, _ = await issue_key()
    body = {"prompt": "once only", "max_tokens": 3, "request_id": "req_once"}
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as client:
        replies = []
        for _ in range(2):
            async with client.stream("POST", "/inference/generate", json=body, headers=auth(key)) as response:
                replies.append(await read_events(response))
        other_key, _ = await issue_key()
        conflict = await client.post("/inference/generate", json=body, headers=auth(other_key))
    assert replies[0] == replies[1] and len(replies[0]) == 4
    assert len(synthetic_worker.jobs) == 1
    assert conflict.status_code == 409 and conflict.json()["error"]["field"] == "request_id"


async def test_cancel_sets_the_flag_and_the_stream_ends_cancelled(
    gateway_url: str,
    healthy_swarm: SwarmSnapshot,
    synthetic_worker: SyntheticWorker,
    issue_key: IssueKey,
    redis: aioredis.Redis,
) -> None:
    key, _ = await issue_key()
    body = {"prompt": "hold on", "max_tokens": 64, "request_id": "req_cancel"}
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as client:
        async with client.stream("POST", "/inference/generate", json=body, headers=auth(key)) as response:
            reader = SseReader(response)
            await reader.events(limit=1)
            cancelled = await client.post("/inference/req_cancel/cancel", headers=auth(key))
            assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelling"
            assert await redis.exists(keys.cancel_flag("req_cancel"))
            rest = await reader.events()
        assert rest[-1][1]["status"] == "cancelled"
        again = await client.post("/inference/req_cancel/cancel", headers=auth(key))
        assert again.status_code == 200 and again.json()["status"] == "finished"


async def test_a_client_that_disconnects_and_does_not_return_gets_its_job_cancelled(
    gateway_url: str,
    healthy_swarm: SwarmSnapshot,
    synthetic_worker: SyntheticWorker,
    issue_key: IssueKey,
    redis: aioredis.Redis,
) -> None:
    key, _ = await issue_key()
    body = {"prompt": "hold it", "max_tokens": 64, "request_id": "req_gone"}
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as client:
        async with client.stream("POST", "/inference/generate", json=body, headers=auth(key)) as response:
            await read_events(response, limit=2)
    for _ in range(50):  # grace is 0.3 s
        if await redis.exists(keys.cancel_flag("req_gone")):
            break
        await asyncio.sleep(0.05)
    assert await redis.exists(keys.cancel_flag("req_gone"))


async def test_idle_streams_get_keep_alive_comments(
    gateway_url: str, healthy_swarm: SwarmSnapshot, issue_key: IssueKey
) -> None:
    key, _ = await issue_key()
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as client:
        async with client.stream("POST", "/inference/generate", json={"prompt": "queued"}, headers=auth(key)) as r:
            async for line in r.aiter_lines():
                assert line == ": keep-alive"  # no worker runs: the first thing sent is a keep-alive
                break
