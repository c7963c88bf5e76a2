"""Held-out schemas and tool definitions through the real model (SmolLM2-135M-Instruct): every reply must parse
and validate. Each request is built as the gateway builds it (`gateway.openai_api.ChatCompletionRequest`: its
tools offered in the system turn), formatted by the model's chat template, and decoded by the worker's own
sampler and grammar (`workers.constraint.job_grammar`) at the gateway's chat defaults (temperature 1, top_p 1).
The logits come from the model run locally, which computes what the swarm would.

None of these schemas or tools appears in the tests or the other benchmarks. A reply cut by max_tokens is
counted and shown apart (it cannot be complete JSON; docs/structured-outputs.md says so).

Run: `.venv/bin/python bench/check_structured_outputs.py`; exits 1 if a complete reply fails to validate.
"""

import json
import os
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.openai_api import ChatCompletionRequest  # noqa: E402
from mesh.gguf_checkpoint import ensure_checkpoint  # noqa: E402
from protocol.jobs import GenerateJob  # noqa: E402
from protocol.structured import JsonSchemaFormat  # noqa: E402
from protocol.tools import ToolUse, parameters_of, parse_calls  # noqa: E402
from workers.constraint import GrammarConstraint, grammar_tokenizer, job_grammar  # noqa: E402
from workers.sampling import Sampler  # noqa: E402

MAX_TOKENS = 256


def _schema(name: str, schema: dict[str, Any], question: str) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": question}],
        "response_format": {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}},
    }


def _tools(question: str, tools: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    offered = [{"type": "function", "function": {**tool, "strict": True}} for tool in tools]
    return {"messages": [{"role": "user", "content": question}], "tools": offered, **fields}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


HELD_OUT: dict[str, dict[str, Any]] = {
    "meeting": _schema(
        "meeting",
        _object(
            {
                "title": {"type": "string", "maxLength": 60},
                "start": {"type": "string", "format": "date-time"},
                "minutes": {"type": "integer", "minimum": 5, "maximum": 480},
                "attendees": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 5},
            }
        ),
        "Plan a project kick-off meeting next Monday morning.",
    ),
    "sentiment": _schema(
        "sentiment",
        _object(
            {
                "label": {"enum": ["positive", "neutral", "negative"]},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            }
        ),
        "Classify: 'The delivery was late but the support team was wonderful.'",
    ),
    "recipe": _schema(
        "recipe",
        _object(
            {
                "name": {"type": "string", "maxLength": 40},
                "servings": {"type": "integer", "minimum": 1, "maximum": 12},
                "ingredients": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 6,
                    "items": _object({"item": {"type": "string", "maxLength": 30}, "grams": {"type": "integer"}}),
                },
                "vegetarian": {"type": "boolean"},
            }
        ),
        "Give me a simple pancake recipe.",
    ),
    "address": _schema(
        "address",
        _object(
            {
                "street": {"type": "string", "maxLength": 50},
                "postcode": {"type": "string", "pattern": "^[0-9]{5}$"},
                "city": {"type": "string", "maxLength": 30},
                "country_code": {"type": "string", "pattern": "^[A-Z]{2}$"},
                "apartment": {"anyOf": [{"type": "string", "maxLength": 10}, {"type": "null"}]},
            }
        ),
        "Write a postal address in Berlin as JSON.",
    ),
    "comments": _schema(
        "comments",
        {
            "$defs": {
                "comment": _object(
                    {
                        "author": {"type": "string", "maxLength": 20},
                        "text": {"type": "string", "maxLength": 80},
                        "replies": {"type": "array", "items": {"$ref": "#/$defs/comment"}, "maxItems": 2},
                    }
                )
            },
            "$ref": "#/$defs/comment",
        },
        "Write a short comment thread about a new phone.",
    ),
    "weather call (required)": _tools(
        "What's the weather like in Lisbon right now?",
        [
            {
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": _object(
                    {"city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["celsius", "fahrenheit"]}}
                ),
            }
        ],
        tool_choice="required",
    ),
    "calculator (auto)": _tools(
        "What is 17 times 23? Use the calculator.",
        [
            {
                "name": "multiply",
                "description": "Multiply two integers",
                "parameters": _object({"a": {"type": "integer"}, "b": {"type": "integer"}}),
            }
        ],
    ),
    "calendar (named, one call)": _tools(
        "Book a dentist appointment on 3 March at 10:00 and tell me the forecast.",
        [
            {
                "name": "create_event",
                "description": "Add an event to the calendar",
                "parameters": _object(
                    {
                        "title": {"type": "string", "maxLength": 40},
                        "date": {"type": "string", "format": "date"},
                        "time": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"},
                    }
                ),
            },
            {"name": "forecast", "parameters": _object({"city": {"type": "string", "maxLength": 40}})},
        ],
        tool_choice={"type": "function", "function": {"name": "create_event"}},
        parallel_tool_calls=False,
    ),
}


def _job(name: str, body: dict[str, Any]) -> tuple[GenerateJob, list[dict[str, str]]]:
    """The job and chat turns the gateway would make of `body`."""
    request = ChatCompletionRequest.model_validate({"model": "smollm2-135m-instruct", **body})
    tool_use = request.tool_use()
    turns = [{"role": m.role, "content": m.text} for m in request.prompt_messages(tool_use)]
    job = GenerateJob(
        request_id=f"check-{abs(hash(name)) % 10**8}",
        model_id="smollm2-135m-instruct",
        prompt="chat",
        max_tokens=MAX_TOKENS,
        temperature=1.0,
        top_p=1.0,
        price_per_token_far=Decimal(0),
        enqueued_at=0.0,
        response_format=request.response_format,
        tool_use=tool_use,
        seed=7,
    )
    return job, turns


def _validate(job: GenerateJob, text: str) -> str:
    """What the reply is, or raises if it does not validate."""
    if isinstance(job.response_format, JsonSchemaFormat):
        jsonschema.validate(json.loads(text), job.response_format.json_schema.schema_)
        return "valid JSON"
    use: ToolUse | None = job.tool_use
    assert use is not None
    calls = parse_calls(text)
    if calls is None:
        assert not use.forced and not text.startswith("{"), "a forced call that is not one"
        return "text"
    parameters = {tool.function.name: parameters_of(tool.function) for tool in use.tools}
    for name, arguments in calls:
        jsonschema.validate(json.loads(arguments), parameters[name])
    return f"{len(calls)} valid call(s)"


def main() -> int:
    from transformers import AutoTokenizer, LlamaForCausalLM

    path = ensure_checkpoint(Path(os.environ.get("FAR_MESH_CACHE_DIR", REPO / ".cache" / "far-mesh")))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = LlamaForCausalLM.from_pretrained(path).eval()
    eos = frozenset({int(model.config.eos_token_id)})
    llg_tokenizer = grammar_tokenizer(tokenizer, vocab_size=int(model.config.vocab_size), eos_token_ids=eos)
    failures = cut = 0
    for name, body in HELD_OUT.items():
        job, turns = _job(name, body)
        prompt_ids = [int(i) for i in tokenizer.apply_chat_template(turns, add_generation_prompt=True)]
        grammar = job_grammar(job)
        assert grammar is not None
        constraint = GrammarConstraint(llg_tokenizer, grammar)
        sampler = Sampler(
            job,
            temperature=job.temperature,
            top_p=job.top_p,
            seed_key=job.request_id,
            prompt_ids=prompt_ids,
            decode=lambda ids: str(tokenizer.decode(list(ids))),
            constraint=constraint,
        )
        chosen: list[int] = []
        past, feed = None, torch.tensor([prompt_ids])
        with torch.inference_mode():
            for _ in range(MAX_TOKENS):
                out = model(input_ids=feed, past_key_values=past, use_cache=True)
                past = out.past_key_values
                token_id = sampler.choose(out.logits[0, -1].float())
                if token_id in eos:
                    break
                chosen.append(token_id)
                if sampler.grammar_complete:
                    break
                feed = torch.tensor([[token_id]])
        text = tokenizer.decode(chosen, skip_special_tokens=True)
        if len(chosen) >= MAX_TOKENS and not sampler.grammar_complete:
            cut += 1
            print(f"CUT   {name}: {len(chosen)} tokens, max_tokens reached: {text[:120]!r}")
            continue
        try:
            what = _validate(job, text)
        except (AssertionError, ValueError, jsonschema.ValidationError) as exc:
            failures += 1
            print(f"FAIL  {name}: {type(exc).__name__}: {str(exc)[:160]} in {text[:200]!r}")
            continue
        print(f"ok    {name}: {what} in {len(chosen)} tokens: {text[:150]!r}")
    complete = len(HELD_OUT) - cut
    print(f"\n{complete - failures}/{complete} complete replies parse and validate; {cut} cut by max_tokens")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
