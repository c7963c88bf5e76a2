"""The official `openai` package, unchanged, against the gateway."""

from decimal import Decimal

import httpx
import openai
import pytest

from gateway.openai_api import ChatMessage, chat_prompt
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


async def test_a_failed_generation_is_an_api_error_for_the_openai_package(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    key, _ = await issue_key()
    async with openai_client(gateway_url, key) as client:
        with pytest.raises(openai.APIStatusError) as failed:
            await client.completions.create(model=MODEL_ID, prompt="fail please", max_tokens=5)
        assert failed.value.status_code == 502 and "no_route" in failed.value.message
        stream = await client.completions.create(model=MODEL_ID, prompt="fail again", max_tokens=5, stream=True)
        with pytest.raises(openai.APIError, match="no server holds block 2"):
            async for _ in stream:
                pass


async def test_openai_errors_keep_the_openai_shape(gateway_url: str, issue_key: IssueKey) -> None:
    key, _ = await issue_key()
    async with openai_client(gateway_url, key) as client:
        with pytest.raises(openai.UnprocessableEntityError) as invalid:
            await client.chat.completions.create(model=MODEL_ID, messages=[], max_tokens=2)
        assert invalid.value.body["field"] == "messages"  # type: ignore[index]
        with pytest.raises(openai.UnprocessableEntityError, match="stop sequences"):
            await client.completions.create(model=MODEL_ID, prompt="x", stop=["\n"])
        with pytest.raises(openai.NotFoundError):
            await client.completions.create(model="nobody/sells-this", prompt="x")
    async with openai_client(gateway_url, "fmk_wrong") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.completions.create(model=MODEL_ID, prompt="x")


async def test_v1_models_lists_the_catalog(gateway_url: str) -> None:
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        listed = (await http.get("/v1/models")).json()
    async with openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key="unused", max_retries=0) as client:
        models = [model.id async for model in client.models.list()]
    assert models == [m["id"] for m in listed["data"]] and MODEL_ID in models
