"""Structured outputs: the `response_format` a request may set, and the grammar a worker enforces for it.

The gateway and the worker compile a format with the same function (`grammar_of`), so a schema the gateway
admitted is one the worker can enforce, and one the engine refuses is a 400 before any swarm time is spent. The
engine is llguidance (docs/structured-outputs.md says why): it needs no torch, so the gateway compiles too.

`json_object` constrains the reply to one JSON object; `json_schema` to a JSON value that the schema accepts.
With `strict: true` every keyword must be one the engine enforces, so the reply always validates against the
schema, and a keyword it cannot enforce is refused by name. Without `strict`, such keywords are ignored (the
reply still parses and follows the rest of the schema), as OpenAI treats a non-strict schema as guidance.
"""

import json
import re
from collections.abc import Iterator
from typing import Annotated, Any, Final, Literal

from llguidance import LLMatcher, LLParserLimits
from pydantic import BaseModel, ConfigDict, Field, StrictBool

MAX_SCHEMA_BYTES: Final = 64 * 1024
"""The largest schema (as compact JSON) a request may carry: it travels on the job, and every worker compiles it."""
MAX_SCHEMA_DEPTH: Final = 64
"""The deepest nesting of objects and arrays a schema may have: deeper ones are no real reply's shape, and would
exhaust a recursive walk (Python's JSON encoder, the engine's compiler)."""
SCHEMA_NAME_PATTERN: Final = r"^[A-Za-z0-9_-]{1,64}$"
"""OpenAI's rule for `json_schema.name`."""
PARSER_LIMITS: Final = LLParserLimits(max_grammar_size=500_000, max_lexer_states=100_000)
"""Bounds on what one schema may grow into, so a schema built to be expensive (huge enums, nested counts) is
refused at admission rather than slowing every step of a worker."""

_OBJECT_SCHEMA: Final = {"type": "object"}
LAYOUT: Final = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""The reply's JSON is laid out as Python's json.dumps does, the layout models have seen most: no other
whitespace between tokens, so a model cannot spend its max_tokens on blank space and leave the value unclosed."""
_SUBSCHEMA_MAPS: Final = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
"""Keywords whose value maps names to subschemas: the names are the caller's, never keywords."""
_REFUSED_KEYS = re.compile(r"Unimplemented keys: \[(.*)\]")


class TextFormat(BaseModel):
    """Plain text: the default, no constraint."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    """Any one JSON object."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["json_object"]


class JsonSchemaSpec(BaseModel):
    """OpenAI's `json_schema` object: a named schema, enforced token by token."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True)

    name: str = Field(pattern=SCHEMA_NAME_PATTERN, description="1-64 letters, digits, _ or -")
    description: str | None = Field(default=None, max_length=4096, description="What the reply is for")
    schema_: dict[str, Any] = Field(
        default_factory=dict,
        alias="schema",
        description="A JSON Schema (draft 2020-12 keywords); absent or {} allows any JSON value",
    )
    strict: StrictBool | None = Field(
        default=None,
        description="true: every keyword is enforced, so the reply validates against the schema, and a schema "
        "with a keyword the engine cannot enforce is refused (400); false or absent: such keywords are ignored",
    )


class JsonSchemaFormat(BaseModel):
    """A reply that is JSON accepted by the given schema."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]
"""What `response_format` may be, as OpenAI defines it."""


class SchemaRefused(ValueError):
    """The engine cannot compile the format; `where` is a JSON pointer into the schema where it can tell."""

    def __init__(self, reason: str, where: str = "") -> None:
        self.reason, self.where = reason, where
        super().__init__(f"{reason} (at {where or '/'})" if where else reason)


def grammar_of(response_format: JsonObjectFormat | JsonSchemaFormat) -> str:
    """The llguidance grammar for the format, checked by compiling it; raises `SchemaRefused` if it cannot be."""
    if isinstance(response_format, JsonObjectFormat):
        return schema_grammar(_OBJECT_SCHEMA, strict=True)
    return schema_grammar(response_format.json_schema.schema_, strict=bool(response_format.json_schema.strict))


def schema_grammar(schema: dict[str, Any], *, strict: bool) -> str:
    """The llguidance grammar for one JSON schema (see the module docstring for `strict`), checked by compiling
    it; raises `SchemaRefused`, naming where in the schema when the engine says which keyword it refused."""
    if (depth := _depth(schema)) > MAX_SCHEMA_DEPTH:
        raise SchemaRefused(f"the schema nests {depth} levels deep; at most {MAX_SCHEMA_DEPTH} are accepted")
    text = json.dumps(schema, separators=(",", ":"))  # as text: the engine takes no integer past 64 bits as a value
    size = len(text)
    if size > MAX_SCHEMA_BYTES:
        raise SchemaRefused(f"the schema is {size} bytes as JSON; at most {MAX_SCHEMA_BYTES} are accepted")
    try:
        options = LAYOUT if strict else {**LAYOUT, "lenient": True}
        grammar = LLMatcher.grammar_from_json_schema(text, overrides=options)  # type: ignore[arg-type]
    except ValueError as exc:  # the schema (or an option) is not a JSON object
        raise SchemaRefused(f"the schema cannot be read: {exc}") from exc
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, None, limits=PARSER_LIMITS)
    if is_error:
        raise SchemaRefused(_first_line(messages[0]), _where(schema, messages[0]))
    return grammar


def _depth(value: object) -> int:
    """How deep objects and arrays nest in `value`, counted without recursion (the value may be arbitrarily deep)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        node, depth = pending.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_SCHEMA_DEPTH:  # past the cap the answer is already "too deep"
            pending.extend((child, depth + 1) for child in children)
    return deepest


def _first_line(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(lines[:4])[:300] or "the grammar engine refused the schema"


def _where(schema: dict[str, Any], message: str) -> str:
    """Where in the schema the first keyword an "Unimplemented keys" message names is used, if it is one."""
    refused = _REFUSED_KEYS.search(message)
    if refused is None:
        return ""
    names = set(json.loads(f"[{refused.group(1)}]"))
    return next((pointer for pointer, key in _keywords(schema, "") if key in names), "")


def _keywords(schema: object, pointer: str) -> Iterator[tuple[str, str]]:
    """(JSON pointer, keyword) for each keyword of each subschema, depth first."""
    if isinstance(schema, list):
        for i, item in enumerate(schema):
            yield from _keywords(item, f"{pointer}/{i}")
        return
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        here = f"{pointer}/{_escape(key)}"
        yield here, key
        if key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                yield from _keywords(sub, f"{here}/{_escape(name)}")
        elif isinstance(value, dict | list) and key not in ("enum", "const", "default", "examples"):
            yield from _keywords(value, here)


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")
