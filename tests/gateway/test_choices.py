"""n > 1 at the gateway: capped by GATEWAY_MAX_CHOICES (400 naming n above it), carried on the job, and a stream
holding several choices (the worker writes them one after another, each token naming its choice) shaped as
OpenAI's choices, streamed or not: each with its own index, finish_reason, logprobs and tool calls. The worker's
part is tested in tests/workers/test_choices.py, the whole system in tests/e2e/test_choices.py."""

import asyncio
import json
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
import redis.asyncio as aioredis

from protocol import keys
from protocol.events import ChoiceEnd, DoneEvent, TokenEvent, TopLogprob, encode_event
from protocol.swarm import SwarmSnapshot
from tests.fixtures.gateway import MODEL_ID, IssueKey, SyntheticWorker, auth
from tests.gateway.helpers import CALL, WEATHER


def openai_client(gateway_url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key=key, max_retries=0, timeout=10)


async def worker_writes(
    redis: aioredis.Redis, request_id: str, replies: list[list[str]], finish: list[str], *, logprobs: bool = False
) -> None:
    """What a worker writes for `replies` (one list of token texts per choice), once the request is admitted."""
    async with asyncio.timeout(5):
        while not await redis.exists(keys.request_owner(request_id)):
            await asyncio.sleep(0.01)
    stream, total = keys.token_stream(request_id), 0
    for choice, pieces in enumerate(replies):
        for i, piece in enumerate(pieces):
            total += 1
            extra: dict[str, Any] = {}
            if logprobs:
                extra = {"logprob": -0.5 - choice, "top_logprobs": [TopLogprob(token=piece, token_id=5, logprob=-0.5)]}
            token = TokenEvent(
                token=piece,
                request_id=request_id,
                index=i,
                token_id=5 + i,
                tokens_generated=total,
                cost_far=Decimal(total),
                choice=choice,
                **extra,
            )
            await redis.xadd(stream, encode_event(token))  # type: ignore[arg-type]
    done = DoneEvent(
        request_id=request_id,
        status="completed",
        finish_reason=finish[-1],  # type: ignore[arg-type]
        prompt_tokens=3,
        tokens_generated=total,
        total_cost_far=Decimal(total),
        choices=[
            ChoiceEnd(index=i, finish_reason=reason, tokens_generated=len(pieces))  # type: ignore[arg-type]
            for i, (pieces, reason) in enumerate(zip(replies, finish, strict=True))
        ],
    )
    await redis.xadd(stream, encode_event(done))  # type: ignore[arg-type]


async def test_n_above_the_gateways_cap_is_a_400_naming_n_on_both_apis(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    key, _ = await issue_key()
    async with openai_client(gateway_url, key) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.completions.create(model=MODEL_ID, prompt="x", max_tokens=1, n=9)
    assert refused.value.status_code == 400 and refused.value.param == "n"
    assert "at most 8" in refused.value.message
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as http:
        response = await http.post("/inference/generate", json={"prompt": "x", "n": 9}, headers=auth(key))
    assert response.status_code == 422 and response.json()["error"]["field"] == "n"
    assert synthetic_worker.jobs == []


async def test_n_travels_with_the_job_and_one_choice_leaves_it_out_of_the_payload(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    key, _ = await issue_key()
    async with openai_client(gateway_url, key) as client:
        await client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=2, n=3
        )
        await client.completions.create(model=MODEL_ID, prompt="x", max_tokens=1)
    three, one = synthetic_worker.jobs
    assert three.n == 3 and three.payload()["n"] == 3
    assert one.n == 1 and "n" not in one.payload()


async def test_a_reply_of_several_choices_has_each_ones_text_finish_reason_and_logprobs(
    gateway_url: str, healthy_swarm: SwarmSnapshot, issue_key: IssueKey, redis: aioredis.Redis
) -> None:
    key, _ = await issue_key()
    replies = [["Red", " sky"], ["Blue"], ["Green", " grass", " grows"]]
    writing = asyncio.create_task(
        worker_writes(redis, "req_three_choices", replies, ["stop", "stop", "length"], logprobs=True)
    )
    async with openai_client(gateway_url, key) as client:
        reply = await client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": "A colour?"}],
            n=3,
            logprobs=True,
            extra_body={"request_id": "req_three_choices"},
        )
    await writing
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert [c.message.content for c in reply.choices] == ["Red sky", "Blue", "Green grass grows"]
    assert [c.finish_reason for c in reply.choices] == ["stop", "stop", "length"]
    for choice, pieces in zip(reply.choices, replies, strict=True):
        assert choice.logprobs is not None and choice.logprobs.content is not None
        assert [t.token for t in choice.logprobs.content] == pieces
        assert {t.logprob for t in choice.logprobs.content} == {-0.5 - choice.index}
    assert reply.usage is not None and (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 6)


async def test_streamed_choices_carry_their_index_and_each_choice_decides_on_a_tool_call_itself(
    gateway_url: str, healthy_swarm: SwarmSnapshot, issue_key: IssueKey, redis: aioredis.Redis
) -> None:
    key, _ = await issue_key()
    replies = [[CALL[:20], CALL[20:]], ["It is ", "sunny."]]
    writing = asyncio.create_task(worker_writes(redis, "req_two_streamed", replies, ["stop", "stop"]))
    async with openai_client(gateway_url, key) as client:
        stream = await client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[WEATHER],  # type: ignore[list-item]
            n=2,
            stream=True,
            extra_body={"request_id": "req_two_streamed"},
        )
        chunks = [chunk async for chunk in stream]
    await writing
    text: dict[int, str] = {}
    calls: dict[int, list[Any]] = {}
    finish: dict[int, str | None] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            text[choice.index] = text.get(choice.index, "") + (choice.delta.content or "")
            calls.setdefault(choice.index, []).extend(choice.delta.tool_calls or [])
            finish[choice.index] = choice.finish_reason or finish.get(choice.index)
    assert text == {0: "", 1: "It is sunny."} and finish == {0: "tool_calls", 1: "stop"}
    (call,) = calls[0]
    assert call.function is not None and json.loads(call.function.arguments or "") == {"city": "Paris"}
    assert call.id == "call_req_two_streamed_0" and calls[1] == []


async def test_streamed_completions_number_their_choices_and_offset_each_choices_logprobs_from_its_start(
    gateway_url: str, healthy_swarm: SwarmSnapshot, issue_key: IssueKey, redis: aioredis.Redis
) -> None:
    key, _ = await issue_key()
    replies = [["ab", "c"], ["de", "fgh"]]
    writing = asyncio.create_task(
        worker_writes(redis, "req_two_completions", replies, ["length", "stop"], logprobs=True)
    )
    async with openai_client(gateway_url, key) as client:
        stream = await client.completions.create(
            model=MODEL_ID, prompt="x", n=2, logprobs=1, stream=True, extra_body={"request_id": "req_two_completions"}
        )
        chunks = [chunk async for chunk in stream]
    await writing
    offsets: dict[int, list[int]] = {}
    text: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            text[choice.index] = text.get(choice.index, "") + choice.text
            if choice.logprobs is not None:
                offsets.setdefault(choice.index, []).extend(choice.logprobs.text_offset or [])
    assert text == {0: "abc", 1: "defgh"} and offsets == {0: [0, 2], 1: [0, 2]}
    assert [c.finish_reason for c in chunks[-1].choices] == ["length", "stop"]
