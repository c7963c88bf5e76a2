import json
from typing import Any

import pytest

from protocol.structured import SchemaRefused
from protocol.tools import ToolUse, call_schema, calls_text, check_tools, parse_calls, tool_grammar


def use(*functions: dict[str, Any], **fields: Any) -> ToolUse:
    return ToolUse.model_validate({"tools": [{"type": "function", "function": f} for f in functions], **fields})


def test_a_strict_tools_refused_keyword_is_named_with_its_tool() -> None:
    tools = use({"name": "a"}, {"name": "b", "strict": True, "parameters": {"type": "object", "not": {}}})
    with pytest.raises(SchemaRefused) as refused:
        tool_grammar(tools)
    assert refused.value.where == "/tools/1/function/parameters/not"
    # without strict the keyword is ignored
    assert tool_grammar(use({"name": "b", "parameters": {"type": "object", "not": {}}}))


def test_a_named_choice_must_be_among_the_tools_and_two_tools_of_one_name_are_one_function() -> None:
    with pytest.raises(SchemaRefused, match="not among the tools"):
        check_tools(use({"name": "a"}, tool_choice={"type": "function", "function": {"name": "b"}}))
    check_tools(use({"name": "a"}, {"name": "a", "parameters": {"type": "object"}}))


def test_a_named_choice_and_no_parallel_calls_narrow_the_call_schema() -> None:
    tools = use(
        {"name": "a"},
        {"name": "b"},
        tool_choice={"type": "function", "function": {"name": "b"}},
        parallel_tool_calls=False,
    )
    calls = call_schema(tools)["properties"]["tool_calls"]
    assert calls["maxItems"] == 1 and calls["items"]["properties"]["name"] == {"const": "b"}
    assert tools.forced and use({"name": "a"}, tool_choice="required").forced and not use({"name": "a"}).forced


def test_calls_read_back_what_they_were_written_as() -> None:
    written = calls_text([("f", '{"x": 1}'), ("g", "{}")])
    assert parse_calls(written) == [("f", '{"x": 1}'), ("g", "{}")]
    assert json.loads(calls_text([("f", "not json")])) == {"tool_calls": [{"name": "f", "arguments": "not json"}]}
    for text in ("plain text", '{"tool_calls": [{"name": "f", "argu', '{"other": 1}', '{"tool_calls": []}'):
        assert parse_calls(text) is None
