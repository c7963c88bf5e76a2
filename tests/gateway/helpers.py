"""What the gateway's tests share beyond the fixtures: a tool as OpenAI's `tools` takes it, and a reply calling it
(the tool-call tests and the several-choices tests both stream it)."""

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
CALL = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}'
"""A model's reply calling WEATHER, as the worker's tool grammar makes it write one."""
