"""tools on /v1/chat/completions: checked at admission, offered in the prompt, carried on the job, and a reply
that calls them shaped as OpenAI's tool_calls (streamed or not). The worker's part, a grammar that makes the
model's reply a valid call, is tested in tests/workers/test_constraint.py."""

import asyncio
import json
from decimal import Decimal
from typing import Any

import openai
import pytest
import redis.asyncio as aioredis
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from gateway.openai_api import ResponseShape
from gateway.relay import Entry
from protocol import keys
from protocol.error_codes import StreamErrorCode
from protocol.events import DoneEvent, ErrorBody, ErrorEvent, TokenEvent, encode_event
from protocol.swarm import SwarmSnapshot
from protocol.tools import NamedToolChoice, Tool, ToolUse
from tests.fixtures.gateway import MODEL_ID, IssueKey, SyntheticWorker
from tests.gateway.helpers import CALL, WEATHER


def openai_client(gateway_url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key=key, max_retries=0, timeout=10)


async def worker_writes(redis: aioredis.Redis, request_id: str, pieces: list[str]) -> None:
    """What a worker writes for a reply made of `pieces`, once the request is admitted."""
    async with asyncio.timeout(5):
        while not await redis.exists(keys.request_owner(request_id)):
            await asyncio.sleep(0.01)
    stream = keys.token_stream(request_id)
    for i, piece in enumerate(pieces):
        token = TokenEvent(
            token=piece, request_id=request_id, index=i, token_id=5 + i, tokens_generated=i + 1, cost_far=Decimal(i)
        )
        await redis.xadd(stream, encode_event(token))  # type: ignore[arg-type]
    done = DoneEvent(
        request_id=request_id,
        status="completed",
        finish_reason="stop",
        prompt_tokens=3,
        tokens_generated=len(pieces),
        total_cost_far=Decimal(len(pieces)),
    )
    await redis.xadd(stream, encode_event(done))  # type: ignore[arg-type]


async def test_tools_travel_with_the_job_and_are_offered_in_the_system_turn(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    key, _ = await issue_key()
    earlier_call: dict[str, Any] = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
        ],
    }
    messages: Any = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        earlier_call,
        {"role": "tool", "tool_call_id": "call_1", "content": "-3 C, snow"},
    ]
    async with openai_client(gateway_url, key) as client:
        await client.chat.completions.create(
            model=MODEL_ID,
            messages=messages,
            max_tokens=2,
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            parallel_tool_calls=False,
        )
    (job,) = synthetic_worker.jobs
    assert job.tool_use is not None and not job.tool_use.parallel_tool_calls
    assert job.tool_use.tool_choice == NamedToolChoice.model_validate(
        {"type": "function", "function": {"name": "get_weather"}}
    )
    assert job.messages is not None
    system, _, assistant, tool = job.messages
    assert system.content.startswith("Be brief.\n\nYou can call these functions:") and "get_weather" in system.content
    assert json.loads(assistant.content) == {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}
    assert (tool.role, tool.content) == ("tool", "-3 C, snow")


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"tool_choice": "required"}, "tool_choice", "validation_error"),  # no tools to choose from
        (
            {"tools": [{**WEATHER, "function": {**WEATHER["function"], "parameters": {"uniqueItems": True}}}]},  # type: ignore[dict-item]
            "tools",
            "unsupported_schema",
        ),
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format", "unsupported_parameter"),
    ],
)
async def test_tools_that_cannot_be_enforced_are_a_400_naming_them(
    gateway_url: str, issue_key: IssueKey, fields: dict[str, Any], param: str, code: str
) -> None:
    key, _ = await issue_key()
    async with openai_client(gateway_url, key) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], extra_body=fields
            )
    assert (refused.value.param, refused.value.code) == (param, code)


async def test_a_named_tool_choice_that_is_not_among_the_tools_is_a_404_as_an_unknown_model_is(
    gateway_url: str, issue_key: IssueKey
) -> None:
    key, _ = await issue_key()
    async with openai_client(gateway_url, key) as client:
        with pytest.raises(openai.NotFoundError) as refused:
            await client.chat.completions.create(
                model=MODEL_ID,
                messages=[{"role": "user", "content": "Hi"}],
                tools=[WEATHER],  # type: ignore[list-item]
                tool_choice={"type": "function", "function": {"name": "nope"}},
            )
    assert refused.value.body is not None and "'nope'" in str(refused.value.message)


async def test_a_reply_that_calls_a_tool_is_tool_calls_with_finish_reason_tool_calls(
    gateway_url: str, healthy_swarm: SwarmSnapshot, issue_key: IssueKey, redis: aioredis.Redis
) -> None:
    key, _ = await issue_key()
    writing = asyncio.create_task(worker_writes(redis, "req_tool_call", [CALL[:20], CALL[20:]]))
    async with openai_client(gateway_url, key) as client:
        reply = await client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[WEATHER],  # type: ignore[list-item]
            extra_body={"request_id": "req_tool_call"},
        )
    await writing
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert (call.id, call.type, call.function.name) == ("call_req_tool_call_0", "function", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}


async def test_a_streamed_call_arrives_whole_in_one_delta_and_text_streams_as_text(
    gateway_url: str, healthy_swarm: SwarmSnapshot, issue_key: IssueKey, redis: aioredis.Redis
) -> None:
    key, _ = await issue_key()
    replies = {"req_tool_stream": [CALL[:20], CALL[20:]], "req_tool_text": ["It is ", "sunny."]}
    chunks: dict[str, list[Any]] = {}
    async with openai_client(gateway_url, key) as client:
        for request_id, pieces in replies.items():
            writing = asyncio.create_task(worker_writes(redis, request_id, pieces))
            stream = await client.chat.completions.create(
                model=MODEL_ID,
                messages=[{"role": "user", "content": "Weather in Paris?"}],
                tools=[WEATHER],  # type: ignore[list-item]
                stream=True,
                extra_body={"request_id": request_id},
            )
            chunks[request_id] = [chunk async for chunk in stream]
            await writing
    *called, finish = chunks["req_tool_stream"]
    deltas = [c.choices[0].delta for c in called]
    (call,) = [tool_call for delta in deltas for tool_call in delta.tool_calls or []]
    assert (call.index, call.id, call.function and call.function.name) == (0, "call_req_tool_stream_0", "get_weather")
    assert call.function is not None and json.loads(call.function.arguments or "") == {"city": "Paris"}
    assert finish.choices[0].finish_reason == "tool_calls"
    text = "".join(c.choices[0].delta.content or "" for c in chunks["req_tool_text"] if c.choices)
    assert text == "It is sunny." and chunks["req_tool_text"][-1].choices[0].finish_reason == "stop"


class GetWeather(BaseModel):
    """The weather in a city now."""

    city: str


async def test_langchain_bind_tools_reads_the_call_streamed_or_not(
    gateway_url: str, healthy_swarm: SwarmSnapshot, issue_key: IssueKey, redis: aioredis.Redis
) -> None:
    key, _ = await issue_key()
    call = '{"tool_calls": [{"name": "GetWeather", "arguments": {"city": "Oslo"}}]}'
    for request_id, streaming in (("req_lc_call", False), ("req_lc_call_stream", True)):
        llm = ChatOpenAI(
            model=MODEL_ID,
            base_url=f"{gateway_url}/v1",
            api_key=key,  # type: ignore[arg-type]
            max_retries=0,
            streaming=streaming,
            extra_body={"request_id": request_id},
        ).bind_tools([GetWeather], tool_choice="GetWeather", strict=True)
        writing = asyncio.create_task(worker_writes(redis, request_id, [call[:30], call[30:]]))
        reply = await llm.ainvoke("What is the weather in Oslo?")
        await writing
        (tool_call,) = reply.tool_calls  # type: ignore[attr-defined]
        assert (tool_call["name"], tool_call["args"]) == ("GetWeather", {"city": "Oslo"})
        assert tool_call["id"] == f"call_{request_id}_0"


def test_a_streamed_reply_held_as_a_possible_call_is_sent_before_the_error_that_ends_it() -> None:
    """The worker bills a stream's tokens as they are relayed; a reply held back whole (it may be a call) must reach
    the client before an error ends the stream, or the buyer pays for tokens it never got (as the native route and
    a reply ending normally send them)."""
    shape = ResponseShape(
        chat=True, request_id="req_held", model=MODEL_ID, tool_use=ToolUse(tools=[Tool.model_validate(WEATHER)])
    )
    pieces = [CALL[:20], CALL[20:40]]
    out = b""
    for i, piece in enumerate(pieces):
        token = TokenEvent(
            token=piece, request_id="req_held", index=i, token_id=5 + i, tokens_generated=i + 1, cost_far=Decimal(i)
        )
        out += shape.chunk(Entry(f"1-{i}", TokenEvent.kind, token.model_dump_json(exclude_none=True).encode()))
    assert out == b""  # held: the reply opened a JSON object
    error = ErrorEvent(
        error=ErrorBody(code=StreamErrorCode.NO_ROUTE, message="no server holds block 2"),
        request_id="req_held",
        tokens_generated=len(pieces),
        total_cost_far=Decimal(len(pieces)),
    )
    out += shape.chunk(Entry("1-9", ErrorEvent.kind, error.model_dump_json(exclude_none=True).encode()))
    chunks = [json.loads(line[6:]) for line in out.decode().splitlines() if line.startswith("data: ")]
    *held, ended = chunks
    assert "".join(c["choices"][0]["delta"]["content"] for c in held) == CALL[:40]  # cut short: text, not a call
    assert ended["error"]["code"] == "no_route"
