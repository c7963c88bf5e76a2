"""Tool calls: the functions a chat request offers, the format a model calls them in, and its grammar.

The worker enforces tool calls the way it enforces `response_format` (`protocol.structured`): the grammar below
masks every step, so a call always names an offered function and its arguments validate against that
function's parameters (with `strict`; without it, keywords the engine cannot enforce are ignored).

The format is documented here because the models' chat templates of this transformers version take no tools:
the tools are described in a system turn (`tools_prompt`), and the model calls them by replying with one JSON
object, `{"tool_calls": [{"name": ..., "arguments": {...}}]}` (`CALL_KEY`). Earlier calls in the conversation
are written back in the same format (`calls_text`), so the model sees its own convention. With
`tool_choice: "auto"` the reply is either such an object or text that does not start with `{`; with
`"required"` or a named function it must be a call; with `"none"` tools are neither described nor callable.
"""

import json
from typing import Any, Final, Literal

from llguidance import LLMatcher
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from protocol.structured import LAYOUT, PARSER_LIMITS, SCHEMA_NAME_PATTERN, SchemaRefused, schema_grammar

MAX_TOOLS: Final = 128
"""OpenAI's own limit on the functions of one request."""
CALL_KEY: Final = "tool_calls"
_EMPTY_PARAMETERS: Final = {"type": "object", "properties": {}, "additionalProperties": False}


class FunctionSpec(BaseModel):
    """A function the model may call: its name, what it does, and a JSON Schema of its arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=SCHEMA_NAME_PATTERN, description="1-64 letters, digits, _ or -")
    description: str | None = Field(default=None, max_length=4096)
    parameters: dict[str, Any] | None = Field(
        default=None, description="A JSON Schema of the arguments object; absent: the function takes none"
    )
    strict: StrictBool | None = Field(
        default=None, description="true: every keyword of parameters is enforced, or the request is refused"
    )


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=SCHEMA_NAME_PATTERN)


class NamedToolChoice(BaseModel):
    """Call exactly this function."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ToolUse(BaseModel):
    """A chat request's tools as the job carries them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tools: list[Tool] = Field(min_length=1, max_length=MAX_TOOLS)
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: StrictBool = True

    @property
    def active(self) -> bool:
        """Whether the model may call a tool at all (not with tool_choice "none")."""
        return self.tool_choice != "none"

    @property
    def forced(self) -> bool:
        """Whether the reply must be a call (tool_choice "required" or a named function)."""
        return self.tool_choice != "none" and self.tool_choice != "auto"

    def callable(self) -> list[FunctionSpec]:
        """The functions the reply may call: the named one, else all."""
        if isinstance(self.tool_choice, NamedToolChoice):
            name = self.tool_choice.function.name
            return [tool.function for tool in self.tools if tool.function.name == name]
        return [tool.function for tool in self.tools]


def parameters_of(function: FunctionSpec) -> dict[str, Any]:
    return function.parameters if function.parameters is not None else _EMPTY_PARAMETERS


def check_tools(use: ToolUse) -> None:
    """Refuse what cannot be enforced, naming the tool: each function's parameters compile on their own (so a
    strict function's refused keyword is reported as such), and a named choice is among the tools. Two tools of
    one name are one function whose arguments may follow either's parameters."""
    names = [tool.function.name for tool in use.tools]
    if isinstance(use.tool_choice, NamedToolChoice) and use.tool_choice.function.name not in names:
        raise SchemaRefused(f"tool_choice names {use.tool_choice.function.name!r}, which is not among the tools")
    for i, tool in enumerate(use.tools):
        try:
            schema_grammar(parameters_of(tool.function), strict=bool(tool.function.strict))
        except SchemaRefused as exc:
            raise SchemaRefused(exc.reason, f"/tools/{i}/function/parameters{exc.where}") from None


def call_schema(use: ToolUse) -> dict[str, Any]:
    """The JSON Schema of a reply that calls tools: one call, or several with parallel_tool_calls."""
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": function.name}, "arguments": parameters_of(function)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for function in use.callable()
    ]
    items: dict[str, Any] = calls[0] if len(calls) == 1 else {"anyOf": calls}
    array: dict[str, Any] = {"type": "array", "items": items, "minItems": 1}
    if not use.parallel_tool_calls:
        array["maxItems"] = 1
    return {"type": "object", "properties": {CALL_KEY: array}, "required": [CALL_KEY], "additionalProperties": False}


def tool_grammar(use: ToolUse) -> str:
    """The llguidance grammar of a reply under `use` (which must be active): a call, or with "auto" either a
    call or text that does not start with "{". Raises `SchemaRefused` as `check_tools` does."""
    check_tools(use)
    lenient = not all(function.strict for function in use.callable())
    schema = {**call_schema(use), "x-guidance": {**LAYOUT, "lenient": lenient}}
    call = f"call: %json {json.dumps(schema)}"
    lark = f"start: call\n{call}\n" if use.forced else f"start: TEXT | call\nTEXT: /[^{{](.|\\n)*/\n{call}\n"
    grammar = LLMatcher.grammar_from_lark(lark)
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, None, limits=PARSER_LIMITS)
    if is_error:
        raise SchemaRefused(" ".join(messages[0].split())[:300])
    return grammar


def tools_prompt(use: ToolUse) -> str:
    """The system text that offers the tools to the model, in the documented format."""
    functions = [
        {"name": f.name, "description": f.description or "", "parameters": parameters_of(f)} for f in use.callable()
    ]
    how = (
        "You must call a function now."
        if use.forced
        else "Either answer in text, or call functions instead of answering."
    )
    many = "one or more calls" if use.parallel_tool_calls else "exactly one call"
    return (
        f"You can call these functions:\n{json.dumps(functions)}\n{how} To call, reply with only a JSON object "
        f'holding {many}: {{"{CALL_KEY}": [{{"name": "<function name>", "arguments": {{<arguments>}}}}]}}. '
        "The results come back in tool messages."
    )


def calls_text(calls: list[tuple[str, str]]) -> str:
    """An assistant turn's earlier calls, (name, arguments as JSON text), written as the model would write them."""
    written = []
    for name, arguments in calls:
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError:
            parsed = arguments  # a client's own malformed arguments: shown as they were sent
        written.append({"name": name, "arguments": parsed})
    return json.dumps({CALL_KEY: written})


def parse_calls(text: str) -> list[tuple[str, str]] | None:
    """The calls in a reply, (name, arguments as compact JSON text); None when the reply is text, not a call."""
    if not text.startswith("{"):
        return None
    try:
        reply = json.loads(text)
    except json.JSONDecodeError:
        return None  # cut short (max_tokens, a stop sequence): not a call the client could run
    calls = reply.get(CALL_KEY) if isinstance(reply, dict) else None
    if not isinstance(calls, list) or not calls:
        return None
    parsed = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return None
        parsed.append((call["name"], json.dumps(call.get("arguments", {}))))
    return parsed
