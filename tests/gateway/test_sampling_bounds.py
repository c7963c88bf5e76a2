"""A sampling parameter the worker could not sample with is refused at the door, before any swarm time is spent:
422 on the native API, 400 on the OpenAI routes, naming the parameter; and the API document states the bounds."""

from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from protocol import keys
from protocol.requests import MAX_REPETITION_PENALTY, MIN_REPETITION_PENALTY
from protocol.swarm import SwarmSnapshot
from tests.fixtures.gateway import MODEL_ID, IssueKey, auth

DEGENERATE: list[tuple[str, Any]] = [
    ("repetition_penalty", 5e-324),  # divided a seen token's logit into inf after the prefill
    ("repetition_penalty", 0.0),
    ("repetition_penalty", 1e3),
    ("top_p", 0.0),
    ("temperature", 1e9),
    ("frequency_penalty", 1e308),
    ("presence_penalty", -1e308),
    ("top_k", -1),
    ("logit_bias", {"42": 1e300}),
]


async def _nothing_queued(redis: aioredis.Redis) -> bool:
    return await redis.zcard(keys.queue_for(MODEL_ID)) == 0


@pytest.mark.parametrize(("param", "value"), DEGENERATE)
async def test_a_degenerate_sampling_parameter_is_422_on_the_native_api_before_anything_runs(
    gateway_url: str, healthy_swarm: SwarmSnapshot, issue_key: IssueKey, redis: aioredis.Redis, param: str, value: Any
) -> None:
    key, _ = await issue_key()
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as http:
        body = {"prompt": "Hello", "max_tokens": 4, "model_id": MODEL_ID, param: value}
        response = await http.post("/inference/generate", json=body, headers=auth(key))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"].split(".")[0] == param
    assert await _nothing_queued(redis)


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize(("param", "value"), DEGENERATE)
async def test_a_degenerate_sampling_parameter_is_400_on_the_openai_routes_before_anything_runs(
    gateway_url: str,
    healthy_swarm: SwarmSnapshot,
    issue_key: IssueKey,
    redis: aioredis.Redis,
    route: str,
    param: str,
    value: Any,
) -> None:
    key, _ = await issue_key()
    text = {"prompt": "Hello"} if route == "/v1/completions" else {"messages": [{"role": "user", "content": "Hi"}]}
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as http:
        body = {"model": MODEL_ID, "max_tokens": 4, **text, param: value}
        response = await http.post(route, json=body, headers=auth(key))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].split(".")[0] == param
    assert await _nothing_queued(redis)


async def test_the_api_document_states_the_bounds_of_every_sampling_parameter(gateway_url: str) -> None:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as http:
        schemas = (await http.get("/openapi.json")).json()["components"]["schemas"]
    for name in ("GenerateRequest", "CompletionRequest", "ChatCompletionRequest"):
        properties = schemas[name]["properties"]
        for param in ("temperature", "top_p", "top_k", "repetition_penalty", "frequency_penalty", "presence_penalty"):
            numbers = [s for s in properties[param].get("anyOf", [properties[param]]) if s.get("type") != "null"]
            assert len(numbers) == 1, (name, param)
            bounded = numbers[0]
            assert {"minimum", "exclusiveMinimum"} & set(bounded) and "maximum" in bounded, (name, param, bounded)
        penalty = next(s for s in properties["repetition_penalty"].get("anyOf", [properties["repetition_penalty"]]))
        assert (penalty["minimum"], penalty["maximum"]) == (MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY)
        bias = properties["logit_bias"]
        bias = next(s for s in bias.get("anyOf", [bias]) if s.get("type") == "object")
        [value] = bias["patternProperties"].values()
        assert (value["minimum"], value["maximum"]) == (-100, 100)
