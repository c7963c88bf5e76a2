"""llguidance, xgrammar and outlines-core side by side, on SmolLM2's 49,152-token byte-level BPE vocabulary.

For each engine that imports here: the one-off cost of taking in the vocabulary, the time to compile each
typical schema, the time to compute one step's token mask while walking a valid document token by token
(median and p95 over every step of every typical schema; the document must be accepted to the end), and which
JSON Schema features compile at all (a feature an engine silently ignores is not caught here: the coverage
row says "compiles", not "enforces"). docs/structured-outputs.md holds the numbers and the choice.

The tokenizer is the converted SmolLM2 checkpoint's (`far-mesh models convert`, or any run of
bench/bench_structured_outputs.py, writes it); another tokenizer.json may be named as the first argument.
The project's environment carries only the chosen engine; to compare all three, make a scratch environment:
    python3.11 -m venv /tmp/gcmp && /tmp/gcmp/bin/pip install llguidance outlines-core tokenizers
    /tmp/gcmp/bin/pip install --no-deps xgrammar apache-tvm-ffi   # xgrammar needs torch and transformers>=4.38
    /tmp/gcmp/bin/pip install transformers numpy pydantic
    echo $PWD/.venv/lib/python3.11/site-packages > /tmp/gcmp/lib/python3.11/site-packages/zz_torch.pth  # torch
    /tmp/gcmp/bin/python bench/compare_grammar_engines.py
Engines that do not import are skipped.
"""

import array
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

DEFAULT_TOKENIZER = (
    Path(__file__).resolve().parents[1] / ".cache" / "far-mesh" / "models" / "smollm2-135m-instruct" / "tokenizer.json"
)

TYPICAL: list[tuple[str, dict[str, Any], Any]] = [
    (
        "person",
        {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer", "minimum": 0},
                "email": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["name", "age", "email", "tags"],
            "additionalProperties": False,
        },
        {"name": "Ada Lovelace", "age": 36, "email": "ada@example.org", "tags": ["math", "engines", "poetry"]},
    ),
    (
        "order",
        {
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
                            "quantity": {"type": "integer", "minimum": 1, "maximum": 100},
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
        {
            "order_id": "ABC-123456",
            "status": "shipped",
            "items": [
                {"sku": "widget-7", "quantity": 3, "price": 9.99},
                {"sku": "gadget-42", "quantity": 1, "price": 120.5},
            ],
            "notes": None,
        },
    ),
    (
        "tree ($ref, recursive)",
        {
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
        {"label": "root", "children": [{"label": "left", "children": []}, {"label": "right", "children": []}]},
    ),
    (
        "extraction (OpenAI strict style)",
        {
            "type": "object",
            "properties": {
                "title": {"type": "string"},
                "authors": {"type": "array", "items": {"type": "string"}},
                "year": {"type": "integer"},
                "summary": {"type": "string"},
                "keywords": {"type": "array", "items": {"type": "string"}},
                "peer_reviewed": {"type": "boolean"},
            },
            "required": ["title", "authors", "year", "summary", "keywords", "peer_reviewed"],
            "additionalProperties": False,
        },
        {
            "title": "Distributed inference of large language models over consumer hardware",
            "authors": ["A. Borzunov", "D. Baranchuk", "T. Dettmers"],
            "year": 2023,
            "summary": "Serving a model's blocks from many small servers, with fault tolerance and load balancing.",
            "keywords": ["inference", "swarm", "pipeline parallelism"],
            "peer_reviewed": True,
        },
    ),
]
"""(name, schema, a valid instance): what callers typically send, and a document to walk token by token."""

COVERAGE: dict[str, dict[str, Any]] = {
    "enum / const": {"type": "object", "properties": {"a": {"enum": [1, "x", None]}, "b": {"const": "k"}}},
    "anyOf": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
    "oneOf": {"oneOf": [{"type": "integer"}, {"type": "boolean"}]},
    "allOf": {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}}, {"required": ["a"]}]},
    "$ref + $defs (recursive)": TYPICAL[2][1],
    "string pattern": {"type": "string", "pattern": "^[a-z]+-[0-9]{2,4}$"},
    "minLength / maxLength": {"type": "string", "minLength": 2, "maxLength": 5},
    "format: date-time": {"type": "string", "format": "date-time"},
    "format: email": {"type": "string", "format": "email"},
    "format: uuid": {"type": "string", "format": "uuid"},
    "integer minimum / maximum": {"type": "integer", "minimum": -5, "maximum": 500},
    "exclusiveMinimum (number)": {"type": "number", "exclusiveMinimum": 0},
    "multipleOf": {"type": "integer", "multipleOf": 5},
    "minItems / maxItems": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3},
    "prefixItems": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False},
    "uniqueItems": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
    "additionalProperties: schema": {"type": "object", "additionalProperties": {"type": "integer"}},
    "patternProperties": {"type": "object", "patternProperties": {"^x-": {"type": "string"}}},
    "minProperties / maxProperties": {"type": "object", "minProperties": 1, "maxProperties": 2},
    "propertyNames": {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"}},
    "if / then / else": {"if": {"type": "integer"}, "then": {"minimum": 0}, "else": {"type": "string"}},
    "not": {"not": {"type": "string"}},
    "dependentRequired": {"type": "object", "dependentRequired": {"a": ["b"]}},
    "type list [string, null]": {"type": ["string", "null"]},
}
"""JSON Schema features, one small schema each."""


def byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte-level BPE writes each byte as one printable character: the printable Latin-1 bytes stand
    for themselves and the others are shifted past 255, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            alphabet[byte] = chr(byte)
        else:
            alphabet[byte] = chr(256 + shifted)
            shifted += 1
    return alphabet


def token_bytes(tokenizer_json: str) -> tuple[list[bytes], list[int]]:
    """Each token id's bytes (a special token's text as its bytes) and the special tokens' ids, for the engines
    that take a vocabulary as bytes rather than as a tokenizer.json."""
    spec = json.loads(tokenizer_json)
    to_byte = {char: byte for byte, char in byte_level_alphabet().items()}
    vocab: dict[str, int] = spec["model"]["vocab"]
    specials = {added["id"]: added["content"] for added in spec["added_tokens"] if added["special"]}
    table = [b""] * (max([*vocab.values(), *specials]) + 1)
    for text, token_id in vocab.items():
        table[token_id] = text.encode() if token_id in specials else bytes(to_byte[c] for c in text)
    for token_id, text in specials.items():
        table[token_id] = text.encode()
    return table, sorted(specials)


class Engine(Protocol):
    """What the comparison needs of an engine, behind one face."""

    name: str

    def compile(self, schema: dict[str, Any]) -> object: ...

    def walk(self, compiled: object, tokens: list[int]) -> list[float]:
        """Per-step mask seconds while consuming `tokens`; raises if a token is refused or the end not reached."""
        ...


class Refused(Exception):
    """The engine refused a schema or a token of a valid document."""


def _timed_steps(tokens: list[int], mask: Callable[[], None], allowed: Callable[[int], bool]) -> list[float]:
    times = []
    for token in tokens:
        started = time.perf_counter()
        mask()
        times.append(time.perf_counter() - started)
        if not allowed(token):
            raise Refused(f"token {token} refused")
    return times


class Llguidance:
    name = "llguidance"

    def __init__(self, tokenizer_json: str) -> None:
        import llguidance

        self._llg = llguidance
        self.tokenizer = llguidance.LLTokenizer(tokenizer_json)
        self.size = self.tokenizer.vocab_size

    def compile(self, schema: dict[str, Any]) -> object:
        grammar = self._llg.LLMatcher.grammar_from_json_schema(schema)
        error = self._llg.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error:
            raise Refused(error)
        return grammar

    def walk(self, compiled: object, tokens: list[int]) -> list[float]:
        matcher = self._llg.LLMatcher(self.tokenizer, str(compiled))
        state: dict[str, bytes] = {}

        def mask() -> None:
            state["mask"] = matcher.compute_bitmask()

        def allowed(token: int) -> bool:
            ok = bool(state["mask"][token // 8] >> (token % 8) & 1)
            return ok and matcher.consume_token(token)

        times = _timed_steps(tokens, mask, allowed)
        if not matcher.is_accepting():
            raise Refused("not complete at the end")
        return times


class Xgrammar:
    name = "xgrammar"

    def __init__(self, table: list[bytes], eos: list[int]) -> None:
        import xgrammar

        self._xgr = xgrammar
        info = xgrammar.TokenizerInfo(table, xgrammar.VocabType.RAW, vocab_size=len(table), stop_token_ids=eos)
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.size = len(table)

    def compile(self, schema: dict[str, Any]) -> object:
        try:
            return self.compiler.compile_json_schema(json.dumps(schema), strict_mode=True)
        except Exception as exc:  # xgrammar raises RuntimeError and others for schemas it does not support
            raise Refused(str(exc)) from exc

    def walk(self, compiled: object, tokens: list[int]) -> list[float]:
        matcher = self._xgr.GrammarMatcher(compiled)
        bitmask = self._xgr.allocate_token_bitmask(1, self.size)
        words = bitmask[0]

        def allowed(token: int) -> bool:
            ok = bool(int(words[token // 32]) >> (token % 32) & 1)
            return ok and matcher.accept_token(token)

        times = _timed_steps(tokens, lambda: matcher.fill_next_token_bitmask(bitmask), allowed)
        if not matcher.is_completed():
            raise Refused("not complete at the end")
        return times


class OutlinesCore:
    name = "outlines-core"

    def __init__(self, table: list[bytes], eos: list[int]) -> None:
        import outlines_core

        self._oc = outlines_core
        by_bytes: dict[bytes, list[int]] = {}
        for token_id, text in enumerate(table):
            if token_id not in eos and text:
                by_bytes.setdefault(text, []).append(token_id)
        self.vocabulary = outlines_core.Vocabulary(eos[0], by_bytes)
        self.size = len(table)

    def compile(self, schema: dict[str, Any]) -> object:
        try:
            regex = self._oc.json_schema.build_regex_from_schema(json.dumps(schema))
            return self._oc.Index(regex, self.vocabulary)
        except Exception as exc:  # outlines-core raises ValueError and others for what it does not support
            raise Refused(str(exc)) from exc

    def walk(self, compiled: object, tokens: list[int]) -> list[float]:
        guide = self._oc.Guide(compiled)
        words = array.array("i", [0] * ((self.size + 31) // 32))
        address, length = words.buffer_info()

        def allowed(token: int) -> bool:
            if not words[token // 32] >> (token % 32) & 1:
                return False
            guide.advance(token)
            return True

        times = _timed_steps(tokens, lambda: guide.write_mask_into(address, length, words.itemsize), allowed)
        if not guide.is_finished():
            raise Refused("not complete at the end")
        return times


def _engines(tokenizer_json: str) -> list[tuple[Engine, float]]:
    table, specials = token_bytes(tokenizer_json)
    eos = [specials[0]]  # <|endoftext|>: outlines-core takes one
    makers: list[Callable[[], Engine]] = [
        lambda: Llguidance(tokenizer_json),
        lambda: Xgrammar(table, eos),
        lambda: OutlinesCore(table, eos),
    ]
    engines = []
    for make in makers:
        started = time.perf_counter()
        try:
            engine = make()
        except ImportError as exc:
            print(f"skipped: {exc}")
            continue
        engines.append((engine, time.perf_counter() - started))
    return engines


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_TOKENIZER
    tokenizer_json = path.read_text()
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json)
    print(f"vocabulary: {tokenizer.get_vocab_size()} tokens ({path})\n")
    for engine, setup_s in _engines(tokenizer_json):
        print(f"== {engine.name}: vocabulary taken in {setup_s * 1000:.0f} ms")
        steps: list[float] = []
        for name, schema, instance in TYPICAL:
            tokens = tokenizer.encode(json.dumps(instance)).ids
            try:
                compiles = []
                for _ in range(3):  # the engines cache little across compiles of the same schema; keep the best
                    started = time.perf_counter()
                    compiled = engine.compile(schema)
                    compiles.append(time.perf_counter() - started)
                times = engine.walk(compiled, tokens)
            except Refused as exc:
                print(f"  {name}: REFUSED {str(exc)[:160]}")
                continue
            steps += times
            print(
                f"  {name}: compile {min(compiles) * 1000:.1f} ms, {len(tokens)} tokens, "
                f"mask median {statistics.median(times) * 1e6:.0f} us, max {max(times) * 1e6:.0f} us"
            )
        if steps:
            p95 = statistics.quantiles(steps, n=20)[-1]
            print(f"  all steps: median {statistics.median(steps) * 1e6:.0f} us, p95 {p95 * 1e6:.0f} us")
        refused = []
        for feature, schema in COVERAGE.items():
            try:
                engine.compile(schema)
            except Refused as exc:
                refused.append(f"{feature} ({str(exc).splitlines()[0][:100]})")
        print(f"  coverage: {len(COVERAGE) - len(refused)}/{len(COVERAGE)} compile")
        for line in refused:
            print(f"    refused: {line}")
        print()


if __name__ == "__main__":
    main()
