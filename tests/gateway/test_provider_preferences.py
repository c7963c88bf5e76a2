"""Buyers' routing preferences at the gateway (#30 item 2): OpenRouter's `provider` object on both APIs, refused
with a clear 4xx when malformed, a quote above `max_price` refused before anything is queued, and the rest
carried on the job to the worker that honours it."""

import json

import httpx
import redis.asyncio as aioredis

from protocol import keys
from tests.fixtures.gateway import MODEL_ID, IssueKey, SyntheticWorker, auth, read_events

PEER = "12D3KooWAbCdEfGhJkLmNpQrStUvWxYz123456789abcdefghijk"


async def test_malformed_preferences_are_refused_naming_the_field_on_both_apis(
    gateway_url: str, issue_key: IssueKey
) -> None:
    key, _ = await issue_key()
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10, headers=auth(key)) as client:
        native = await client.post("/inference/generate", json={"prompt": "hi", "provider": {"sort": "fastest"}})
        both = {"only": [PEER], "ignore": [PEER]}
        chat = await client.post(
            "/v1/chat/completions",
            json={"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "provider": both},
        )
        negative = await client.post(
            "/v1/completions",
            json={"model": MODEL_ID, "prompt": "hi", "provider": {"max_price": {"prompt": "-1"}}},
        )
    assert native.status_code == 422 and native.json()["error"]["field"] == "provider.sort"
    assert chat.status_code == 400 and f"{PEER} is named in both only and ignore" in chat.json()["error"]["message"]
    assert negative.status_code == 400
    assert negative.json()["error"]["param"] == "provider.max_price.prompt"
    assert "cannot be negative" in negative.json()["error"]["message"]


async def test_a_quote_above_max_price_is_refused_with_409_and_nothing_is_queued_or_owned(
    gateway_url: str, issue_key: IssueKey, healthy_swarm: object, redis: aioredis.Redis
) -> None:
    key, _ = await issue_key()
    cap = {"max_price": {"completion": "0.00009"}}  # the model's completion price is 0.0001
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10, headers=auth(key)) as client:
        native = await client.post(
            "/inference/generate", json={"prompt": "hi", "request_id": "capped-1", "provider": cap}
        )
        openai = await client.post(
            "/v1/completions",
            json={"model": MODEL_ID, "prompt": "hi", "request_id": "capped-2", "provider": cap},
        )
    assert native.status_code == 409 and native.json()["error"]["code"] == "max_price_exceeded"
    assert native.json()["error"]["field"] == "provider.max_price.completion"
    assert "0.0001 $FAR per token" in native.json()["error"]["message"]
    assert openai.status_code == 409 and openai.json()["error"]["code"] == "max_price_exceeded"
    assert await redis.zcard(keys.queue_for(MODEL_ID)) == 0
    assert await redis.exists(keys.request_owner("capped-1"), keys.request_owner("capped-2")) == 0


async def test_preferences_within_the_quote_reach_the_worker_on_the_job(
    gateway_url: str, issue_key: IssueKey, healthy_swarm: object, synthetic_worker: SyntheticWorker
) -> None:
    key, _ = await issue_key()
    provider = {"max_price": {"completion": "0.0001"}, "sort": "throughput", "ignore": [PEER], "allow_fallbacks": False}
    body = {"prompt": "hi", "max_tokens": 2, "provider": provider}
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10, headers=auth(key)) as client:
        async with client.stream("POST", "/inference/generate", json=body) as response:
            assert response.status_code == 200
            await read_events(response)
    (job,) = synthetic_worker.jobs
    assert job.provider is not None
    assert (job.provider.sort, job.provider.ignore, job.provider.allow_fallbacks) == ("throughput", [PEER], False)


async def test_the_api_document_describes_the_provider_object_on_both_apis(gateway_url: str) -> None:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as client:
        document = (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    for body in ("GenerateRequest", "ChatCompletionRequest", "CompletionRequest"):
        assert "provider" in schemas[body]["properties"], body
    preferences = schemas["ProviderPreferences"]["properties"]
    assert set(preferences) == {"max_price", "sort", "only", "ignore", "allow_fallbacks", "min_reputation"}
    assert "max_price_exceeded" in document["paths"]["/inference/generate"]["post"]["responses"]["409"]["description"]


async def test_a_batch_line_is_held_to_its_max_price_at_the_batchs_discounted_quote(
    gateway_url: str, issue_key: IssueKey, healthy_swarm: object
) -> None:
    key, _ = await issue_key()

    def line(custom_id: str, completion: str) -> str:
        provider = {"max_price": {"completion": completion}}
        body = {"model": MODEL_ID, "prompt": "hi", "max_tokens": 2, "provider": provider}
        return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/completions", "body": body})

    text = line("at-the-discount", "0.00005") + "\n" + line("below-it", "0.00004") + "\n"  # 0.0001 at 50 % off
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10, headers=auth(key)) as client:
        files = {"file": ("in.jsonl", text.encode())}
        uploaded = await client.post("/v1/files", files=files, data={"purpose": "batch"})
        body = {"input_file_id": uploaded.json()["id"], "endpoint": "/v1/completions", "completion_window": "24h"}
        batch = (await client.post("/v1/batches", json=body)).json()
    assert batch["status"] == "failed"
    (error,) = batch["errors"]["data"]
    assert (error["line"], error["code"]) == (2, "max_price_exceeded")
    assert error["param"] == "body.provider.max_price.completion"


async def test_without_streaming_a_request_its_preferences_cannot_route_is_409_route_unsatisfiable_naming_the_blocks(
    gateway_url: str, issue_key: IssueKey, healthy_swarm: object, synthetic_worker: SyntheticWorker
) -> None:
    key, _ = await issue_key()
    body = {"model": MODEL_ID, "prompt": "unroutable here", "max_tokens": 2, "provider": {"only": [PEER]}}
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10, headers=auth(key)) as client:
        response = await client.post("/v1/completions", json=body)
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("route_unsatisfiable", "provider")
    assert "blocks 2..3" in error["message"]
