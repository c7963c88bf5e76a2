"""Errors on `/v1` in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, validation answered 400.

The native routes keep the gateway's own shape (`gateway.errors`); an `ApiError` raised while serving `/v1` is
re-rendered here, so OpenAI clients (the `openai` package, LangChain) map each status to the exception they
expect and read `param` to learn which field was wrong.
"""

from typing import Any

from starlette.responses import JSONResponse

from gateway.errors import ApiError, InvalidRequest

_TYPES = {
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    429: "rate_limit_error",
}


class UnsupportedParameter(InvalidRequest):
    """An OpenAI parameter the mesh cannot honour: refused by name rather than silently ignored."""

    code = "unsupported_parameter"

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(f"{param}: {reason}", field=param)


class ContextLengthExceeded(InvalidRequest):
    """The prompt holds more tokens than the model's context: known only once a worker has tokenized it, and
    answered as OpenAI does (400 `context_length_exceeded`, which LangChain reads as a context overflow)."""

    code = "context_length_exceeded"

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message, field=param)


def error_type(status: int) -> str:
    """OpenAI's `type` for an error with this HTTP status."""
    return _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


def openai_status(exc: ApiError) -> int:
    """The status OpenAI would answer: its validation errors are 400, never 422."""
    return 400 if exc.status == 422 else exc.status


def openai_error_body(message: str, *, status: int, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


def openai_error_response(exc: ApiError) -> JSONResponse:
    status = openai_status(exc)
    body = openai_error_body(exc.message, status=status, code=exc.code, param=exc.field)
    return JSONResponse(body, status_code=status, headers=exc.headers)
