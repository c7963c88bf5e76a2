"""The events on a request's token stream (`keys.token_stream(request_id)`).

Each stream entry has two fields: `KIND_FIELD` (the event's kind, "token", "done" or "error") and `DATA_FIELD`,
the event as JSON. The data is exactly what the gateway sends as an SSE `data:` line, so the relay forwards it
without re-encoding. A stream holds token events with consecutive indexes from 0, then exactly one done or error
event. Every process names the fields and kinds through the constants here (docs/architecture.md, "One home
for every word").
"""

import json
from collections.abc import Mapping
from typing import ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from protocol.error_codes import StreamErrorCode
from protocol.money import FarAmount
from protocol.requests import RequestId

KIND_FIELD: Final = "kind"
"""The field of a token-stream entry naming its event's kind (`TokenEvent.kind`, `DoneEvent.kind`, ...)."""
DATA_FIELD: Final = "data"
"""The field of a token-stream entry holding its event as JSON."""


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ClassVar[str]
    final: ClassVar[bool] = True


class TopLogprob(BaseModel):
    """One of the most likely tokens at a step, with its log probability under the model's final logits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token: str
    token_id: int = Field(ge=0)
    logprob: float


class TokenEvent(_Event):
    """One generated token. `token` is its text; it may be "" while bytes of a multi-byte character, or text
    that could still become a stop sequence, are held back. `logprob` and `top_logprobs` are present only when
    the request asked for them (they are left out of the encoded event otherwise)."""

    kind: ClassVar[str] = "token"
    final: ClassVar[bool] = False

    token: str
    request_id: RequestId
    index: int = Field(ge=0, description="0-based position among generated tokens")
    token_id: int = Field(ge=0, description="Vocabulary id; lets a recovering worker re-prefill exactly")
    tokens_generated: int = Field(ge=1, description="Tokens generated so far, over all choices: what is billed")
    cost_far: FarAmount = Field(description="Running cost of the tokens generated so far")
    choice: int | None = Field(
        default=None,
        ge=0,
        description="Which choice the token belongs to, when the request asked for n > 1 (absent otherwise); "
        "`index` then counts within that choice. Choices follow one another on the stream",
    )
    logprob: float | None = Field(default=None, description="Log probability of this token (logprobs requested)")
    top_logprobs: list[TopLogprob] | None = Field(default=None, description="The most likely tokens at this step")


FinishReason = Literal["stop", "length", "cancelled"]


class ChoiceEnd(BaseModel):
    """How one of a request's n choices ended."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int = Field(ge=0)
    finish_reason: FinishReason
    tokens_generated: int = Field(ge=0)


class DoneEvent(_Event):
    """The request ended normally or was cancelled; totals are what is billed (the prompt once, every choice's
    generated tokens)."""

    kind: ClassVar[str] = "done"

    done: Literal[True] = True
    request_id: RequestId
    status: Literal["completed", "cancelled"]
    finish_reason: FinishReason = Field(description="The last choice's, with n > 1")
    prompt_tokens: int = Field(ge=0)
    tokens_generated: int = Field(ge=0)
    total_cost_far: FarAmount
    choices: list[ChoiceEnd] | None = Field(
        default=None, description="With n > 1: each choice's ending, in order (absent for one choice)"
    )


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: StreamErrorCode = Field(description="Stable machine-readable code: why the stream ended with an error")
    message: str = Field(description="What went wrong and, where possible, what to do")


class ErrorEvent(_Event):
    """The request failed; tokens already delivered are billed, nothing more."""

    kind: ClassVar[str] = "error"

    error: ErrorBody
    request_id: RequestId
    tokens_generated: int = Field(ge=0)
    total_cost_far: FarAmount


StreamEvent = TokenEvent | DoneEvent | ErrorEvent
_BY_KIND: dict[str, type[TokenEvent] | type[DoneEvent] | type[ErrorEvent]] = {
    cls.kind: cls for cls in (TokenEvent, DoneEvent, ErrorEvent)
}
EVENT_KINDS: Final = frozenset(_BY_KIND)
"""Every kind a token-stream entry may have."""
FINAL_KINDS: Final = frozenset(cls.kind for cls in _BY_KIND.values() if cls.final)
"""The kinds that end a stream (done, error): nothing follows them."""


class MalformedEvent(ValueError):
    """A token-stream entry that no event model accepts."""


def encode_event(event: StreamEvent) -> dict[str, str]:
    """The fields of the stream entry that carries `event`."""
    return {KIND_FIELD: event.kind, DATA_FIELD: event.model_dump_json(exclude_none=True)}


def decode_event(fields: Mapping[str, str] | Mapping[bytes, bytes]) -> StreamEvent:
    """Parse a stream entry's fields, as redis-py returns them (decoded or not)."""
    text = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in fields.items()
    }
    cls = _BY_KIND.get(text.get(KIND_FIELD, ""))
    if cls is None or DATA_FIELD not in text:
        raise MalformedEvent(f"token-stream entry has no known kind: {sorted(text)}")
    try:
        return cls.model_validate(json.loads(text[DATA_FIELD]))
    except ValueError as exc:
        raise MalformedEvent(f"bad {cls.kind} event: {exc}") from exc
