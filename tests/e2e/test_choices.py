"""n > 1 through the whole system (gateway, real workers, real swarm) with the openai package: a seeded request's
choices, each with its own index, finish_reason and logprobs, billed as the sum of their tokens with the prompt
once, and the same request streamed reassembling into the same choices."""

import openai
import pytest

from tests.fixtures.system import SystemUnderTest, assert_books_balance, the_ledger_session, wait_until_accounted

pytestmark = [pytest.mark.e2e, pytest.mark.swarm]


async def test_n_seeded_choices_are_billed_as_the_sum_of_their_tokens_and_stream_into_the_same_choices(
    e2e_system: SystemUnderTest,
) -> None:
    model = e2e_system.models[0].model_id
    request = {
        "model": model,
        "messages": [{"role": "user", "content": "Name a colour"}],
        "max_tokens": 8,
        "temperature": 1.0,
        "seed": 11,
    }
    async with openai.AsyncOpenAI(
        base_url=f"{e2e_system.url}/v1", api_key=e2e_system.system.api_key, max_retries=0, timeout=60
    ) as client:
        reply = await client.chat.completions.create(**request, n=3, logprobs=True)  # type: ignore[call-overload]
        stream = await client.chat.completions.create(**request, n=2, stream=True)  # type: ignore[call-overload]
        chunks = [chunk async for chunk in stream]

    assert [c.index for c in reply.choices] == [0, 1, 2]
    counts = [len(c.logprobs.content or []) if c.logprobs else 0 for c in reply.choices]
    for choice, count in zip(reply.choices, counts, strict=True):
        assert choice.finish_reason == ("length" if count == 8 else "stop")
    texts = [c.message.content for c in reply.choices]
    assert len(set(texts)) > 1, texts  # each choice draws its own tokens
    assert reply.usage is not None and reply.usage.completion_tokens == sum(counts) > 0

    streamed: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + (choice.delta.content or "")
    assert streamed == {0: texts[0], 1: texts[1]}  # the same seed: the same first two choices

    await wait_until_accounted(e2e_system.redis_url)
    session = await the_ledger_session(e2e_system.postgres_url, (reply.model_extra or {})["request_id"])
    assert session.row["prompt_tokens"] == reply.usage.prompt_tokens
    assert_books_balance(session, sum(counts))
