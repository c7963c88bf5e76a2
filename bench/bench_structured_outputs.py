"""The worker's cost of a response_format on the real model (SmolLM2-135M-Instruct, 49,152 tokens).

Prints, in one run:
- per-token worker CPU with a JSON-schema constraint against unconstrained decoding (target: at most 1.10x).
  The logits come from the real model run locally (its forward pass is the swarm's work and is not counted);
  what is timed is the worker's own part of a step, as `workers.generate._step` does it after the swarm
  answered: the sampler's choice (penalties, the grammar's mask, top_p, the matcher's advance) and the
  incremental decode. The two kinds of step take turns on the same logits, so the machine's load falls on both.
- the time to compile a typical schema (p95): the gateway's check at admission (`protocol.structured.grammar_of`)
  and the worker's matcher for the model's tokenizer (`workers.constraint.GrammarConstraint`).

Run: `.venv/bin/python bench/bench_structured_outputs.py` (the first run converts the model from its GGUF file:
about a minute). docs/structured-outputs.md holds the numbers.
"""

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mesh.gguf_checkpoint import ensure_checkpoint  # noqa: E402
from protocol.requests import SamplingOptions  # noqa: E402
from protocol.structured import JsonSchemaFormat, grammar_of  # noqa: E402
from workers.constraint import GrammarConstraint, grammar_tokenizer  # noqa: E402
from workers.detokenize import IncrementalDecoder  # noqa: E402
from workers.sampling import Sampler  # noqa: E402

STEPS = 200
COMPILE_ROUNDS = 40
TEMPERATURE = 0.7
SCHEMAS: dict[str, dict[str, Any]] = {
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "email": {"type": "string"},
            "hobbies": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["name", "age", "email", "hobbies"],
        "additionalProperties": False,
    },
    "order": {
        "type": "object",
        "properties": {
            "order_id": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{6}$"},
            "status": {"enum": ["pending", "shipped", "delivered"]},
            "items": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "sku": {"type": "string"},
                        "quantity": {"type": "integer", "minimum": 1},
                        "price": {"type": "number"},
                    },
                    "required": ["sku", "quantity", "price"],
                    "additionalProperties": False,
                },
            },
            "notes": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "required": ["order_id", "status", "items", "notes"],
        "additionalProperties": False,
    },
    "tree": {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "label": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
                "required": ["label", "children"],
                "additionalProperties": False,
            }
        },
        "$ref": "#/$defs/node",
    },
}
PROMPT = (
    "<|im_start|>system\nYou reply with JSON only.<|im_end|>\n<|im_start|>user\nDescribe a person: name, age, email "
    "and hobbies.<|im_end|>\n<|im_start|>assistant\n"
)


def _format(name: str) -> JsonSchemaFormat:
    return JsonSchemaFormat.model_validate(
        {"type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": True}}
    )


def _sampler(tokenizer: Any, constraint: GrammarConstraint | None, prompt_ids: list[int]) -> Sampler:
    return Sampler(
        SamplingOptions(),
        temperature=TEMPERATURE,
        top_p=0.9,
        seed_key="bench",
        prompt_ids=prompt_ids,
        decode=lambda ids: str(tokenizer.decode(list(ids))),
        constraint=constraint,
    )


def per_token(model: Any, tokenizer: Any, llg_tokenizer: Any, eos: frozenset[int]) -> None:
    """Constrained decoding driven by the real model; each step also times an unconstrained choice on the same
    logits (its token is discarded), so both kinds of step see the same numbers and the same machine."""
    prompt_ids = list(tokenizer(PROMPT)["input_ids"])
    constraint = GrammarConstraint(llg_tokenizer, grammar_of(_format("person")))
    constrained, free = _sampler(tokenizer, constraint, prompt_ids), _sampler(tokenizer, None, prompt_ids)
    decoders = (
        IncrementalDecoder(lambda ids: str(tokenizer.decode(list(ids)))),
        IncrementalDecoder(lambda ids: str(tokenizer.decode(list(ids)))),
    )
    timed: dict[str, list[float]] = {"constrained": [], "unconstrained": []}
    chosen: list[int] = []
    past, feed = None, torch.tensor([prompt_ids])
    with torch.inference_mode():
        for _ in range(STEPS):
            out = model(input_ids=feed, past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[0, -1].float()
            # the two kinds of step take turns going first, so neither always finds the caches the other warmed
            order = ("unconstrained", "constrained") if len(chosen) % 2 else ("constrained", "unconstrained")
            for kind in order:
                started = time.process_time()
                if kind == "constrained":
                    token_id = constrained.choose(logits)
                    decoders[0].push(token_id)
                else:
                    decoders[1].push(free.choose(logits))
                timed[kind].append(time.process_time() - started)
            if token_id in eos:
                break
            chosen.append(token_id)
            if constrained.grammar_complete:
                break
            feed = torch.tensor([[token_id]])
    text = tokenizer.decode(chosen)
    if constrained.grammar_complete:
        json.loads(text)  # the point of it all
    state = "complete, parses" if constrained.grammar_complete else f"cut at {STEPS} steps"
    print(f"reply ({len(chosen)} tokens, {state}): {text[:200]}")
    means = {kind: statistics.fmean(values) for kind, values in timed.items()}
    for kind, values in timed.items():
        print(
            f"  {kind:>13}: mean {means[kind] * 1e6:.0f} us/token, median {statistics.median(values) * 1e6:.0f} us "
            f"(CPU time of the worker's part of a step)"
        )
    print(f"  constrained / unconstrained: {means['constrained'] / means['unconstrained']:.2f}x (target <= 1.10x)")


def compile_times(llg_tokenizer: Any) -> None:
    for name in SCHEMAS:
        gateway, worker = [], []
        for _ in range(COMPILE_ROUNDS):
            started = time.perf_counter()
            grammar_of(_format(name))
            middle = time.perf_counter()
            GrammarConstraint(llg_tokenizer, grammar_of(_format(name)))
            gateway.append(middle - started)
            worker.append(time.perf_counter() - middle)
        p95 = {kind: statistics.quantiles(values, n=20)[-1] * 1000 for kind, values in (("g", gateway), ("w", worker))}
        print(f"  {name}: gateway compile p95 {p95['g']:.2f} ms, worker matcher p95 {p95['w']:.2f} ms")


def main() -> None:
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.set_num_threads(1)  # a worker's sampling runs on one of its pool's threads
    path = ensure_checkpoint(Path(os.environ.get("FAR_MESH_CACHE_DIR", REPO / ".cache" / "far-mesh")))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = LlamaForCausalLM.from_pretrained(path).eval()
    eos = frozenset({int(model.config.eos_token_id)})
    started = time.perf_counter()
    llg_tokenizer = grammar_tokenizer(tokenizer, vocab_size=int(model.config.vocab_size), eos_token_ids=eos)
    print(f"SmolLM2 ({len(tokenizer)} tokens): grammar tokenizer built in {time.perf_counter() - started:.2f} s")
    per_token(model, tokenizer, llg_tokenizer, eos)
    print("compile (typical schemas):")
    compile_times(llg_tokenizer)


if __name__ == "__main__":
    main()
