"""The body of a generation request, from a prompt or from chat messages.

The native route takes one prompt; chat messages become that prompt with the template the gateway's
OpenAI-compatible chat route uses (one `Role: content` line per message, then the `Assistant:` cue), so
`chat(messages)` on either route generates the same tokens.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from farlabs.provider import provider_json

ROLE_NAMES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}

Message = Mapping[str, str]
"""A chat message: {"role": "system" | "user" | "assistant" | ..., "content": "..."}."""


def new_request_id() -> str:
    """A fresh idempotency key. The client picks it, so a retried POST re-attaches instead of running again."""
    return f"req_{uuid.uuid4().hex}"


def chat_prompt(messages: Sequence[Message]) -> str:
    lines = []
    for message in messages:
        role = message.get("role", "")
        if role not in ROLE_NAMES:
            raise ValueError(f"unknown chat role {role!r}; use one of {sorted(ROLE_NAMES)}")
        lines.append(f"{ROLE_NAMES[role]}: {message.get('content', '')}\n")
    return "".join(lines) + "Assistant:"


def native_body(
    prompt: str | Sequence[Message],
    *,
    request_id: str,
    model: str | None,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    response_format: Mapping[str, Any] | None = None,
    provider: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON of POST /inference/generate; options left None take the gateway's defaults."""
    body: dict[str, Any] = {
        "prompt": prompt if isinstance(prompt, str) else chat_prompt(prompt),
        "request_id": request_id,
    }
    for name, value in (
        ("model_id", model),
        ("max_tokens", max_tokens),
        ("temperature", temperature),
        ("top_p", top_p),
        ("response_format", response_format),
        ("provider", None if provider is None else provider_json(provider)),
    ):
        if value is not None:
            body[name] = value
    return body


def openai_body(
    prompt: str | Sequence[Message],
    *,
    request_id: str,
    model: str,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    response_format: Mapping[str, Any] | None = None,
    provider: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON of a streaming POST /v1/chat/completions: `request_id` travels as the gateway's extra field."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True, "request_id": request_id}
    options = (("max_tokens", max_tokens), ("temperature", temperature), ("top_p", top_p))
    extras = (("response_format", response_format), ("provider", None if provider is None else provider_json(provider)))
    for name, value in (*options, *extras):
        if value is not None:
            body[name] = value
    return body
