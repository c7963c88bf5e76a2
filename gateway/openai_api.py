"""OpenAI-compatible endpoints, so the official `openai` package (and LangChain's `ChatOpenAI`) work unchanged.

POST /v1/chat/completions and /v1/completions (streaming or not) and GET /v1/models. They run the same jobs as
POST /inference/generate and bill the same way; responses carry `request_id` and `cost_far` as extra fields,
and `usage` carries `cost_far` too. Extra request fields: `request_id` (idempotency), `user_wallet`, `top_k`
and `repetition_penalty`.

Every OpenAI parameter is honoured or refused with a 400 naming it (`param`); none is silently ignored:
`stop` (up to 4 strings), `seed`, `frequency_penalty`, `presence_penalty`, `logit_bias`, `logprobs` with
`top_logprobs` (at most 5), `stream_options.include_usage`, `max_tokens` / `max_completion_tokens` are honoured;
`user` is accepted as OpenAI defines it (an end-user id for abuse reports, no effect on the output);
`response_format` (`text`, `json_object`, `json_schema` with `strict`) is enforced token by token by the worker
(`protocol.structured`; a schema the engine cannot enforce is a 400 naming where); so are `tools` with
`tool_choice` and `parallel_tool_calls` on chat (`protocol.tools`: the reply carries `tool_calls` and
`finish_reason: "tool_calls"`; a streamed call arrives whole in one delta once the model has written it, and a
held reply that an error ends arrives before the error, its tokens being billed); `n` above 1 samples that
many choices (at most GATEWAY_MAX_CHOICES), each with its own `index`, `finish_reason` and `logprobs`, each
constrained alike, billed per generated token of every choice and the prompt once, as OpenAI
bills it (streamed, the choices arrive one after another, every chunk naming its choice's `index`); `best_of`
above 1, `echo`, `suffix`, the legacy `functions`, audio and predicted outputs are refused. Unknown fields are
refused too, as OpenAI does.

Errors are OpenAI's shape (`gateway.openai_errors`). Usage: with `stream_options.include_usage` it comes as its
own last chunk with empty `choices`, as OpenAI sends it; without it, the final chunk carries it (a Far Mesh
extra that clients which do not know it ignore). Ids are `chatcmpl-<request_id>` / `cmpl-<request_id>`, and
`system_fingerprint` names the model and the gateway's sampling code.

Chat messages travel to the worker as turns, and the worker formats them with the tokenizer's own chat template
(`workers.prompts`). For a tokenizer without one, the job's prompt is the fallback, one line per message, then
the cue for the reply:

    System: <content>
    User: <content>
    Assistant: <content>
    Assistant:
"""

import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    ValidationError,
    model_validator,
)
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.auth import authenticate
from gateway.bodies import read_model
from gateway.errors import (
    ApiError,
    BadGateway,
    GatewayTimeout,
    InvalidRequest,
    NotFound,
    PreferencesUnsatisfiable,
    UnsupportedSchema,
)
from gateway.following import follow_slot
from gateway.inference import relay_response
from gateway.openai_errors import ContextLengthExceeded, UnsupportedParameter, error_type, openai_error_response
from gateway.relay import Entry, Subscription
from gateway.settings import GatewaySettings
from gateway.sse import sse_event
from gateway.state import GatewayState, state_of
from gateway.submission import Accepted, Origin, submit
from protocol.catalog import ModelId
from protocol.error_codes import StreamErrorCode
from protocol.events import DoneEvent, ErrorEvent, TokenEvent
from protocol.jobs import MAX_CHAT_TURNS, ChatTurn
from protocol.live_prices import all_prices_now
from protocol.provider_preferences import ProviderPreferences
from protocol.requests import (
    MAX_CHOICES,
    MAX_LOGIT_BIAS,
    MAX_NEW_TOKENS,
    MAX_PROMPT_CHARS,
    MAX_REPETITION_PENALTY,
    MAX_SEED,
    MAX_STOP_CHARS,
    MAX_STOP_SEQUENCES,
    MAX_TOP_LOGPROBS,
    MIN_REPETITION_PENALTY,
    GenerateRequest,
    JsonInt,
    RequestId,
    RequestWallet,
)
from protocol.structured import JsonObjectFormat, JsonSchemaFormat, ResponseFormat, SchemaRefused
from protocol.tools import (
    NamedToolChoice,
    Tool,
    ToolChoice,
    ToolUse,
    calls_text,
    parse_calls,
    tool_grammar,
    tools_prompt,
)

ROLE_NAMES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
_TEMPLATE_ROLES: dict[str, Literal["system", "user", "assistant", "tool"]] = {
    "system": "system",
    "developer": "system",  # chat templates predate OpenAI's "developer" role
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
DONE_SENTINEL = b"data: [DONE]\n\n"
DEFAULT_CHAT_TOKENS = 256
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's own default for /v1/completions
SAMPLING_REVISION = "s1"
"""Changes whenever the worker's sampling code would turn the same seed into other tokens (system_fingerprint)."""

_Stop = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
_Prompt = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
_Text = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
"""One chat text (a message's content, or one part of it): capped on its own at GATEWAY_MAX_PROMPT_CHARS, as the
OpenAPI document states. Their sum is not capped here: JSON Schema cannot state a sum, and the limit that matters
is the model's context, in tokens, which the worker enforces (`context_length_exceeded`)."""


def _absent_or(*allowed: object) -> Callable[[object], bool]:
    return lambda value: value is None or value in allowed


_REFUSED: dict[str, tuple[Callable[[object], bool], str]] = {
    "functions": (_absent_or([]), "the legacy functions are not supported; use tools"),
    "function_call": (_absent_or("none"), "the legacy function_call is not supported; use tool_choice"),
    "best_of": (_absent_or(1), "only one candidate per request is generated; omit best_of or use 1"),
    "echo": (_absent_or(False), "echoing the prompt is not supported; omit echo"),
    "suffix": (_absent_or(""), "insertion (suffix) is not supported; omit suffix"),
    "modalities": (_absent_or(["text"]), "only text output is supported"),
    "audio": (_absent_or(), "audio output is not supported; omit audio"),
    "prediction": (_absent_or(), "predicted outputs are not supported; omit prediction"),
    "store": (_absent_or(False), "completions are not stored; omit store"),
    "metadata": (_absent_or(), "metadata is only stored with store, which is not supported; omit it"),
    "service_tier": (_absent_or("auto", "default"), "there is one service tier; omit service_tier"),
    "reasoning_effort": (_absent_or(), "no model here reasons; omit reasoning_effort"),
    "web_search_options": (_absent_or(), "web search is not supported; omit web_search_options"),
}
"""OpenAI parameters the swarm cannot honour: accepted only with the value that means "not used"."""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool = Field(default=False, description="Send usage as a last chunk with empty choices")


class _OpenAIBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelId
    max_tokens: JsonInt | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    temperature: StrictFloat | None = Field(default=None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: StrictFloat | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    n: JsonInt | None = Field(
        default=None,
        ge=1,
        le=MAX_CHOICES,
        description="Choices to sample; each billed per generated token, the prompt once (GATEWAY_MAX_CHOICES caps it)",
    )
    stop: _Stop | Annotated[list[_Stop], Field(max_length=MAX_STOP_SEQUENCES)] | None = Field(
        default=None, description="Up to 4 strings; the text ends before the first one that appears"
    )
    seed: JsonInt | None = Field(default=None, ge=-MAX_SEED - 1, le=MAX_SEED)
    frequency_penalty: StrictFloat | None = Field(default=None, ge=-2.0, le=2.0, allow_inf_nan=False)
    presence_penalty: StrictFloat | None = Field(default=None, ge=-2.0, le=2.0, allow_inf_nan=False)
    logit_bias: (
        Annotated[
            dict[
                Annotated[str, Field(pattern=r"^\d{1,9}$")],
                Annotated[StrictFloat, Field(ge=-100, le=100, allow_inf_nan=False)],
            ],
            Field(max_length=MAX_LOGIT_BIAS, json_schema_extra={"additionalProperties": False}),
        ]
        | None
    ) = None
    user: str | None = Field(default=None, max_length=256, description="End-user id (abuse reports); no effect")
    top_k: JsonInt | None = Field(default=None, ge=0, le=1000, description="Far Mesh extra: 0 or absent is off")
    repetition_penalty: StrictFloat | None = Field(
        default=None,
        ge=MIN_REPETITION_PENALTY,
        le=MAX_REPETITION_PENALTY,
        allow_inf_nan=False,
        description="Far Mesh extra: divides the logits of tokens already seen; 1 or absent is off",
    )
    request_id: RequestId | None = Field(default=None, description="Far Mesh extra: idempotency key")
    user_wallet: RequestWallet | None = Field(
        default=None, description="Far Mesh extra: must match the API key's wallet"
    )
    response_format: ResponseFormat | None = Field(
        default=None,
        description="text (the default), json_object (one JSON object) or json_schema (JSON the schema accepts; "
        "with strict: true every keyword is enforced or the request is refused), enforced token by token",
    )
    provider: ProviderPreferences | None = Field(
        default=None, description="OpenRouter's routing preferences: max_price, sort, only, ignore, allow_fallbacks"
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for param, (allowed, reason) in _REFUSED.items():
                if param in data and not allowed(data[param]):
                    raise UnsupportedParameter(param, reason)
            return {k: v for k, v in data.items() if k not in _REFUSED}
        return data

    def sampling(self) -> dict[str, Any]:
        """The request's sampling controls as `GenerateRequest` fields (only those set)."""
        fields: dict[str, Any] = {
            "temperature": 1.0 if self.temperature is None else self.temperature,
            "top_p": 1.0 if self.top_p is None else self.top_p,
            "stop": [self.stop] if isinstance(self.stop, str) else list(self.stop or []),
            "logit_bias": dict(self.logit_bias or {}),
        }
        for name in (
            "n",
            "seed",
            "frequency_penalty",
            "presence_penalty",
            "top_k",
            "repetition_penalty",
            "response_format",
        ):
            if (value := getattr(self, name)) is not None:
                fields[name] = value
        return fields

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: _Text


class CalledFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=64)
    arguments: _Text = Field(description="The arguments as JSON text, as the reply gave them")


class ToolCall(BaseModel):
    """A call an earlier assistant turn made, sent back so the model sees what it called."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(max_length=128)
    type: Literal["function"]
    function: CalledFunction


class _Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    content: _Text | list[ContentPart] | None
    name: str | None = Field(default=None, max_length=64, description="Accepted; not part of the prompt")

    def calls(self) -> list[ToolCall]:
        return []

    @property
    def text(self) -> str:
        """The turn as the model reads it: its content, then any calls in the format the model writes them."""
        content = self.content
        text = content if isinstance(content, str) else "".join(part.text for part in content or [])
        if calls := self.calls():
            written = calls_text([(call.function.name, call.function.arguments) for call in calls])
            text = f"{text}\n{written}" if text else written
        return text


class ChatMessage(_Turn):
    """A system, developer, user or tool turn: its content is required."""

    role: Literal["system", "developer", "user", "tool"]
    content: _Text | list[ContentPart]
    tool_call_id: str | None = Field(default=None, max_length=128, description="A tool turn: the call it answers")


class AssistantMessage(_Turn):
    """An earlier reply: its text, or the tools it called (its content may then be null)."""

    role: Literal["assistant"]
    content: _Text | list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = Field(
        default=None, max_length=128, description="The calls it made (protocol.tools' format in the prompt)"
    )

    def calls(self) -> list[ToolCall]:
        return self.tool_calls or []


Message = Annotated[ChatMessage | AssistantMessage, Field(discriminator="role")]


_TOOLS_RULES: dict[str, Any] = {
    "dependentRequired": {"tool_choice": ["tools"]},
    "dependentSchemas": {
        "tools": {
            "properties": {
                "response_format": {
                    "anyOf": [
                        {"type": "null"},
                        {"type": "object", "properties": {"type": {"const": "text"}}, "required": ["type"]},
                    ]
                }
            }
        }
    },
}
"""What the document states across fields: tool_choice only with tools, and no JSON response_format with them."""


class ChatCompletionRequest(_OpenAIBody):
    model_config = ConfigDict(json_schema_extra=_TOOLS_RULES)

    messages: list[Message] = Field(min_length=1, max_length=MAX_CHAT_TURNS)
    tools: list[Tool] = Field(
        default_factory=list, min_length=1, max_length=128, description="Functions the model may call"
    )
    tool_choice: ToolChoice | None = Field(
        default=None, description='Only with tools: "none", "auto" (the default), "required", or a named function'
    )
    parallel_tool_calls: StrictBool | None = Field(default=None, description="Allow several calls in one reply")
    max_completion_tokens: JsonInt | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    logprobs: StrictBool | None = Field(default=None, description="Log probabilities of the chosen tokens")
    top_logprobs: JsonInt | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    def sampling(self) -> dict[str, Any]:
        # top_logprobs alone asks for log probabilities too: honoured, not refused over the missing flag
        wanted = bool(self.logprobs) or bool(self.top_logprobs)
        return {**super().sampling(), "logprobs": wanted, "top_logprobs": self.top_logprobs or 0}

    def tool_use(self) -> ToolUse | None:
        """The request's tools as the job carries them; None without tools. 400 for what cannot be enforced."""
        if not self.tools:
            if "tool_choice" in self.model_fields_set:
                raise InvalidRequest("tool_choice: only allowed when tools are given", field="tool_choice")
            return None
        if isinstance(self.response_format, JsonObjectFormat | JsonSchemaFormat):
            raise UnsupportedParameter(
                "response_format", "a JSON response_format together with tools is not supported; use one of them"
            )
        use = ToolUse(
            tools=self.tools,
            tool_choice=self.tool_choice or "auto",
            parallel_tool_calls=True if self.parallel_tool_calls is None else self.parallel_tool_calls,
        )
        if isinstance(use.tool_choice, NamedToolChoice) and not use.callable():
            named = use.tool_choice.function.name
            raise NotFound(f"tool_choice names {named!r}, which is not among the tools", field="tool_choice")
        if use.active:
            try:
                tool_grammar(use)
            except SchemaRefused as exc:
                field = "tool_choice" if exc.where == "" else "tools"
                raise UnsupportedSchema(f"{field}: the tools cannot be enforced: {exc}", field=field) from None
        return use

    def prompt_messages(self, use: ToolUse | None) -> list[ChatMessage | AssistantMessage]:
        """The messages, with the callable tools described in the (first) system message."""
        if use is None or not use.active:
            return self.messages
        offer = tools_prompt(use)
        first = self.messages[0]
        if first.role in ("system", "developer"):
            return [ChatMessage(role=first.role, content=f"{first.text}\n\n{offer}"), *self.messages[1:]]
        return [ChatMessage(role="system", content=offer), *self.messages]


class CompletionRequest(_OpenAIBody):
    prompt: _Prompt | Annotated[list[_Prompt], Field(min_length=1, max_length=1)] = Field(
        description="A string, or a list holding exactly one string"
    )
    logprobs: JsonInt | None = Field(
        default=None, ge=0, le=MAX_TOP_LOGPROBS, description="Include the log probabilities of this many top tokens"
    )

    def sampling(self) -> dict[str, Any]:
        return {**super().sampling(), "logprobs": self.logprobs is not None, "top_logprobs": self.logprobs or 0}


def chat_prompt(messages: Sequence[ChatMessage | AssistantMessage]) -> str:
    """The module docstring's template; the trailing cue makes the model answer as the assistant."""
    return "".join(f"{ROLE_NAMES[m.role]}: {m.text}\n" for m in messages) + "Assistant:"


def _generate_request(
    body: _OpenAIBody, prompt: str, max_tokens: int, prompt_field: str, *, chat: bool = False
) -> GenerateRequest:
    try:
        request = GenerateRequest(
            prompt="chat" if chat else prompt,
            max_tokens=max_tokens,
            user_wallet=body.user_wallet,
            request_id=body.request_id,
            model_id=body.model,
            provider=body.provider,
            **body.sampling(),
        )
    except ValidationError as exc:
        raise InvalidRequest.from_validation(exc, renames={"prompt": prompt_field}) from None
    # A chat's prompt is its turns, each text capped on its own (`_cap_chat_texts`); the fallback text joining them
    # is bounded by the body it came from, not by a completion prompt's cap.
    return request.model_copy(update={"prompt": prompt}) if chat else request


def _cap_chat_texts(messages: Sequence[ChatMessage | AssistantMessage], cap: int) -> None:
    """400 naming `messages` when one text (a content, or one part of it) is over GATEWAY_MAX_PROMPT_CHARS: the
    cap the OpenAPI document states for each of them."""
    details = []
    for i, message in enumerate(messages):
        texts: list[tuple[tuple[str | int, ...], str]]
        if isinstance(message.content, str):
            texts = [(("content",), message.content)]
        else:
            texts = [(("content", j, "text"), part.text) for j, part in enumerate(message.content or [])]
        texts += [
            (("tool_calls", j, "function", "arguments"), call.function.arguments)
            for j, call in enumerate(message.calls())
        ]
        for where, text in texts:
            if len(text) > cap:
                msg = f"a message's text has {len(text)} characters; at most {cap} are accepted"
                details.append({"loc": ["body", "messages", i, *where], "msg": msg, "type": "string_too_long"})
    if details:
        raise InvalidRequest(f"messages: {details[0]['msg']}", field="messages", details=details)


def system_fingerprint(model_id: str) -> str:
    """Stable for a model and the sampling code: equal fingerprints and seeds mean equal outputs, as OpenAI's."""
    return "fp_" + hashlib.sha256(f"{model_id}:{SAMPLING_REVISION}".encode()).hexdigest()[:12]


class _Shape:
    """How one endpoint's responses look: object names, id prefix, where the text goes, and which choice a token
    belongs to (a request with n > 1 has several, one after another on its stream)."""

    def __init__(
        self,
        *,
        chat: bool,
        request_id: str,
        model: str,
        include_usage: bool = False,
        tool_use: ToolUse | None = None,
    ) -> None:
        self.chat = chat
        self.tools = tool_use is not None and tool_use.active
        self._forced = tool_use is not None and tool_use.forced
        self._held: dict[int, list[dict[str, Any]]] = {}
        """Per choice, a streamed reply's token events while it is (or may be) a tool call, sent whole at its end."""
        self._decided: set[int] = set()
        """The choices whose first text said whether they are a call (callable tools, not forced)."""
        self.request_id = request_id
        self.model = model
        self.created = int(time.time())
        self.id = ("chatcmpl-" if chat else "cmpl-") + request_id
        self.include_usage = include_usage
        self.fingerprint = system_fingerprint(self.model)
        self._text_offsets: dict[int, int] = {}

    def _envelope(self, obj: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
            "request_id": self.request_id,
            **extra,
        }

    def logprobs(self, events: list[dict[str, Any]], choice: int = 0) -> dict[str, Any] | None:
        """The `logprobs` of a choice holding `events`' tokens, in the endpoint's format; None when not asked for.

        A token's text is the text the client was sent for it (as the content is their concatenation)."""
        if not events or "logprob" not in events[0]:
            return None
        if self.chat:
            return {"content": [_chat_logprob(e) for e in events], "refusal": None}
        offsets = []
        for event in events:
            offsets.append(self._text_offsets.get(choice, 0))
            self._text_offsets[choice] = offsets[-1] + len(event["token"])
        return {
            "tokens": [e["token"] for e in events],
            "token_logprobs": [e["logprob"] for e in events],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e.get("top_logprobs", [])} for e in events],
            "text_offset": offsets,
        }

    def chunk(self, entry: Entry) -> bytes:
        event = json.loads(entry.data)
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        if entry.kind == TokenEvent.kind and self._holds(event):
            return b""
        if entry.kind == TokenEvent.kind:
            index = _choice_of(event)
            logprobs = self.logprobs([event], index)
            if self.chat:
                delta: dict[str, str] = {"content": event["token"]}
                if event["index"] == 0:
                    delta["role"] = "assistant"
                choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": None}
            else:
                choice = {"index": index, "text": event["token"], "logprobs": logprobs, "finish_reason": None}
            return sse_event(
                json.dumps(self._envelope(obj, [choice], cost_far=event["cost_far"])).encode(), entry.entry_id
            )
        if entry.kind == DoneEvent.kind:
            held, endings = b"", []
            for end in _choice_ends(event):
                index, finish_reason = end["index"], _finish_reason(end)
                if self._forced or index in self._held:
                    chunk, called = self._held_chunk(index)
                    held += chunk
                    finish_reason = "tool_calls" if called else finish_reason
                extra: dict[str, Any] = {"delta": {}} if self.chat else {"text": ""}
                endings.append({"index": index, "logprobs": None, "finish_reason": finish_reason, **extra})
            cost = {"cost_far": event["total_cost_far"], "status": event["status"]}
            if not self.include_usage:
                final = self._envelope(obj, endings, usage=_usage(event), **cost)
                return held + sse_event(json.dumps(final).encode(), entry.entry_id) + DONE_SENTINEL
            last = self._envelope(obj, endings, usage=None, **cost)
            usage = self._envelope(obj, [], usage=_usage(event), **cost)
            return (
                held
                + sse_event(json.dumps(last).encode(), "")
                + sse_event(json.dumps(usage).encode(), entry.entry_id)
                + DONE_SENTINEL
            )
        # A reply held back as a possible call is sent as it stands before the error: its tokens were billed as
        # they were relayed, and a stream that fails bills what its client received (docs/architecture.md)
        held = b"".join(self._held_chunk(index)[0] for index in sorted(self._held))
        error = event["error"]
        message = f"{error['message']}; {_billed(event)}"
        body = {
            "error": {"message": message, "type": error_type(502), "param": None, "code": error["code"]},
            "request_id": self.request_id,
            "cost_far": event.get("total_cost_far"),
        }
        return held + sse_event(json.dumps(body).encode(), entry.entry_id)

    def _holds(self, event: dict[str, Any]) -> bool:
        """Whether this token is held back: with callable tools, a reply whose first text opens a JSON object is
        a call (the grammar lets text start with anything else), sent whole when it ends. Each choice decides
        for itself."""
        index = _choice_of(event)
        if index in self._held:
            self._held[index].append(event)
            return True
        if self._forced:
            self._held[index] = [event]
            return True
        if self.tools and index not in self._decided and event["token"]:
            self._decided.add(index)
            if event["token"].startswith("{"):
                self._held[index] = [event]
                return True
        return False

    def _calls(self, text: str, choice: int = 0) -> list[dict[str, Any]] | None:
        """The reply's tool calls in OpenAI's shape; None when it is text (or a call cut short). Call ids are
        unique over the request's choices (choice 0's as they were before n > 1 existed)."""
        calls = parse_calls(text) if self.tools else None
        if calls is None:
            return None
        prefix = f"call_{self.request_id}_" + (f"{choice}_" if choice else "")
        return [
            {"id": f"{prefix}{i}", "type": "function", "function": {"name": name, "arguments": args}}
            for i, (name, args) in enumerate(calls)
        ]

    def _held_chunk(self, choice: int) -> tuple[bytes, bool]:
        """A choice's held reply as one chunk: a delta with its tool calls (True), or with its text when it is not
        a complete call (False: cut short by max_tokens or a stop sequence)."""
        held = self._held.pop(choice, [])
        if not held:
            return b"", False
        text = "".join(e["token"] for e in held)
        calls = self._calls(text, choice)
        delta: dict[str, Any] = {"role": "assistant", "content": text}
        if calls is not None:
            delta = {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"index": i, **c} for i, c in enumerate(calls)],
            }
        chunk_choice = {"index": choice, "delta": delta, "logprobs": None, "finish_reason": None}
        chunk = self._envelope("chat.completion.chunk", [chunk_choice], cost_far=held[-1]["cost_far"])
        return sse_event(json.dumps(chunk).encode(), ""), calls is not None

    def complete(self, events: list[dict[str, Any]], done: dict[str, Any]) -> dict[str, Any]:
        by_choice: dict[int, list[dict[str, Any]]] = {}
        for event in events:
            by_choice.setdefault(_choice_of(event), []).append(event)
        choices = [self._choice(end, by_choice.get(end["index"], [])) for end in _choice_ends(done)]
        return self._envelope(
            "chat.completion" if self.chat else "text_completion",
            choices,
            usage=_usage(done),
            cost_far=done["total_cost_far"],
            status=done["status"],
        )

    def _choice(self, end: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
        """One choice of a whole (non-streamed) response, from its token events and its ending."""
        index, finish_reason = end["index"], _finish_reason(end)
        text = "".join(e["token"] for e in events)
        logprobs = self.logprobs(events, index)
        calls = self._calls(text, index) if self.chat else None
        if calls is not None:
            message = {"role": "assistant", "content": None, "tool_calls": calls, "refusal": None}
            return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": "tool_calls"}
        if self.chat:
            message = {"role": "assistant", "content": text, "refusal": None}
            return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


ResponseShape = _Shape
"""How an endpoint's responses look, for the Batch API's output lines (`gateway.batch_runner`)."""


def _choice_of(event: dict[str, Any]) -> int:
    """The choice a token event belongs to: events of a one-choice request name none."""
    return int(event.get("choice", 0))


def _choice_ends(done: dict[str, Any]) -> list[dict[str, Any]]:
    """Each choice's ending (`protocol.events.ChoiceEnd`); a one-choice request's done event is its own."""
    ends: list[dict[str, Any]] = done.get("choices") or [{"index": 0, "finish_reason": done["finish_reason"]}]
    return ends


def _chat_logprob(event: dict[str, Any]) -> dict[str, Any]:
    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    top = [entry(t["token"], t["logprob"]) for t in event.get("top_logprobs", [])]
    return {**entry(event["token"], event["logprob"]), "top_logprobs": top}


def _finish_reason(end: dict[str, Any]) -> str:
    """OpenAI's finish_reason for a done event or one choice's ending: a cancelled request stopped early."""
    return "length" if end["finish_reason"] == "length" else "stop"


def _usage(done: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = done["prompt_tokens"], done["tokens_generated"]
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost_far": done["total_cost_far"],
    }


async def _collect(
    state: GatewayState, accepted: Accepted, request: Request, prompt_field: str
) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    """Every token event and the done event; None when the client left first. A prompt longer than the model's
    context is 400 `context_length_exceeded` (as OpenAI answers it), other errors 502; a request still running at
    GATEWAY_STREAM_DEADLINE_S is cancelled and answered 504."""
    tokens: list[dict[str, Any]] = []
    async with follow_slot(state, accepted.slot, trace=accepted.trace) as following:
        with following.watching(request.receive):
            final = await _final_entry(following.sub, tokens)
        following.finished = final is not None
    if following.timed_out:
        raise GatewayTimeout(
            f"the request was still running after {following.deadline_s:g} s, the gateway's limit; cancelled"
        )
    if final is None:
        return None
    event = json.loads(final.data)
    if final.kind == ErrorEvent.kind:
        error = event["error"]
        if error["code"] == StreamErrorCode.PROMPT_TOO_LONG:
            raise ContextLengthExceeded(error["message"], param=prompt_field)
        if error["code"] == StreamErrorCode.ROUTE_UNSATISFIABLE:  # the buyer's preferences, not the swarm, refused it
            raise PreferencesUnsatisfiable(error["message"], field="provider")
        raise BadGateway(f"generation failed ({error['code']}): {error['message']}; {_billed(event)}")
    return tokens, event


async def _final_entry(sub: Subscription, tokens: list[dict[str, Any]]) -> Entry | None:
    """Read `sub` to its final entry, adding each token event to `tokens`; None when it ended before that."""
    while True:
        batch = await sub.next_batch()
        if batch is None:
            return None
        for entry in batch:
            if entry.final:
                return entry
            tokens.append(json.loads(entry.data))


@dataclass(frozen=True)
class Prepared:
    """An OpenAI body turned into what `submit` takes, checked as far as the gateway checks before admission."""

    body: "ChatCompletionRequest | CompletionRequest"
    generate: GenerateRequest
    prompt_field: str
    turns: list[ChatTurn] | None
    tool_use: ToolUse | None

    @property
    def chat(self) -> bool:
        return self.turns is not None

    def origin(self, *, answered_whole: bool) -> Origin:
        return Origin(self.prompt_field, self.turns, self.tool_use, answered_whole)


def prepare(body: "ChatCompletionRequest | CompletionRequest", settings: GatewaySettings) -> Prepared:
    """`body` as a `GenerateRequest` (and a chat's turns and tools); 4xx for what cannot run. Shared by the
    endpoints and the Batch API, whose lines are these bodies (`gateway.batch_input`)."""
    cap = settings.gateway_max_tokens
    if isinstance(body, ChatCompletionRequest):
        max_tokens = body.max_completion_tokens or body.max_tokens or min(DEFAULT_CHAT_TOKENS, cap)
        _cap_chat_texts(body.messages, settings.gateway_max_prompt_chars)
        tool_use = body.tool_use()
        messages = body.prompt_messages(tool_use)
        generate = _generate_request(body, chat_prompt(messages), max_tokens, "messages", chat=True)
        turns = [ChatTurn(role=_TEMPLATE_ROLES[m.role], content=m.text) for m in messages]
        return Prepared(body, generate, "messages", turns, tool_use)
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    max_tokens = body.max_tokens or min(DEFAULT_COMPLETION_TOKENS, cap)
    return Prepared(body, _generate_request(body, prompt, max_tokens, "prompt"), "prompt", None, None)


def shape_of(prepared: Prepared, request_id: str, model: str) -> "_Shape":
    """How the response to `prepared` looks (a batch line's output body is `complete`'s)."""
    return _Shape(
        chat=prepared.chat,
        request_id=request_id,
        model=model,
        include_usage=prepared.body.include_usage,
        tool_use=prepared.tool_use,
    )


async def _complete(request: Request, *, chat: bool) -> Response:
    state = state_of(request)
    key = await authenticate(request)
    limit = state.settings.gateway_max_body_bytes
    model: type[ChatCompletionRequest | CompletionRequest] = ChatCompletionRequest if chat else CompletionRequest
    prepared = prepare(await read_model(request, model, limit), state.settings)
    accepted = await submit(state, prepared.generate, key, prepared.origin(answered_whole=not prepared.body.stream))
    shape = shape_of(prepared, accepted.request_id, accepted.spec.model_id)
    if prepared.body.stream:
        return relay_response(state, accepted.slot, render=shape.chunk, trace=accepted.trace)
    collected = await _collect(state, accepted, request, prepared.prompt_field)
    if collected is None:
        return Response(status_code=499)  # nobody is listening any more
    events, done = collected
    return JSONResponse(shape.complete(events, done), headers={"x-request-id": accepted.request_id})


def _billed(error_event: dict[str, Any]) -> str:
    """What a failed request was billed, for its error's message: the tokens its client received (nothing for a
    request answered whole, whose tokens never reached it). The gateway's own deadline event knows no cost: the
    worker bills what it generated when the cancel stops it."""
    if "total_cost_far" not in error_event:
        return "what was generated until it stopped is billed"
    cost = Decimal(error_event["total_cost_far"])
    return f"{error_event['tokens_generated']} tokens billed ({cost} FAR)" if cost else "nothing billed"


async def _openai_errors(handler: Awaitable[Response]) -> Response:
    """`handler`'s response, or its `ApiError` in OpenAI's shape."""
    try:
        return await handler
    except ApiError as exc:
        return openai_error_response(exc)


async def chat_completions(request: Request) -> Response:
    return await _openai_errors(_complete(request, chat=True))


async def completions(request: Request) -> Response:
    return await _openai_errors(_complete(request, chat=False))


async def list_models(request: Request) -> JSONResponse:
    state = state_of(request)
    catalog = state.settings.catalog
    prices = await all_prices_now(state.redis, catalog)
    data = [
        {
            "id": spec.model_id,
            "object": "model",
            "created": 0,
            "owned_by": "far-mesh",
            **catalog.describe(spec),
            **prices[spec.model_id].quote(),
        }
        for spec in catalog.models
    ]
    return JSONResponse({"object": "list", "data": data})
