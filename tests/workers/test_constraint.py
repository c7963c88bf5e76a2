"""The grammar constraint on the tiny model's own tokenizer, without a swarm: random logits stand in for a model
that knows nothing, and the grammar alone must make its output valid JSON."""

import json
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
import torch
from llguidance import LLTokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from protocol.catalog import ModelSpec
from protocol.jobs import GenerateJob
from protocol.requests import SamplingOptions
from protocol.structured import JsonObjectFormat, JsonSchemaFormat, grammar_of
from protocol.tools import ToolUse, parameters_of, parse_calls, tool_grammar
from workers.constraint import GrammarConstraint, grammar_tokenizer, is_free_text, job_grammar
from workers.sampling import Sampler

VOCAB = 384
"""The tiny models' logits (their tokenizer has as many tokens)."""
EOS = 2
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["provider", "buyer"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
        "verified": {"type": "boolean"},
    },
    "required": ["name", "age", "role", "tags", "verified"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_models: tuple[ModelSpec, ...]) -> PreTrainedTokenizerFast:
    tokenizer: PreTrainedTokenizerFast = AutoTokenizer.from_pretrained(tiny_models[0].weights_source)
    return tokenizer


@pytest.fixture(scope="module")
def tokenizer(hf_tokenizer: PreTrainedTokenizerFast) -> LLTokenizer:
    return grammar_tokenizer(hf_tokenizer, vocab_size=VOCAB, eos_token_ids=frozenset({EOS}))


def person_format(schema: dict[str, Any] = PERSON) -> JsonSchemaFormat:
    return JsonSchemaFormat.model_validate(
        {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}
    )


def sample(
    sampler: Sampler, constraint: GrammarConstraint, logits_of: Callable[[int], torch.Tensor], most: int = 300
) -> list[int]:
    """Token ids until the grammar is complete, the sampler picks EOS, or `most` steps."""
    chosen: list[int] = []
    for step in range(most):
        token_id = sampler.choose(logits_of(step))
        if token_id == EOS:
            break
        chosen.append(token_id)
        if constraint.complete:
            break
    return chosen


def random_logits(seed: int) -> Callable[[int], torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return lambda step: torch.randn(VOCAB, generator=generator) * 4


def make_sampler(
    hf_tokenizer: PreTrainedTokenizerFast, constraint: GrammarConstraint, temperature: float, **options: Any
) -> Sampler:
    return Sampler(
        SamplingOptions(**options),
        temperature=temperature,
        top_p=1.0,
        seed_key="req-constraint",
        prompt_ids=[],
        decode=hf_tokenizer.decode,
        constraint=constraint,
    )


@pytest.mark.parametrize("seed", range(4))
def test_random_logits_under_a_strict_schema_give_json_that_validates(
    hf_tokenizer: PreTrainedTokenizerFast, tokenizer: LLTokenizer, seed: int
) -> None:
    constraint = GrammarConstraint(tokenizer, grammar_of(person_format()))
    chosen = sample(make_sampler(hf_tokenizer, constraint, temperature=1.0), constraint, random_logits(seed))
    assert constraint.complete
    text = hf_tokenizer.decode(chosen)
    jsonschema.validate(json.loads(text), PERSON)
    assert text.startswith('{"name": "')  # json.dumps' layout: no stray whitespace to spend tokens on


def test_json_object_under_greedy_decoding_is_one_object(
    hf_tokenizer: PreTrainedTokenizerFast, tokenizer: LLTokenizer
) -> None:
    constraint = GrammarConstraint(tokenizer, grammar_of(JsonObjectFormat(type="json_object")))
    logits = torch.zeros(VOCAB)
    logits[hf_tokenizer.convert_tokens_to_ids("}")] = 5.0  # the model would rather close everything at once
    chosen = sample(make_sampler(hf_tokenizer, constraint, temperature=0.0), constraint, lambda step: logits)
    assert json.loads(hf_tokenizer.decode(chosen)) == {}


def test_logit_bias_cannot_lift_a_token_the_grammar_bans(
    hf_tokenizer: PreTrainedTokenizerFast, tokenizer: LLTokenizer
) -> None:
    constraint = GrammarConstraint(tokenizer, grammar_of(JsonObjectFormat(type="json_object")))
    banned = hf_tokenizer.convert_tokens_to_ids("a")
    sampler = make_sampler(hf_tokenizer, constraint, temperature=0.0, logit_bias={str(banned): 100.0})
    assert sampler.choose(torch.zeros(VOCAB)) != banned


def test_a_recovering_run_replays_the_tokens_on_the_stream_into_the_grammar(
    hf_tokenizer: PreTrainedTokenizerFast, tokenizer: LLTokenizer
) -> None:
    first = GrammarConstraint(tokenizer, grammar_of(person_format()))
    whole = sample(make_sampler(hf_tokenizer, first, temperature=1.0), first, random_logits(7))
    resumed = GrammarConstraint(tokenizer, grammar_of(person_format()))
    sampler = make_sampler(hf_tokenizer, resumed, temperature=1.0)
    sampler.replay(whole[:10])
    generator = random_logits(7)
    for _ in range(10):
        generator(0)  # the logits the first run's first ten steps used
    rest = sample(sampler, resumed, generator)
    assert whole[:10] + rest == whole


def test_logits_padded_past_the_tokenizer_are_never_chosen(tokenizer: LLTokenizer) -> None:
    constraint = GrammarConstraint(tokenizer, grammar_of(JsonObjectFormat(type="json_object")))
    logits = torch.zeros(VOCAB + 64)
    logits[VOCAB:] = 50.0
    assert torch.isinf(constraint.mask(logits)[VOCAB:]).all()


WEATHER_TOOLS = ToolUse.model_validate(
    {
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string", "maxLength": 10}, "days": {"enum": [1, 2, 3]}},
                        "required": ["city", "days"],
                        "additionalProperties": False,
                    },
                    "strict": True,
                },
            },
            {"type": "function", "function": {"name": "now"}},
        ],
        "tool_choice": "required",
    }
)


@pytest.mark.parametrize("seed", range(3))
def test_random_logits_under_required_tools_call_an_offered_function_with_valid_arguments(
    hf_tokenizer: PreTrainedTokenizerFast, tokenizer: LLTokenizer, seed: int
) -> None:
    constraint = GrammarConstraint(tokenizer, tool_grammar(WEATHER_TOOLS))
    chosen = sample(make_sampler(hf_tokenizer, constraint, temperature=1.0), constraint, random_logits(seed))
    calls = parse_calls(hf_tokenizer.decode(chosen))
    assert constraint.complete and calls
    parameters = {tool.function.name: parameters_of(tool.function) for tool in WEATHER_TOOLS.tools}
    for name, arguments in calls:
        jsonschema.validate(json.loads(arguments), parameters[name])


def test_with_auto_the_reply_is_a_call_or_text_that_does_not_open_an_object(
    hf_tokenizer: PreTrainedTokenizerFast, tokenizer: LLTokenizer
) -> None:
    auto = WEATHER_TOOLS.model_copy(update={"tool_choice": "auto"})
    brace = hf_tokenizer.convert_tokens_to_ids("{")
    for first_logit, is_call in ((20.0, True), (-20.0, False)):
        constraint = GrammarConstraint(tokenizer, tool_grammar(auto))
        text = hf_tokenizer.decode(
            sample(make_sampler(hf_tokenizer, constraint, temperature=1.0), constraint, opening(brace, first_logit))
        )
        assert (parse_calls(text) is not None) is is_call and text.startswith("{") is is_call


def opening(token_id: int, first_logit: float) -> Callable[[int], torch.Tensor]:
    """Random logits, but the first step's logit of `token_id` is `first_logit`."""
    random = random_logits(1)

    def logits_of(step: int) -> torch.Tensor:
        logits = random(step)
        if step == 0:
            logits[token_id] = first_logit
        return logits

    return logits_of


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"response_format": {"type": "json_object"}},
        {"tool_use": WEATHER_TOOLS.model_dump()},
        {"tool_use": WEATHER_TOOLS.model_copy(update={"tool_choice": "none"}).model_dump()},
    ],
)
def test_a_job_is_free_text_exactly_when_it_has_no_grammar(fields: dict[str, Any]) -> None:
    job = GenerateJob.model_validate(
        {"request_id": "req-1", "model_id": "m", "prompt": "hi", "max_tokens": 4, "temperature": 0, "top_p": 1}
        | {"price_per_token_far": "0.0001", "enqueued_at": 0.0}
        | fields
    )
    assert is_free_text(job) is (job_grammar(job) is None)
