"""Reading a request body: bounded in size, JSON, validated by a pydantic model, every failure a 4xx."""

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from gateway.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from protocol.numerals import whole_number

Model = TypeVar("Model", bound=BaseModel)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body, refusing (413) anything over `max_bytes` without reading it all."""
    declared = whole_number(request.headers.get("content-length", ""))
    if declared is not None and declared > max_bytes:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {max_bytes}")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes")
    return bytes(body)


async def read_model(request: Request, model: type[Model], max_bytes: int) -> Model:
    """The body parsed as JSON and validated as `model` (422 naming each bad field)."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type not in ("application/json", ""):
        raise UnsupportedMediaType(f"content-type must be application/json, not {content_type!r}")
    raw = await read_body(request, max_bytes)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"body is not valid JSON: {exc}", field=None) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest.from_validation(exc) from None
