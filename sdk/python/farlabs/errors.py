"""Every way a call can fail, as one exception class per gateway error code.

The gateway answers errors as `{"error": {"code", "message", "field", ...}}` on its native routes and in OpenAI's
shape, `{"error": {"message", "type", "param", "code"}}`, on `/v1`; `error_from_response` reads either (`param`
is the field) and turns it into the matching class, so callers write `except RateLimited as e:
sleep(e.retry_after)` instead of reading status codes. A failure inside a running generation (the stream's error
event) is `GenerationFailed`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any


class FarMeshError(Exception):
    """The base of every error this package raises."""


class APIConnectionError(FarMeshError):
    """The gateway could not be reached (or kept dropping the connection) after every configured retry."""


class APIError(FarMeshError):
    """The gateway refused a request: `status` is the HTTP status, `code` the stable machine-readable reason."""

    status: int = 0

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "error",
        field: str | None = None,
        details: list[dict[str, Any]] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.code = code
        self.field = field
        self.details = details or []
        self.request_id = request_id

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        return f"{self.status} {self.code}: {self.message}{where}"


class InvalidRequest(APIError):
    """422 (or 400): a field is invalid; `field` names it, `details` lists every problem."""

    status = 422


class Unauthorized(APIError):
    """401: the API key is missing, malformed or revoked."""

    status = 401


class Forbidden(APIError):
    """403: the key may not do this (e.g. `user_wallet` is not the key's wallet, or another key's request)."""

    status = 403


class NotFound(APIError):
    """404: unknown model, or a request id this key never submitted (or finished over an hour ago)."""

    status = 404


class Conflict(APIError):
    """409: the `request_id` belongs to another API key (choose another), or one of the subclasses below."""

    status = 409


class MaxPriceExceeded(Conflict):
    """409 max_price_exceeded: a price the gateway quotes now is above the request's `provider` `max_price`
    (`field` names which, e.g. `provider.max_price.completion`; the message gives the price and the cap). Nothing
    was queued or held: raise the cap, or retry when `models()` quotes less."""


class InsufficientBalance(APIError):
    """402 insufficient_balance: the request's most it may cost (its prompt and `max_tokens` at their prices) is
    more than the wallet's prepaid balance has available. Deposit $FAR (`far-mesh deposits make`, or the portal's
    balance page) or lower `max_tokens`. `available_far` and `max_cost_far` are the gateway's figures when it sent
    them (its native error body does; OpenAI's shape has no room for them)."""

    status = 402

    def __init__(
        self,
        message: str,
        *,
        available_far: Decimal | None = None,
        max_cost_far: Decimal | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.available_far = available_far
        self.max_cost_far = max_cost_far


class PayloadTooLarge(APIError):
    """413: the request body is larger than the gateway accepts."""

    status = 413


class UnsupportedMediaType(APIError):
    """415: the body was not JSON (only raised if a caller bypasses this package's encoding)."""

    status = 415


class RateLimited(APIError):
    """429: the key's request rate or concurrent-stream limit; `retry_after` is the seconds the gateway asks for."""

    status = 429

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServiceUnavailable(APIError):
    """503: the gateway cannot serve now (e.g. it lost Redis); `retry_after` says when to try again."""

    status = 503

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ModelUnavailable(ServiceUnavailable):
    """503 no_healthy_swarm: no healthy swarm serves the model right now."""


class GenerationFailed(APIError):
    """The generation itself failed or was stopped (the stream's error event, a 502, or a 504 stream_deadline):
    tokens already delivered are billed."""

    status = 502

    def __init__(
        self,
        message: str,
        *,
        tokens_generated: int | None = None,
        total_cost_far: Decimal | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.tokens_generated = tokens_generated
        self.total_cost_far = total_cost_far


class RouteUnsatisfiable(GenerationFailed):
    """route_unsatisfiable: the request's `provider` preferences (only, ignore, min_reputation, allow_fallbacks)
    leave some of the model's blocks without an allowed server; the message names the blocks. A stream ends with
    it as its error event (the worker fails fast rather than wait for a route), a non-streamed OpenAI route
    answers it as a 409. Nothing is billed unless tokens were delivered; retrying with the same preferences fails
    the same way, so loosen them (or allow fallbacks)."""

    status = 409


_STREAM_ERRORS: dict[str, type[GenerationFailed]] = {"route_unsatisfiable": RouteUnsatisfiable}
"""Error-event codes with a class of their own; every other code is a plain `GenerationFailed`."""


def generation_error(code: str) -> type[GenerationFailed]:
    """The class a stream's error event with `code` raises."""
    return _STREAM_ERRORS.get(code, GenerationFailed)


_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    402: InsufficientBalance,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: InvalidRequest,
    429: RateLimited,
    502: GenerationFailed,
    503: ServiceUnavailable,
    504: ServiceUnavailable,
}


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The Retry-After header in seconds (the gateway sends integer seconds); None when absent or unreadable."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def error_from_response(
    status: int, headers: Mapping[str, str], body: bytes, *, request_id: str | None = None
) -> APIError:
    """The typed exception for a non-2xx answer, read from the gateway's JSON error body when there is one."""
    code, message, field, details = f"http_{status}", f"HTTP {status}", None, None
    try:
        error = json.loads(body)["error"]
        if isinstance(error, dict):
            # OpenAI's shape names the field `param`, and its `code` may be null: then its `type` says most
            code = str(error.get("code") or error.get("type") or code)
            message = str(error.get("message") or message)
            field = error.get("field") or error.get("param")
            details = error.get("details")
        elif isinstance(error, str):
            message = error
    except (ValueError, KeyError, TypeError):
        text = body.decode("utf-8", errors="replace").strip()
        message = f"{message}: {text[:200]}" if text else message
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = InvalidRequest if 400 <= status < 500 else ServiceUnavailable
    if cls is ServiceUnavailable and code == "no_healthy_swarm":
        cls = ModelUnavailable
    elif code == "stream_deadline":  # 504: the request ran past the gateway's deadline, billed for its tokens
        cls = GenerationFailed
    elif code in _STREAM_ERRORS:  # an error event's code, answered as HTTP by a non-streamed route
        cls = _STREAM_ERRORS[code]
    elif cls is Conflict and code == "max_price_exceeded":
        cls = MaxPriceExceeded
    kwargs: dict[str, Any] = {
        "status": status,
        "code": code,
        "field": field if isinstance(field, str) else None,
        "details": details if isinstance(details, list) else None,
        "request_id": request_id,
    }
    if issubclass(cls, (RateLimited, ServiceUnavailable)):
        kwargs["retry_after"] = retry_after_seconds(headers)
    if cls is InsufficientBalance:
        figures = details[0] if isinstance(details, list) and details and isinstance(details[0], dict) else {}
        kwargs["available_far"] = _decimal(figures.get("balance_far"))
        kwargs["max_cost_far"] = _decimal(figures.get("max_cost_far"))
    return cls(message, **kwargs)


def _decimal(value: Any) -> Decimal | None:
    if not isinstance(value, str):
        return None
    try:
        return Decimal(value)
    except ArithmeticError:
        return None
