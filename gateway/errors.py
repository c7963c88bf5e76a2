"""The errors a client can cause, and the one JSON shape every one of them is answered with.

Handlers raise an `ApiError` subclass; the app turns it into `{"error": {"code", "message", "field", "details"}}`
with the subclass's status. The shape is also what the `openai` package reads (`error.message`).
"""

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from starlette.responses import JSONResponse

from protocol.error_codes import StreamErrorCode


class ApiError(Exception):
    """A request the gateway refuses; `code` is stable, `message` says what is wrong and what to do."""

    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details
        self.headers = headers

    def response(self) -> JSONResponse:
        return error_response(
            self.status, self.code, self.message, field=self.field, details=self.details, headers=self.headers
        )


class InvalidRequest(ApiError):
    status = 422
    code = "validation_error"

    @classmethod
    def from_validation(
        cls, exc: ValidationError, *, prefix: tuple[str, ...] = ("body",), renames: Mapping[str, str] | None = None
    ) -> "InvalidRequest":
        """pydantic's errors, located in the request (`renames` maps a model's field to the client's name for it)."""
        renames = renames or {}
        details = [
            {
                "loc": [*prefix, *(renames.get(str(p), p) for p in error["loc"])],
                "msg": error["msg"],
                "type": error["type"],
            }
            for error in exc.errors()
        ]
        first = details[0]
        field = ".".join(str(part) for part in first["loc"][len(prefix) :]) or None
        return cls(f"{field or 'body'}: {first['msg']}", field=field, details=details)


class UnsupportedSchema(InvalidRequest):
    """A `response_format` the grammar engine cannot enforce: refused at admission, before any swarm time."""

    code = "unsupported_schema"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="far-mesh"'})


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class RequestIdUsed(Conflict):
    """The request id ran before and its stream is gone: running it again would be work nobody is billed for."""

    code = "request_id_used"


class MaxPriceExceeded(Conflict):
    """The price quoted at admission is above the request's `provider.max_price`: refused before anything is queued,
    reserved or held, as OpenRouter refuses a request no provider of which meets its preferences."""

    code = "max_price_exceeded"


class PreferencesUnsatisfiable(Conflict):
    """Without streaming: the worker found no route the request's `provider` preferences allow (its stream ended with
    `route_unsatisfiable`, naming the blocks); nothing was billed."""

    code = StreamErrorCode.ROUTE_UNSATISFIABLE


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class TooManyRequests(ApiError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float, code: str = "rate_limited") -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, int(retry_after_s + 0.999)))})
        self.code = code


class QuotaExceeded(ApiError):
    """What the key keeps is at its most: it frees room itself (deletes something), so no Retry-After."""

    status = 429
    code = "quota_exceeded"


class BadGateway(ApiError):
    """The request was valid but the worker that ran it failed."""

    status = 502
    code = "generation_failed"


class GatewayTimeout(ApiError):
    """The request ran past GATEWAY_STREAM_DEADLINE_S; it was cancelled and billed for what was generated. Says
    `x-should-retry: false`: OpenAI's clients retry a 5xx twice by default, and each try ran to the deadline and
    was billed again."""

    status = 504
    code = StreamErrorCode.STREAM_DEADLINE

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"x-should-retry": "false"})


class ServiceUnavailable(ApiError):
    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, code: str = "unavailable", retry_after_s: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})
        self.code = code


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message, "field": field}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)
