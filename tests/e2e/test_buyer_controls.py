"""A buyer's controls through the clients buyers use: the `openai` package and LangChain's `ChatOpenAI`, against
the whole system (gateway, real workers, real swarm): stop sequences, seeds, logprobs, usage, refusals."""

import uuid
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
from langchain_core.messages import AIMessageChunk
from langchain_openai import ChatOpenAI

from gateway.openai_api import ChatMessage, chat_prompt
from tests.fixtures.stops import stop_across_three_tokens
from tests.fixtures.system import SystemUnderTest, assert_books_balance, the_ledger_session, wait_until_accounted
from tests.fixtures.workers import decode_locally, reference_continuation

pytestmark = [pytest.mark.e2e, pytest.mark.swarm]

QUESTION = "Name three things the mesh streams"


@pytest.fixture
async def client(e2e_system: SystemUnderTest) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{e2e_system.url}/v1", api_key=e2e_system.system.api_key, max_retries=0, timeout=60
    ) as client:
        yield client


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """LangChain caches one HTTP client per process, bound to the first test's event loop: give it this test's."""
    async with httpx.AsyncClient(timeout=60) as http:
        yield http


def chat_openai(sut: SystemUnderTest, http: httpx.AsyncClient, **options: object) -> ChatOpenAI:
    return ChatOpenAI(
        model=sut.models[0].model_id,
        base_url=f"{sut.url}/v1",
        api_key=sut.system.api_key,  # type: ignore[arg-type]
        max_retries=0,
        http_async_client=http,
        **options,  # type: ignore[arg-type]
    )


def greedy_chat_reference(sut: SystemUnderTest, max_tokens: int) -> list[int]:
    prompt = chat_prompt([ChatMessage(role="user", content=QUESTION)])
    return reference_continuation(sut.models[0], prompt, max_tokens)


async def test_a_stop_spanning_tokens_through_the_openai_client_ends_before_it_and_bills_what_was_generated(
    e2e_system: SystemUnderTest, client: openai.AsyncOpenAI
) -> None:
    model = e2e_system.models[0]
    reference = greedy_chat_reference(e2e_system, 40)
    stop, tokens_to_stop = stop_across_three_tokens(model, reference)
    full_text = decode_locally(model, reference)
    stream = await client.chat.completions.create(
        model=model.model_id,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=40,
        temperature=0,
        stop=[stop],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full_text[: full_text.index(stop)] and stop not in text
    *_, finish, usage_chunk = chunks
    assert finish.choices[0].finish_reason == "stop" and usage_chunk.choices == []
    assert usage_chunk.usage is not None and usage_chunk.usage.completion_tokens == tokens_to_stop

    await wait_until_accounted(e2e_system.redis_url)
    session = await the_ledger_session(e2e_system.postgres_url, (usage_chunk.model_extra or {})["request_id"])
    assert_books_balance(session, tokens_to_stop)


async def test_langchain_stops_at_a_stop_string_and_reports_usage(
    e2e_system: SystemUnderTest, http: httpx.AsyncClient
) -> None:
    model = e2e_system.models[0]
    reference = greedy_chat_reference(e2e_system, 40)
    stop, tokens_to_stop = stop_across_three_tokens(model, reference)
    full_text = decode_locally(model, reference)
    llm = chat_openai(e2e_system, http, temperature=0, max_tokens=40, stream_usage=True)

    reply = await llm.ainvoke(QUESTION, stop=[stop])
    assert reply.content == full_text[: full_text.index(stop)]
    assert reply.response_metadata["finish_reason"] == "stop"
    assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] == tokens_to_stop

    streamed: AIMessageChunk | None = None
    async for chunk in llm.astream(QUESTION, stop=[stop]):
        streamed = chunk if streamed is None else streamed + chunk  # type: ignore[assignment]
    assert streamed is not None and streamed.content == reply.content
    assert streamed.usage_metadata is not None and streamed.usage_metadata["output_tokens"] == tokens_to_stop


async def test_the_same_seed_reproduces_a_sampled_completion_and_another_seed_does_not(
    e2e_system: SystemUnderTest, client: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    async def sample(seed: int) -> str:
        completion = await client.completions.create(
            model=e2e_system.models[0].model_id,
            prompt="The mesh streams",
            max_tokens=16,
            temperature=1.0,
            seed=seed,
            extra_body={"request_id": f"seed-{uuid.uuid4().hex[:12]}"},
        )
        return completion.choices[0].text

    first, again, other = await sample(1234), await sample(1234), await sample(4321)
    assert first == again and first != other
    llm = chat_openai(e2e_system, http, temperature=1.0, max_tokens=12, seed=99)
    assert (await llm.ainvoke(QUESTION)).content == (await llm.ainvoke(QUESTION)).content


async def test_logprobs_come_back_per_token_with_the_top_alternatives(
    e2e_system: SystemUnderTest, client: openai.AsyncOpenAI
) -> None:
    completion = await client.chat.completions.create(
        model=e2e_system.models[0].model_id,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    choice = completion.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None and completion.usage is not None
    content = choice.logprobs.content
    assert len(content) == completion.usage.completion_tokens
    assert "".join(entry.token for entry in content) == choice.message.content
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)  # greedy: the best one was chosen


async def test_a_parameter_the_swarm_cannot_honour_is_a_400_for_both_clients(
    e2e_system: SystemUnderTest, client: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(
            model=e2e_system.models[0].model_id, messages=[{"role": "user", "content": "Hi"}], service_tier="flex"
        )
    assert refused.value.param == "service_tier"
    llm = chat_openai(e2e_system, http, model_kwargs={"web_search_options": {}})
    with pytest.raises(openai.BadRequestError) as refused_too:
        await llm.ainvoke("Hi")
    assert refused_too.value.param == "web_search_options" and refused_too.value.code == "unsupported_parameter"
