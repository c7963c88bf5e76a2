"""The request's own controls on a real swarm: stop sequences, seeds, logprobs (tests/workers/test_generate.py
covers the job's lifecycle)."""

import json

import jsonschema
import pytest
import redis.asyncio as aioredis

from protocol import keys
from protocol.catalog import ModelSpec
from protocol.events import DoneEvent, TokenEvent, encode_event
from protocol.money import cost_of
from protocol.structured import JsonSchemaFormat
from protocol.tools import ToolUse, parse_calls
from tests.fixtures.stops import stop_across_three_tokens
from tests.fixtures.workers import (
    PRICE_FAR,
    RunningFleet,
    decode_locally,
    enqueue,
    make_job,
    reference_continuation,
    usage_records,
    wait_for_end,
)

pytestmark = pytest.mark.swarm

PROMPT = "The mesh streams tokens to"


async def test_a_stop_spanning_three_tokens_ends_the_stream_before_it_billed_for_the_tokens_generated(
    two_server_fleet: RunningFleet, redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...]
) -> None:
    model = tiny_models[0]
    reference = reference_continuation(model, PROMPT, 40)
    stop, tokens_to_stop = stop_across_three_tokens(model, reference)
    full_text = decode_locally(model, reference)
    job = make_job(model, prompt=PROMPT, max_tokens=40, stop=["never appears \x00", stop])
    await enqueue(redis_url, job)
    events = await wait_for_end(redis, job.request_id)

    tokens = [e for e in events if isinstance(e, TokenEvent)]
    done = events[-1]
    assert isinstance(done, DoneEvent) and (done.status, done.finish_reason) == ("completed", "stop")
    assert "".join(t.token for t in tokens) == full_text[: full_text.index(stop)]
    assert [t.token_id for t in tokens] == reference[:tokens_to_stop]
    assert done.tokens_generated == tokens_to_stop and done.total_cost_far == cost_of(tokens_to_stop, PRICE_FAR)
    (usage,) = await usage_records(redis, job.request_id)
    assert usage.tokens_generated == tokens_to_stop


async def test_the_same_seed_gives_the_same_sampled_tokens_for_different_request_ids(
    two_server_fleet: RunningFleet, redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...]
) -> None:
    jobs = [make_job(tiny_models[0], temperature=1.0, max_tokens=16, seed=seed) for seed in (42, 42, 43)]
    for job in jobs:
        await enqueue(redis_url, job)
    runs = []
    for job in jobs:
        events = await wait_for_end(redis, job.request_id)
        runs.append([e.token_id for e in events if isinstance(e, TokenEvent)])
    assert runs[0] == runs[1] and len(runs[0]) > 0
    assert runs[0] != runs[2]


async def test_logprobs_carry_the_chosen_tokens_log_probability_and_the_top_alternatives(
    two_server_fleet: RunningFleet, redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...]
) -> None:
    job = make_job(tiny_models[0], max_tokens=6, logprobs=True, top_logprobs=3)
    await enqueue(redis_url, job)
    tokens = [e for e in await wait_for_end(redis, job.request_id) if isinstance(e, TokenEvent)]
    assert tokens
    for token in tokens:
        assert token.logprob is not None and token.logprob <= 0.0
        assert token.top_logprobs is not None and len(token.top_logprobs) == 3
        best = token.top_logprobs[0]
        assert best.token_id == token.token_id and best.logprob == pytest.approx(token.logprob)  # greedy
        assert [t.logprob for t in token.top_logprobs] == sorted((t.logprob for t in token.top_logprobs), reverse=True)


async def test_a_random_weights_model_under_a_strict_schema_writes_json_that_validates_and_is_billed_as_usual(
    two_server_fleet: RunningFleet, redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...]
) -> None:
    """The tiny model knows no JSON at all: the grammar alone makes its reply parse and validate, and the reply
    ends where the value closes, not at max_tokens."""
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "blocks": {"type": "integer", "minimum": 1, "maximum": 32},
            "role": {"enum": ["provider", "buyer"]},
            "peers": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
        },
        "required": ["name", "blocks", "role", "peers"],
        "additionalProperties": False,
    }
    response_format = JsonSchemaFormat.model_validate(
        {"type": "json_schema", "json_schema": {"name": "node", "schema": schema, "strict": True}}
    )
    job = make_job(tiny_models[0], temperature=1.0, seed=5, max_tokens=200, response_format=response_format)
    await enqueue(redis_url, job)
    events = await wait_for_end(redis, job.request_id)

    tokens = [e for e in events if isinstance(e, TokenEvent)]
    done = events[-1]
    assert isinstance(done, DoneEvent) and (done.status, done.finish_reason) == ("completed", "stop")
    jsonschema.validate(json.loads("".join(t.token for t in tokens)), schema)
    assert done.tokens_generated == len(tokens) < 200 and done.total_cost_far == cost_of(len(tokens), PRICE_FAR)
    (usage,) = await usage_records(redis, job.request_id)
    assert usage.tokens_generated == len(tokens)


async def test_a_random_weights_model_offered_tools_with_tool_choice_required_calls_one_with_valid_arguments(
    two_server_fleet: RunningFleet, redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...]
) -> None:
    parameters = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 8}, "days": {"enum": [1, 2, 3]}},
        "required": ["city", "days"],
        "additionalProperties": False,
    }
    tool_use = ToolUse.model_validate(
        {
            "tools": [{"type": "function", "function": {"name": "forecast", "parameters": parameters, "strict": True}}],
            "tool_choice": "required",
            "parallel_tool_calls": False,
        }
    )
    job = make_job(tiny_models[0], temperature=1.0, seed=3, max_tokens=200, tool_use=tool_use)
    await enqueue(redis_url, job)
    events = await wait_for_end(redis, job.request_id)

    done = events[-1]
    assert isinstance(done, DoneEvent) and done.finish_reason == "stop"
    ((name, arguments),) = parse_calls("".join(e.token for e in events if isinstance(e, TokenEvent))) or []
    assert name == "forecast"
    jsonschema.validate(json.loads(arguments), parameters)


async def test_n_choices_are_written_one_after_another_and_a_run_that_finds_some_on_the_stream_continues_them(
    two_server_fleet: RunningFleet, redis: aioredis.Redis, redis_url: str, tiny_models: tuple[ModelSpec, ...]
) -> None:
    fields = {"n": 3, "seed": 5, "temperature": 1.0, "max_tokens": 6}
    whole = make_job(tiny_models[0], **fields)
    await enqueue(redis_url, whole)
    events = await wait_for_end(redis, whole.request_id)
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.choices is not None
    assert [c.tokens_generated for c in done.choices] == [sum(t.choice == i for t in tokens) for i in range(3)]
    assert [t.choice for t in tokens] == sorted(t.choice or 0 for t in tokens)  # one after another
    assert len({tuple(t.token_id for t in tokens if t.choice == i) for i in range(3)}) > 1
    (usage,) = await usage_records(redis, whole.request_id)
    assert usage.tokens_generated == done.tokens_generated == len(tokens)
    assert usage.total_cost_far == cost_of(len(tokens), PRICE_FAR)

    # A run died after choice 0 and the first token of choice 1: its successor continues choice 1, then writes 2.
    resumed = make_job(tiny_models[0], **fields)
    cut = next(i for i, t in enumerate(tokens) if t.choice == 1) + 1
    for token in tokens[:cut]:
        copy = token.model_copy(update={"request_id": resumed.request_id})
        await redis.xadd(keys.token_stream(resumed.request_id), encode_event(copy))  # type: ignore[arg-type]
    await enqueue(redis_url, resumed)
    again = await wait_for_end(redis, resumed.request_id)
    assert [(t.choice, t.index, t.token_id) for t in again if isinstance(t, TokenEvent)] == [
        (t.choice, t.index, t.token_id) for t in tokens
    ]
    assert isinstance(again[-1], DoneEvent) and again[-1].choices == done.choices
