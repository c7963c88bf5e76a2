"""OpenAI-compatible endpoints, so the official `openai` package works against the gateway unchanged.

POST /v1/chat/completions and /v1/completions (streaming or not) and GET /v1/models. They run the same jobs as
POST /inference/generate and bill the same way; responses carry `request_id` and `cost_far` as extra fields,
and `usage` carries `cost_far` too. Extra request fields: `request_id` (idempotency) and `user_wallet`.

Chat messages become one prompt with this template, one line per message, then the cue for the reply:

    System: <content>
    User: <content>
    Assistant: <content>
    Assistant:

Parameters the swarm cannot honour are refused (n > 1, stop, logprobs, tools) rather than ignored; other
OpenAI parameters unknown here (seed, user, penalties...) are accepted and have no effect.
"""

import asyncio
import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.auth import authenticate
from gateway.bodies import read_model
from gateway.errors import BadGateway, GatewayTimeout, InvalidRequest
from gateway.inference import relay_response
from gateway.relay import Entry, Subscription
from gateway.sse import DEADLINE, sse_event, watch_disconnect
from gateway.state import GatewayState, state_of
from gateway.submission import Accepted, submit
from protocol import keys
from protocol.catalog import ModelId
from protocol.requests import MAX_NEW_TOKENS, GenerateRequest, RequestId
from protocol.wallet import Wallet

ROLE_NAMES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
DONE_SENTINEL = b"data: [DONE]\n\n"
DEFAULT_CHAT_TOKENS = 256
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's own default for /v1/completions


class _OpenAIBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: ModelId
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1, description="Only one choice per request is supported")
    stop: None = Field(default=None, description="Not supported: must be absent or null")
    logprobs: Literal[False] | None = Field(default=None, description="Not supported")
    request_id: RequestId | None = Field(default=None, description="Far Mesh extra: idempotency key")
    user_wallet: Wallet | None = Field(default=None, description="Far Mesh extra: must match the API key's wallet")

    @field_validator("stop", mode="before")
    @classmethod
    def _no_stop(cls, value: object) -> None:
        if value is not None:
            raise ValueError("stop sequences are not supported; omit stop")
        return None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart]

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatCompletionRequest(_OpenAIBody):
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    tools: None = Field(default=None, description="Not supported")


class CompletionRequest(_OpenAIBody):
    prompt: str | list[str] = Field(description="A string, or a list holding exactly one string")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("exactly one prompt per request is supported")
        return value


def chat_prompt(messages: list[ChatMessage]) -> str:
    """The module docstring's template; the trailing cue makes the model answer as the assistant."""
    return "".join(f"{ROLE_NAMES[m.role]}: {m.text}\n" for m in messages) + "Assistant:"


def _generate_request(body: _OpenAIBody, prompt: str, max_tokens: int, prompt_field: str) -> GenerateRequest:
    try:
        return GenerateRequest(
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            user_wallet=body.user_wallet,
            request_id=body.request_id,
            model_id=body.model,
        )
    except ValidationError as exc:
        raise InvalidRequest.from_validation(exc, renames={"prompt": prompt_field}) from None


class _Shape:
    """How one endpoint's responses look: object names, id prefix, where the text goes."""

    def __init__(self, *, chat: bool, accepted: Accepted) -> None:
        self.chat = chat
        self.request_id = accepted.request_id
        self.model = accepted.spec.model_id
        self.created = int(time.time())
        self.id = ("chatcmpl-" if chat else "cmpl-") + accepted.request_id

    def _envelope(self, obj: str, choice: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "request_id": self.request_id,
            **extra,
        }

    def chunk(self, entry: Entry) -> bytes:
        event = json.loads(entry.data)
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        if entry.kind == "token":
            if self.chat:
                delta: dict[str, str] = {"content": event["token"]}
                if event["index"] == 0:
                    delta["role"] = "assistant"
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
            else:
                choice = {"index": 0, "text": event["token"], "logprobs": None, "finish_reason": None}
            return sse_event(
                json.dumps(self._envelope(obj, choice, cost_far=event["cost_far"])).encode(), entry.entry_id
            )
        if entry.kind == "done":
            extra: dict[str, Any] = {"delta": {}} if self.chat else {"text": "", "logprobs": None}
            choice = {"index": 0, "finish_reason": _finish_reason(event), **extra}
            body = self._envelope(
                obj, choice, cost_far=event["total_cost_far"], usage=_usage(event), status=event["status"]
            )
            return sse_event(json.dumps(body).encode(), entry.entry_id) + DONE_SENTINEL
        return sse_event(json.dumps({"error": event["error"], "request_id": self.request_id}).encode(), entry.entry_id)

    def complete(self, text: str, done: dict[str, Any]) -> dict[str, Any]:
        finish_reason = _finish_reason(done)
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return self._envelope(
            "chat.completion" if self.chat else "text_completion",
            choice,
            usage=_usage(done),
            cost_far=done["total_cost_far"],
            status=done["status"],
        )


def _finish_reason(done: dict[str, Any]) -> str:
    return "length" if done["finish_reason"] == "length" else "stop"  # a cancelled request stopped early


def _usage(done: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = done["prompt_tokens"], done["tokens_generated"]
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost_far": done["total_cost_far"],
    }


async def _collect(state: GatewayState, accepted: Accepted, request: Request) -> tuple[str, dict[str, Any]] | None:
    """The whole generated text and the done event; None when the client left first. Errors become 502, a
    request still running at GATEWAY_STREAM_DEADLINE_S is cancelled and answered 504."""
    slot = accepted.slot
    deadline_s = state.settings.gateway_stream_deadline_s
    state.inflight.attach(slot)
    sub: Subscription | None = None
    tokens: list[str] = []
    final: Entry | None = None
    try:
        sub = await state.relay.subscribe(keys.token_stream(accepted.request_id))
        deadline = asyncio.get_running_loop().call_later(deadline_s, sub.end, DEADLINE)
        watcher = asyncio.create_task(watch_disconnect(request.receive, sub.interrupt))
        try:
            final = await _final_entry(sub, tokens)
        finally:
            deadline.cancel()
            watcher.cancel()
    finally:
        if sub is not None:
            state.relay.unsubscribe(sub)
        timed_out = sub is not None and sub.ended_by == DEADLINE
        if timed_out:
            await asyncio.shield(state.inflight.cancel(slot.lease, "stream deadline passed"))
        client_left = sub is None or sub.interrupted
        await asyncio.shield(
            state.inflight.release(slot, finished=final is not None or timed_out, client_left=client_left)
        )
    if timed_out:
        raise GatewayTimeout(f"the request was still running after {deadline_s:g} s, the gateway's limit; cancelled")
    if final is None:
        return None
    event = json.loads(final.data)
    if final.kind == "error":
        raise BadGateway(f"generation failed ({event['error']['code']}): {event['error']['message']}")
    return "".join(tokens), event


async def _final_entry(sub: Subscription, tokens: list[str]) -> Entry | None:
    """Read `sub` to its final entry, adding each token's text to `tokens`; None when it ended before that."""
    while True:
        batch = await sub.next_batch()
        if batch is None:
            return None
        for entry in batch:
            if entry.final:
                return entry
            tokens.append(json.loads(entry.data)["token"])


async def _complete(request: Request, *, chat: bool) -> Response:
    state = state_of(request)
    key = await authenticate(request)
    limit = state.settings.gateway_max_body_bytes
    cap = state.settings.gateway_max_tokens
    if chat:
        chat_body = await read_model(request, ChatCompletionRequest, limit)
        max_tokens = chat_body.max_completion_tokens or chat_body.max_tokens or min(DEFAULT_CHAT_TOKENS, cap)
        prompt_field = "messages"
        generate = _generate_request(chat_body, chat_prompt(chat_body.messages), max_tokens, prompt_field)
        body: _OpenAIBody = chat_body
    else:
        completion_body = await read_model(request, CompletionRequest, limit)
        prompt = completion_body.prompt if isinstance(completion_body.prompt, str) else completion_body.prompt[0]
        prompt_field = "prompt"
        max_tokens = completion_body.max_tokens or min(DEFAULT_COMPLETION_TOKENS, cap)
        generate = _generate_request(completion_body, prompt, max_tokens, prompt_field)
        body = completion_body
    accepted = await submit(state, generate, key, prompt_field=prompt_field)
    shape = _Shape(chat=chat, accepted=accepted)
    if body.stream:
        return relay_response(state, accepted.slot, render=shape.chunk)
    collected = await _collect(state, accepted, request)
    if collected is None:
        return Response(status_code=499)  # nobody is listening any more
    text, done = collected
    return JSONResponse(shape.complete(text, done), headers={"x-request-id": accepted.request_id})


async def chat_completions(request: Request) -> Response:
    return await _complete(request, chat=True)


async def completions(request: Request) -> Response:
    return await _complete(request, chat=False)


async def list_models(request: Request) -> JSONResponse:
    catalog = state_of(request).settings.catalog
    data = [
        {
            "id": spec.model_id,
            "object": "model",
            "created": 0,
            "owned_by": "far-mesh",
            "price_per_token_far": format(catalog.price_of(spec), "f"),
        }
        for spec in catalog.models
    ]
    return JSONResponse({"object": "list", "data": data})
