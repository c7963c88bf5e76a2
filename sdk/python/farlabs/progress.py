"""What one generation has delivered so far, read from its events: shared by the sync and async streams.

It accepts the native events (`{"token", "index", "cost_far", ...}`, then `{"done": true, ...}` or
`{"error": ...}`) and the OpenAI-compatible chunks, because a stream started on an OpenAI route resumes through
the native one. Token events carry their `index`, so a replay that overlaps what was already yielded is
skipped: a token is never yielded twice, whatever the server resends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from farlabs.errors import generation_error


@dataclass(frozen=True)
class Usage:
    """The totals the gateway bills for one request, from its final event."""

    prompt_tokens: int
    completion_tokens: int
    total_cost_far: Decimal
    status: str
    """completed, or cancelled (only the tokens generated are billed)"""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Progress:
    """The running state of a request's stream: last event id, tokens delivered, running cost, the ending."""

    __slots__ = ("request_id", "last_event_id", "tokens_generated", "_cost", "usage", "finish_reason", "finished")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.last_event_id: str | None = None
        self.tokens_generated = 0
        self._cost = "0"
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.finished = False

    @property
    def cost_far(self) -> Decimal:
        """The running cost of the tokens delivered so far (the final total once the stream has ended)."""
        return Decimal(self._cost)

    def accept(self, event_id: str, data: str) -> str | None:
        """The token text `data` carries (None for anything else); records the ending, raises on an error event."""
        if self.finished or data == "[DONE]":
            return None
        event: dict[str, Any] = json.loads(data)
        if event_id:
            self.last_event_id = event_id
        token = event.get("token")
        if token is not None:
            if event["index"] < self.tokens_generated:
                return None  # already delivered before a reconnect
            self.tokens_generated = event["tokens_generated"]
            self._cost = event["cost_far"]
            return str(token)
        if "choices" in event:
            return self._accept_openai(event)
        if event.get("done"):
            self._finish(
                Usage(
                    prompt_tokens=event["prompt_tokens"],
                    completion_tokens=event["tokens_generated"],
                    total_cost_far=Decimal(event["total_cost_far"]),
                    status=event["status"],
                ),
                event["finish_reason"],
            )
            return None
        if "error" in event:
            self._fail(event)
        return None

    def _accept_openai(self, chunk: dict[str, Any]) -> str | None:
        choice = chunk["choices"][0]
        usage = chunk.get("usage")
        if usage is not None:
            status = chunk.get("status", "completed")
            reason = "cancelled" if status == "cancelled" else choice.get("finish_reason") or "stop"
            self._finish(
                Usage(usage["prompt_tokens"], usage["completion_tokens"], Decimal(usage["cost_far"]), status), reason
            )
            return None
        text = choice["delta"].get("content") if "delta" in choice else choice.get("text")
        if text is None:
            return None
        self.tokens_generated += 1
        self._cost = chunk.get("cost_far", self._cost)
        return str(text)

    def _finish(self, usage: Usage, finish_reason: str) -> None:
        self.usage = usage
        self.finish_reason = finish_reason
        self.tokens_generated = usage.completion_tokens
        self._cost = str(usage.total_cost_far)
        self.finished = True

    def _fail(self, event: dict[str, Any]) -> None:
        self.finished = True
        self.finish_reason = "error"
        error = event["error"] if isinstance(event["error"], dict) else {"message": str(event["error"])}
        total = event.get("total_cost_far", event.get("cost_far"))  # native events say total_, OpenAI's error chunk not
        if total is not None:
            self._cost = total
        code = str(error.get("code", "generation_failed"))
        raise generation_error(code)(
            str(error.get("message", "generation failed")),
            code=code,
            request_id=self.request_id,
            tokens_generated=event.get("tokens_generated", self.tokens_generated),
            total_cost_far=Decimal(total) if total is not None else None,
        )
