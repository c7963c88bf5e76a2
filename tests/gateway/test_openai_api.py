"""The official `openai` package, unchanged, against the gateway."""

import asyncio
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
import redis.asyncio as aioredis

from gateway.openai_api import ChatMessage, chat_prompt
from protocol import keys
from protocol.events import ErrorBody, ErrorEvent, encode_event
from protocol.swarm import SwarmSnapshot
from tests.fixtures.gateway import MODEL_ID, PRICE, IssueKey, SyntheticWorker


def openai_client(gateway_url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key=key, max_retries=0, timeout=10)


def test_chat_messages_become_one_prompt_ending_with_the_assistant_cue() -> None:
    messages = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")]
    assert chat_prompt(messages) == "System: Be brief.\nUser: Hi\nAssistant:"


async def test_the_openai_package_streams_a_chat_completion_with_usage_and_cost(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    key, _ = await issue_key()
    async with openai_client(gateway_url, key) as client:
        stream = await client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            max_tokens=4,
            stream=True,
            extra_body={"request_id": "req_chat"},
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " tok0 tok1 tok2 tok3"
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].id == "chatcmpl-req_chat"
    last = chunks[-1]
    assert last.choices[0].finish_reason == "length"
    assert last.usage is not None and last.usage.completion_tokens == 4
    assert Decimal(last.model_extra["cost_far"]) == PRICE * 4 and last.model_extra["request_id"] == "req_chat"
    assert synthetic_worker.jobs[0].prompt == "System: Be brief.\nUser: Hi\nAssistant:"
    assert not synthetic_worker.jobs[0].answered_whole  # each token is delivered as it comes, and billed


async def test_a_non_streaming_completion_returns_the_whole_text_and_usage(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    key, _ = await issue_key()
    async with openai_client(gateway_url, key) as client:
        completion = await client.completions.create(model=MODEL_ID, prompt="Once upon", max_tokens=3)
        chat = await client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
    assert completion.choices[0].text == " tok0 tok1 tok2" and completion.usage is not None
    assert completion.usage.completion_tokens == 3 and completion.usage.prompt_tokens == 2
    assert Decimal(completion.model_extra["cost_far"]) == PRICE * 3
    assert chat.choices[0].message.content == " tok0 tok1" and chat.choices[0].finish_reason == "length"
    assert [job.answered_whole for job in synthetic_worker.jobs] == [True, True]  # a failure would bill nothing


async def test_a_failed_generation_is_an_api_error_for_the_openai_package(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    key, _ = await issue_key()
    async with openai_client(gateway_url, key) as client:
        with pytest.raises(openai.APIStatusError) as failed:
            await client.completions.create(model=MODEL_ID, prompt="fail please", max_tokens=5)
        assert failed.value.status_code == 502 and "no_route" in failed.value.message
        assert failed.value.message.endswith("; nothing billed")  # two tokens were generated, none delivered
        stream = await client.completions.create(model=MODEL_ID, prompt="fail again", max_tokens=5, stream=True)
        with pytest.raises(openai.APIError, match="no server holds block 2") as streamed:
            async for _ in stream:
                pass
    # the streamed tokens reached the client, so they are billed, and its error says so
    assert streamed.value.message.endswith(f"; 2 tokens billed ({PRICE * 2} FAR)")


async def test_openai_errors_have_the_openai_shape_and_validation_is_400(gateway_url: str, issue_key: IssueKey) -> None:
    key, _ = await issue_key()
    async with openai_client(gateway_url, key) as client:
        with pytest.raises(openai.BadRequestError) as invalid:
            await client.chat.completions.create(model=MODEL_ID, messages=[], max_tokens=2)
        body = invalid.value.body  # the `openai` package hands over the "error" object
        assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
        assert (body["type"], body["param"], body["code"]) == ("invalid_request_error", "messages", "validation_error")
        with pytest.raises(openai.BadRequestError) as not_a_number:
            await client.completions.create(model=MODEL_ID, prompt="x", temperature=False)
        assert not_a_number.value.param == "temperature"
        with pytest.raises(openai.NotFoundError) as unknown:
            await client.completions.create(model="nobody/sells-this", prompt="x")
        assert unknown.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    async with openai_client(gateway_url, "fmk_wrong") as client:
        with pytest.raises(openai.AuthenticationError) as refused:
            await client.completions.create(model=MODEL_ID, prompt="x")
        assert refused.value.body["type"] == "authentication_error"  # type: ignore[index]


async def test_a_chat_is_capped_text_by_text_as_the_document_states_never_summed_over_its_messages(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    key, _ = await issue_key()  # GATEWAY_MAX_PROMPT_CHARS=1000 in the test gateway
    turns = [{"role": role, "content": role[0] * 900} for role in ("system", "user", "assistant", "user")]
    async with openai_client(gateway_url, key) as client:
        chat = await client.chat.completions.create(model=MODEL_ID, messages=turns, max_tokens=1)  # type: ignore[arg-type]
        assert chat.choices[0].message.content == " tok0"
        assert len(synthetic_worker.jobs[0].prompt) > 3600  # the fallback text joins all four
        with pytest.raises(openai.BadRequestError) as refused:
            parts = [{"type": "text", "text": "short"}, {"type": "text", "text": "x" * 1001}]
            long_part: list[Any] = [{"role": "user", "content": "Hi"}, {"role": "user", "content": parts}]
            await client.chat.completions.create(model=MODEL_ID, messages=long_part)
    assert refused.value.param == "messages" and refused.value.code == "validation_error"
    assert "1001 characters; at most 1000" in refused.value.message


async def test_a_prompt_longer_than_the_models_context_is_400_context_length_exceeded_without_streaming(
    gateway_url: str, healthy_swarm: SwarmSnapshot, issue_key: IssueKey, redis: aioredis.Redis
) -> None:
    key, _ = await issue_key()
    request_id = "req_too_long"

    async def worker_refuses_the_prompt() -> None:  # what a worker writes when the prompt fills the context
        async with asyncio.timeout(5):
            while not await redis.exists(keys.request_owner(request_id)):
                await asyncio.sleep(0.01)
        body = ErrorBody(code="prompt_too_long", message="the prompt is 2100 tokens; the model holds at most 2048")
        error = ErrorEvent(error=body, request_id=request_id, tokens_generated=0, total_cost_far=Decimal(0))
        await redis.xadd(keys.token_stream(request_id), encode_event(error))  # type: ignore[arg-type]

    refusing = asyncio.create_task(worker_refuses_the_prompt())
    async with openai_client(gateway_url, key) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model=MODEL_ID, messages=[{"role": "user", "content": "long"}], extra_body={"request_id": request_id}
            )
    await refusing
    assert (refused.value.code, refused.value.param) == ("context_length_exceeded", "messages")
    assert "2048" in refused.value.message  # LangChain reads `context_length_exceeded` as a context overflow


async def test_the_native_routes_keep_their_own_error_shape(gateway_url: str, issue_key: IssueKey) -> None:
    key, _ = await issue_key()
    async with httpx.AsyncClient(base_url=gateway_url, headers={"Authorization": f"Bearer {key}"}) as http:
        response = await http.post("/inference/generate", json={"prompt": "x", "stop": ["a"] * 5})
    assert response.status_code == 422 and response.json()["error"]["field"] == "stop"


@pytest.mark.parametrize(
    ("param", "value"),
    [("functions", [{"name": "f"}]), ("audio", {"voice": "alloy", "format": "mp3"})],
)
async def test_a_parameter_the_swarm_cannot_honour_is_refused_with_400_naming_it(
    gateway_url: str, issue_key: IssueKey, param: str, value: object
) -> None:
    key, _ = await issue_key()
    async with openai_client(gateway_url, key) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], extra_body={param: value}
            )
    assert refused.value.param == param and refused.value.code == "unsupported_parameter"


async def test_an_unknown_parameter_is_refused_rather_than_ignored(gateway_url: str, issue_key: IssueKey) -> None:
    key, _ = await issue_key()
    async with openai_client(gateway_url, key) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.completions.create(model=MODEL_ID, prompt="x", extra_body={"min_p": 0.1})
    assert refused.value.param == "min_p"


async def test_sampling_controls_travel_with_the_job(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    key, _ = await issue_key()
    async with openai_client(gateway_url, key) as client:
        await client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=2,
            stop="\nUser:",
            seed=11,
            frequency_penalty=0.5,
            presence_penalty=-0.5,
            logit_bias={"7": -100},
            logprobs=True,
            top_logprobs=2,
            user="end-user-1",
            extra_body={"top_k": 40, "repetition_penalty": 1.1},
        )
        await client.completions.create(model=MODEL_ID, prompt="x", max_tokens=1, stop=["a", "b"], logprobs=3)
    chat, completion = synthetic_worker.jobs
    assert (chat.stop, chat.seed, chat.top_k, chat.repetition_penalty) == (["\nUser:"], 11, 40, 1.1)
    assert (chat.frequency_penalty, chat.presence_penalty, chat.logit_bias) == (0.5, -0.5, {"7": -100.0})
    assert (chat.logprobs, chat.top_logprobs, chat.temperature, chat.top_p) == (True, 2, 1.0, 1.0)
    assert (completion.stop, completion.logprobs, completion.top_logprobs) == (["a", "b"], True, 3)


async def test_include_usage_sends_usage_as_its_own_last_chunk_with_empty_choices(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    key, _ = await issue_key()
    async with openai_client(gateway_url, key) as client:
        stream = await client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"request_id": "req_usage_chunk"},
        )
        chunks = [chunk async for chunk in stream]
    *content, finish, usage = chunks
    assert all(c.usage is None and len(c.choices) == 1 for c in [*content, finish])
    assert finish.choices[0].finish_reason == "length"
    assert usage.choices == [] and usage.usage is not None and usage.usage.completion_tokens == 3
    assert {c.id for c in chunks} == {"chatcmpl-req_usage_chunk"} and len({c.created for c in chunks}) == 1
    assert len({c.system_fingerprint for c in chunks}) == 1 and (chunks[0].system_fingerprint or "").startswith("fp_")


async def test_v1_models_lists_the_catalog(gateway_url: str) -> None:
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        listed = (await http.get("/v1/models")).json()
    async with openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key="unused", max_retries=0) as client:
        models = [model.id async for model in client.models.list()]
    assert models == [m["id"] for m in listed["data"]] and MODEL_ID in models
