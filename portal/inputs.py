"""Reading request inputs into checked values; anything malformed is a 422 that names the field."""

import json
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from portal.errors import BadInput, PortalError
from protocol.numerals import whole_number
from protocol.wallet import InvalidWallet, to_checksum_address, validate_wallet

MAX_BODY_BYTES = 32 * 1024
MAX_FORM_FIELDS = 20
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_AMOUNT_FAR = Decimal(10**12)
"""The most $FAR one deposit's instructions or one withdrawal may name: far beyond any balance, within every
conversion the amount goes through."""


class UnsupportedMedia(PortalError):
    status = 415
    code = "unsupported_media_type"


class TooLarge(PortalError):
    status = 413
    code = "too_large"


async def json_body(request: Request) -> dict[str, Any]:
    """A JSON object body. Only `application/json` is read: a cross-site HTML form cannot send it."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise UnsupportedMedia("send the body as application/json")
    body = await _bounded_body(request)
    try:
        data = json.loads(body)
    except ValueError:
        raise BadInput("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadInput("the body must be a JSON object")
    return data


async def _bounded_body(request: Request) -> bytes:
    """The body, read only as far as MAX_BODY_BYTES: a larger one is refused before it is held in memory."""
    too_large = TooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
    declared = whole_number(request.headers.get("content-length", ""))
    if declared is not None and declared > MAX_BODY_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def form_body(request: Request) -> FormData:
    """An HTML form's fields (url-encoded, as the portal's pages post them; at most MAX_FORM_FIELDS)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != FORM_TYPE:
        raise UnsupportedMedia(f"send the form as {FORM_TYPE}")
    body = await _bounded_body(request)
    try:
        fields: list[tuple[str, str | UploadFile]] = [
            *parse_qsl(body.decode("latin-1"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
        ]
    except ValueError:
        raise BadInput(f"a form has at most {MAX_FORM_FIELDS} fields") from None
    return FormData(fields)


def text(data: Any, name: str, *, required: bool = True, max_chars: int = 4000) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        if required:
            raise BadInput(f"{name} is required", field=name)
        return None
    if not isinstance(value, str):
        raise BadInput(f"{name} must be a string", field=name)
    if len(value) > max_chars:
        raise BadInput(f"{name} is longer than {max_chars} characters", field=name)
    return value


def required_text(data: Any, name: str, *, max_chars: int = 4000) -> str:
    value = text(data, name, max_chars=max_chars)
    assert value is not None
    return value


def wallet(value: str | None, field: str) -> str:
    if not value:
        raise BadInput(f"{field} is required", field=field)
    try:
        return validate_wallet(value)
    except InvalidWallet as exc:
        raise BadInput(f"{field}: {exc}", field=field) from None


def any_case_wallet(value: str | None, field: str) -> str:
    """An address in any letter case, returned in its EIP-55 spelling (a mixed-case typo is still refused)."""
    if not value:
        raise BadInput(f"{field} is required", field=field)
    if value[2:].islower() or value[2:].isupper() or value[2:].isdigit():
        try:
            return to_checksum_address(value)
        except InvalidWallet as exc:
            raise BadInput(f"{field}: {exc}", field=field) from None
    return wallet(value, field)


def days(request: Request, default: int = 30) -> int:
    raw = request.query_params.get("days")
    if raw is None:
        return default
    value = whole_number(raw)
    if value is None or not 1 <= value <= 366:
        raise BadInput("days must be a whole number from 1 to 366", field="days")
    return value


def before(request: Request) -> int | None:
    """The `before` of a paginated history: the entry id the next page starts below."""
    raw = request.query_params.get("before")
    if raw is None:
        return None
    value = whole_number(raw)
    if value is None or not 1 <= value <= 2**63 - 1:
        raise BadInput("before must be a positive whole number (an entry id)", field="before")
    return value


def deposit_amount(request: Request, default: Decimal = Decimal(10)) -> Decimal:
    """The `amount` of $FAR a deposit's instructions are written for: positive, at most 18 decimals."""
    raw = request.query_params.get("amount")
    if raw is None:
        return default
    return far_amount(raw, "amount")


def far_amount(raw: str, field: str) -> Decimal:
    """A positive amount of $FAR with at most 18 decimals (a string: money is never a float), or 422 naming
    `field`."""
    try:
        value = Decimal(raw) if len(raw) <= 40 else Decimal("NaN")
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or value <= 0 or value > MAX_AMOUNT_FAR or -int(value.as_tuple().exponent) > 18:
        raise BadInput(f"{field} must be a positive amount of FAR with at most 18 decimals", field=field)
    return value
