"""Every route that quotes a model quotes its prompt and its completion price, and a request's job carries the
prices and the platform fee the gateway fixed when it admitted it (#26): the live prices the pricer set, while
they are fresh, and a session keeps the ones it was quoted whatever the pricer sets while it runs (#30)."""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from devstack.harness.gateway import FEE_BPS, OTHER_PRICE, OTHER_PROMPT_PRICE
from protocol import keys
from protocol.live_prices import LIVE_PRICE_MAX_AGE_S, LivePrice, PricePoint
from tests.fixtures.gateway import (
    MODEL_ID,
    OTHER_MODEL_ID,
    PRICE,
    IssueKey,
    SseReader,
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


def live_price(multiplier: str, *, priced_at: datetime | None = None) -> str:
    """The other model's live price at `multiplier` times its catalogue prices, as the pricer writes it."""
    factor = Decimal(multiplier)
    return LivePrice(
        model_id=OTHER_MODEL_ID,
        multiplier=factor,
        prompt_price_per_token_far=OTHER_PROMPT_PRICE * factor,
        completion_price_per_token_far=OTHER_PRICE * factor,
        catalogue_prompt_price_far=OTHER_PROMPT_PRICE,
        catalogue_completion_price_far=OTHER_PRICE,
        queue_depth=32,
        thinnest_block_servers=1,
        priced_at=priced_at or datetime.now(UTC),
        block_premium_bps=(10_000, 10_000, 15_000, 15_000),
    ).model_dump_json()


async def test_a_session_pays_the_live_price_quoted_at_admission_even_after_the_price_moved_mid_stream(
    gateway_url: str, other_model_worker: SyntheticWorker, issue_key: IssueKey, redis: aioredis.Redis
) -> None:
    key, _ = await issue_key()
    await redis.hset(keys.LIVE_PRICES, OTHER_MODEL_ID, live_price("2.5"))  # type: ignore[misc]
    body = {"prompt": "hold three words", "max_tokens": 50, "model_id": OTHER_MODEL_ID}
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as client:
        quoted = (await client.get("/mesh/status", params={"model_id": OTHER_MODEL_ID})).json()
        assert (quoted["price_multiplier"], quoted["completion_price_per_token_far"]) == ("2.5", "0.00075")
        async with client.stream("POST", "/inference/generate", json=body, headers=auth(key)) as response:
            assert response.status_code == 200
            reader = SseReader(response)
            first = await reader.events(limit=2)
            # The pricer moves the price while the session streams; new requests are quoted the new one...
            await redis.hset(keys.LIVE_PRICES, OTHER_MODEL_ID, live_price("3"))  # type: ignore[misc]
            listed = {m["model_id"]: m for m in (await client.get("/models")).json()["models"]}
            assert listed[OTHER_MODEL_ID]["completion_price_per_token_far"] == "0.0009"
            request_id = first[0][1]["request_id"]
            assert (await client.post(f"/inference/{request_id}/cancel", headers=auth(key))).status_code == 202
            events = first + await reader.events()
    # ...and this one was fixed at admission: its job, every running cost and its total carry the quoted price.
    (job,) = other_model_worker.jobs
    assert (job.prompt_price_per_token_far, job.price_per_token_far) == (Decimal("0.00005"), Decimal("0.00075"))
    assert job.block_premium_bps == (10_000, 10_000, 15_000, 15_000)  # its providers' shares, fixed alike
    _, done = events[-1]
    tokens = done["tokens_generated"]
    assert tokens >= 2 and done["status"] == "cancelled"
    assert Decimal(done["total_cost_far"]) == 3 * Decimal("0.00005") + tokens * Decimal("0.00075")
    costs = [Decimal(data["cost_far"]) for _, data in events[:-1]]
    assert costs == [3 * Decimal("0.00005") + n * Decimal("0.00075") for n in range(1, tokens + 1)]


async def test_models_lists_the_recent_steps_of_each_models_price_oldest_first(
    gateway_url: str, redis: aioredis.Redis
) -> None:
    now = datetime.now(UTC)
    for minutes_ago, factor in ((2, "1.5"), (1, "2")):
        point = PricePoint.of(
            LivePrice.model_validate_json(live_price(factor, priced_at=now - timedelta(minutes=minutes_ago)))
        )
        await redis.lpush(keys.price_history(OTHER_MODEL_ID), point.model_dump_json())  # type: ignore[misc]
    listed = {m["model_id"]: m for m in httpx.get(f"{gateway_url}/models").json()["models"]}
    assert listed[MODEL_ID]["price_history"] == []
    history = listed[OTHER_MODEL_ID]["price_history"]
    assert [(p["price_multiplier"], p["completion_price_per_token_far"]) for p in history] == [
        ("1.5", "0.00045"),
        ("2", "0.0006"),
    ]
    assert history[0]["priced_at"] == (now - timedelta(minutes=2)).isoformat()


async def test_a_stale_live_price_is_not_quoted(gateway_url: str, redis: aioredis.Redis) -> None:
    stopped = datetime.now(UTC) - timedelta(seconds=LIVE_PRICE_MAX_AGE_S + 5)
    await redis.hset(keys.LIVE_PRICES, OTHER_MODEL_ID, live_price("3", priced_at=stopped))  # type: ignore[misc]
    status = httpx.get(f"{gateway_url}/mesh/status", params={"model_id": OTHER_MODEL_ID}).json()
    assert {k: status[k] for k in OTHER_QUOTE} == OTHER_QUOTE and status["price_multiplier"] == "1"
