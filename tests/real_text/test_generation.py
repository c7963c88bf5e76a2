"""What only a real model can show, through the shared `smollm2_swarm` (SmolLM2-135M-Instruct split 0:15 / 15:30
over two servers) and the package's worker fleet (`smollm2_fleet`, tests/real_text/conftest.py): greedy tokens
equal to the same weights run locally, the chat template of the GGUF file, stop sequences on words the model says,
seeded sampling that repeats, and logprobs that are the model's own (#27 item 3).

Every generation is a few tokens: the swarm is the cost, and it is shared by every test here."""

import math
from typing import Any

import pytest
import redis.asyncio as aioredis
import torch

from mesh.gguf_checkpoint import SMOLLM2, gguf_path
from mesh.gguf_file import read_gguf
from protocol.catalog import ModelSpec
from protocol.events import DoneEvent, TokenEvent
from protocol.jobs import ChatTurn
from tests.fixtures.workers import (
    RunningFleet,
    enqueue,
    local_model,
    make_job,
    reference_continuation,
    wait_for_end,
)

pytestmark = pytest.mark.swarm

PROMPT = "The capital of France is"
"""SmolLM2 continues it greedily with " Paris.\\n\\nThe answer is: ..." (a sentence, then a line of its own)."""


async def run(
    redis_url: str, redis: aioredis.Redis, model: ModelSpec, **fields: Any
) -> tuple[list[TokenEvent], DoneEvent]:
    job = make_job(model, **{"prompt": PROMPT, **fields})
    await enqueue(redis_url, job)
    *tokens, done = await wait_for_end(redis, job.request_id)
    assert isinstance(done, DoneEvent) and done.status == "completed", done
    assert all(isinstance(t, TokenEvent) for t in tokens)
    return [t for t in tokens if isinstance(t, TokenEvent)], done


def text(tokens: list[TokenEvent]) -> str:
    return "".join(t.token for t in tokens)


async def test_greedy_tokens_through_the_swarm_are_the_local_models_and_say_paris(
    smollm2_fleet: RunningFleet, smollm2: ModelSpec, redis_url: str, redis: aioredis.Redis
) -> None:
    tokens, done = await run(redis_url, redis, smollm2, max_tokens=6, temperature=0.0)

    assert [t.token_id for t in tokens] == reference_continuation(smollm2, PROMPT, 6)
    assert text(tokens).startswith(" Paris.") and done.finish_reason == "length"


async def test_a_chat_is_prefilled_with_the_ggufs_own_template_and_answered(
    smollm2_fleet: RunningFleet, smollm2: ModelSpec, redis_url: str, redis: aioredis.Redis
) -> None:
    turns = [ChatTurn(role="user", content="What is the capital of France?")]
    tokens, done = await run(redis_url, redis, smollm2, messages=turns, max_tokens=16, temperature=0.0)

    template = read_gguf(gguf_path(SMOLLM2)).metadata["tokenizer.chat_template"]
    tokenizer, _ = local_model(smollm2)
    prompt = tokenizer.apply_chat_template(
        [t.model_dump() for t in turns], chat_template=template, add_generation_prompt=True, tokenize=True
    )
    assert done.prompt_tokens == len(prompt)
    assert "<|im_start|>assistant\n" in tokenizer.decode(prompt)
    # The reply ends at <|im_end|>, the template's end of turn and the model's end of sequence.
    assert text(tokens) == "The capital of France is Paris." and done.finish_reason == "stop"


async def test_a_stop_sequence_on_a_word_the_model_says_ends_the_reply_before_it(
    smollm2_fleet: RunningFleet, smollm2: ModelSpec, redis_url: str, redis: aioredis.Redis
) -> None:
    tokens, done = await run(redis_url, redis, smollm2, max_tokens=12, temperature=0.0, stop=["answer"])

    assert text(tokens) == " Paris.\n\nThe " and done.finish_reason == "stop"


async def test_the_same_seed_samples_the_same_reply_and_another_seed_another(
    smollm2_fleet: RunningFleet, smollm2: ModelSpec, redis_url: str, redis: aioredis.Redis
) -> None:
    def sampled(seed: int) -> Any:
        return run(redis_url, redis, smollm2, max_tokens=8, temperature=1.0, top_p=1.0, seed=seed)

    first, second, other = [[t.token_id for t in (await sampled(seed))[0]] for seed in (7, 7, 8)]

    assert first == second
    assert other != first


async def test_logprobs_are_the_models_own_and_sum_to_at_most_one(
    smollm2_fleet: RunningFleet, smollm2: ModelSpec, redis_url: str, redis: aioredis.Redis
) -> None:
    tokens, _ = await run(redis_url, redis, smollm2, max_tokens=4, temperature=0.0, logprobs=True, top_logprobs=5)

    tokenizer, model = local_model(smollm2)
    ids = tokenizer(PROMPT)["input_ids"] + [t.token_id for t in tokens]
    with torch.no_grad():
        local = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    for index, token in enumerate(tokens):
        assert token.logprob is not None and token.top_logprobs is not None
        expected = float(local[len(ids) - len(tokens) - 1 + index, token.token_id])
        assert token.logprob == pytest.approx(expected, abs=1e-3)
        top = token.top_logprobs
        assert len(top) == 5 and top[0].token_id == token.token_id  # greedy: the most likely token
        assert [t.logprob for t in top] == sorted((t.logprob for t in top), reverse=True)
        assert all(t.logprob <= 0 for t in top) and sum(math.exp(t.logprob) for t in top) <= 1 + 1e-4
    assert math.exp(tokens[0].logprob or -math.inf) > 0.5  # the model is sure of " Paris"
