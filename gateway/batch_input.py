"""A Batch API input file, line by line: what each request is, or why the batch cannot run.

An input file is JSONL, one OpenAI request per line, as OpenAI's Batch API takes it:
`{"custom_id": "...", "method": "POST", "url": "/v1/chat/completions", "body": {...}}`. Every line is checked
here, when the batch is created, as strictly as the endpoint itself would check it (`gateway.openai_api.prepare`),
so a batch never fails half way for a line that could never run. Any bad line (not JSON, an unknown endpoint, a
model not on sale, a line over the size limit, a repeated custom_id, a streaming body) fails the whole batch with
every bad line listed, as OpenAI fails it in its validation step.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import ApiError
from gateway.openai_api import ChatCompletionRequest, CompletionRequest, Prepared, prepare
from gateway.settings import GatewaySettings

ENDPOINTS: dict[str, type[ChatCompletionRequest | CompletionRequest]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
}
"""The endpoints a batch may target, and the body each line must be."""

MAX_CUSTOM_ID_CHARS = 512


class InputLine(BaseModel):
    """One line's envelope; its body is checked by the endpoint's own request model."""

    model_config = ConfigDict(extra="forbid")

    custom_id: str = Field(min_length=1, max_length=MAX_CUSTOM_ID_CHARS)
    method: Literal["POST"]
    url: str
    body: dict[str, Any]


@dataclass(frozen=True)
class LineError:
    """Why line `line` (1-based, as OpenAI counts) cannot run; `param` names the field when one is at fault."""

    code: str
    message: str
    line: int
    param: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass(frozen=True)
class ValidLine:
    custom_id: str
    prepared: Prepared


@dataclass(frozen=True)
class ParsedInput:
    lines: list[ValidLine]
    errors: list[LineError]


MAX_ERRORS = 100
"""Errors listed for one failed batch; a file of 10,000 bad lines is answered with the first hundred."""


def parse_input(text: str, endpoint: str, settings: GatewaySettings) -> ParsedInput:
    """Every line of `text` checked as a request to `endpoint`; the batch may run only when `errors` is empty."""
    lines: list[ValidLine] = []
    errors: list[LineError] = []
    seen: set[str] = set()
    # JSONL lines end at "\n" alone: `splitlines` would also cut at U+2028, U+2029 or U+0085, which JSON strings
    # may hold raw.
    raw_lines = [line.removesuffix("\r") for line in text.split("\n") if line.strip()]
    if not raw_lines:
        return ParsedInput([], [LineError("empty_file", "the input file holds no request", 1)])
    if len(raw_lines) > settings.gateway_batch_max_lines:
        most = settings.gateway_batch_max_lines
        message = f"the input file holds {len(raw_lines)} requests; a batch may hold at most {most}"
        return ParsedInput([], [LineError("too_many_requests", message, most + 1)])
    for number, raw in enumerate(raw_lines, start=1):
        if len(errors) >= MAX_ERRORS:
            break
        error, valid = _parse_line(raw, number, endpoint, settings, seen)
        if error is not None:
            errors.append(error)
        elif valid is not None:
            lines.append(valid)
    return ParsedInput(lines, errors)


def _parse_line(
    raw: str, number: int, endpoint: str, settings: GatewaySettings, seen: set[str]
) -> tuple[LineError | None, ValidLine | None]:
    if len(raw.encode()) > settings.gateway_max_body_bytes:
        limit = settings.gateway_max_body_bytes
        return LineError("line_too_large", f"the line is over {limit} bytes, the most one request may be", number), None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return LineError("invalid_json_line", f"the line is not valid JSON: {exc}", number), None
    try:
        envelope = InputLine.model_validate(data)
    except ValidationError as exc:
        return _validation_error("invalid_request", exc, number), None
    if envelope.url != endpoint:
        known = ", ".join(ENDPOINTS)
        message = (
            f"the line's url {envelope.url!r} is not the batch's endpoint {endpoint!r}"
            if envelope.url in ENDPOINTS
            else f"unknown endpoint {envelope.url!r}; a batch may target {known}"
        )
        return LineError("invalid_url", message, number, "url"), None
    if envelope.custom_id in seen:
        message = f"custom_id {envelope.custom_id!r} appears more than once; each line needs its own"
        return LineError("duplicate_custom_id", message, number, "custom_id"), None
    seen.add(envelope.custom_id)
    if envelope.body.get("stream"):
        return LineError("invalid_request", "a batch line cannot stream; omit stream", number, "body.stream"), None
    try:
        body = ENDPOINTS[endpoint].model_validate(envelope.body)
    except ValidationError as exc:
        return _validation_error("invalid_request", exc, number, prefix="body."), None
    except ApiError as exc:  # UnsupportedParameter, raised by the body's own checks
        return LineError(exc.code, exc.message, number, _param(exc.field, "body.")), None
    if settings.catalog.get(body.model) is None:
        message = f"model {body.model!r} is not on sale here; GET /v1/models lists {settings.catalog.model_ids}"
        return LineError("model_not_found", message, number, "body.model"), None
    try:
        prepared = prepare(body, settings)
    except ApiError as exc:
        return LineError(exc.code, exc.message, number, _param(exc.field, "body.")), None
    return None, ValidLine(envelope.custom_id, prepared)


def _param(field: str | None, prefix: str) -> str | None:
    return None if field is None else prefix + field


def _validation_error(code: str, exc: ValidationError, number: int, *, prefix: str = "") -> LineError:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return LineError(code, f"{prefix}{where}: {first['msg']}", number, prefix + where if where else None)


def error_lines(errors: Sequence[LineError]) -> dict[str, Any]:
    """A failed batch's `errors`, in OpenAI's shape."""
    return {"object": "list", "data": [error.as_json() for error in errors]}
