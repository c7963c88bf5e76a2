"""Every route that quotes a model quotes its prompt and its completion price, and a request's job carries the
prices and the platform fee the gateway fixed when it admitted it (#26)."""

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from devstack.harness.gateway import FEE_BPS, OTHER_PRICE, OTHER_PROMPT_PRICE
from protocol import keys
from tests.fixtures.gateway import (
    MODEL_ID,
    OTHER_MODEL_ID,
    PRICE,
    IssueKey,
    SyntheticWorker,
    auth,
    read_events,
    snapshot,
)

DEFAULT_QUOTE = {
    "price_per_token_far": "0.0001",
    "prompt_price_per_token_far": "0",
    "completion_price_per_token_far": "0.0001",
}
OTHER_QUOTE = {
    "price_per_token_far": "0.0003",
    "prompt_price_per_token_far": "0.00002",
    "completion_price_per_token_far": "0.0003",
}


@pytest.fixture
async def other_model_worker(redis_url: str, redis: aioredis.Redis) -> AsyncIterator[SyntheticWorker]:
    """A synthetic worker of the model with its own prices, and a healthy swarm for it."""
    await redis.hset(keys.SWARM_SNAPSHOTS, OTHER_MODEL_ID, snapshot(OTHER_MODEL_ID).model_dump_json())  # type: ignore[misc]
    client = aioredis.Redis.from_url(redis_url)
    worker = SyntheticWorker(client, OTHER_MODEL_ID)
    task = asyncio.create_task(worker.run())
    yield worker
    everything = [task, *worker.tasks]
    for running in everything:
        running.cancel()
    await asyncio.gather(*everything, return_exceptions=True)
    await client.aclose()


async def test_models_v1_models_and_mesh_status_quote_the_prompt_and_the_completion_price(gateway_url: str) -> None:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as client:
        models = (await client.get("/models")).json()["models"]
        openai = (await client.get("/v1/models")).json()["data"]
        status = (await client.get("/mesh/status", params={"model_id": OTHER_MODEL_ID})).json()
    quotes = {MODEL_ID: DEFAULT_QUOTE, OTHER_MODEL_ID: OTHER_QUOTE}
    for listed in models:
        assert {k: listed[k] for k in DEFAULT_QUOTE} == quotes[listed["model_id"]]
    for listed in openai:
        assert {k: listed[k] for k in DEFAULT_QUOTE} == quotes[listed["id"]]
    assert {k: status[k] for k in DEFAULT_QUOTE} == OTHER_QUOTE
    assert PRICE == Decimal(DEFAULT_QUOTE["price_per_token_far"])


async def test_a_job_carries_the_prices_and_fee_fixed_at_admission_and_its_stream_bills_the_prompt(
    gateway_url: str, other_model_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    key, _ = await issue_key()
    body = {"prompt": "three word prompt", "max_tokens": 2, "model_id": OTHER_MODEL_ID}
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as client:
        async with client.stream("POST", "/inference/generate", json=body, headers=auth(key)) as response:
            assert response.status_code == 200
            events = await read_events(response)
    job = other_model_worker.jobs[0]
    assert (job.prompt_price_per_token_far, job.price_per_token_far, job.platform_fee_bps) == (
        OTHER_PROMPT_PRICE,
        OTHER_PRICE,
        FEE_BPS,
    )
    _, done = events[-1]
    assert Decimal(done["total_cost_far"]) == 3 * OTHER_PROMPT_PRICE + 2 * OTHER_PRICE == Decimal("0.00066")


async def test_the_api_document_describes_both_prices_of_every_route_that_quotes_them(gateway_url: str) -> None:
    paths = httpx.get(f"{gateway_url}/openapi.json").json()["paths"]

    def schema(path: str) -> dict[str, Any]:
        found: dict[str, Any] = paths[path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        return found

    listed = [
        schema("/models")["properties"]["models"]["items"],
        schema("/v1/models")["properties"]["data"]["items"],
        schema("/mesh/status"),
    ]
    for quoted in listed:
        assert set(DEFAULT_QUOTE) <= set(quoted["required"]) and set(DEFAULT_QUOTE) <= set(quoted["properties"])
        assert all(quoted["properties"][name]["type"] == "string" for name in DEFAULT_QUOTE)
