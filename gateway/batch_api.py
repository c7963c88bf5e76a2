"""OpenAI's Batch API: `/v1/files` (JSONL in and out) and `/v1/batches` (create, retrieve, list, cancel).

A buyer uploads a JSONL file of requests (purpose `batch`), creates a batch on it for one endpoint
(`/v1/chat/completions` or `/v1/completions`, completion window `24h`), and later downloads the output file (one
line per request that answered, with its `custom_id` and the body the endpoint would have returned) and the
error file (one line per request that failed). Every line is checked when the batch is created
(`gateway.batch_input`); one bad line fails the batch, listing each bad line in `errors` and in its error file.

Admission fixes each line's job then: its request id (derived from the batch id and the line's index, so any
re-dispatch is the same request), its model's live prices less GATEWAY_BATCH_DISCOUNT_BPS and the platform fee.
The lines run later, when the swarm has room (`gateway.batch_runner`), each billed and attributed as one session
exactly like an interactive request. Everything is scoped to the API key: another key's files and batches are
404, never 403, so ids are not probed. Errors are OpenAI's shape.
"""

import asyncio
import json
import time
from decimal import ROUND_DOWN, Context, Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message

from gateway.api_keys import ApiKey
from gateway.auth import authenticate
from gateway.batch_input import LineError, ValidLine, error_lines, parse_input
from gateway.batch_store import (
    COMPLETION_WINDOW_S,
    INPUT_PURPOSE,
    OUTPUT_PURPOSE,
    BatchStore,
    line_request_id,
    new_batch_id,
)
from gateway.bodies import read_body, read_model
from gateway.budget_admission import check_key_limits
from gateway.errors import (
    ApiError,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    UnsupportedMediaType,
)
from gateway.openai_api import _openai_errors
from gateway.state import GatewayState, state_of
from gateway.submission import apply_caps, build_job, check_max_price, max_cost_far, take_rate_limit
from protocol.live_prices import Prices, prices_now
from protocol.money import FAR_QUANTUM
from protocol.numerals import whole_number

MAX_LIST = 100
MAX_FORM_FIELDS = 8
MULTIPART_OVERHEAD_BYTES = 64 * 1024
"""What a multipart upload may add to its file's bytes (boundaries, headers, the purpose field)."""
ADMIT_YIELD_LINES = 256
"""Lines admitted between two turns of the event loop."""


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(max_length=64, description="A file uploaded with purpose batch")
    endpoint: Literal["/v1/chat/completions", "/v1/completions"]
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = Field(default=None, max_length=16)


def discounted(prices: Prices, discount_bps: int) -> Prices:
    """`prices` less `discount_bps`, each rounded down to the ledger's 18 decimals (the buyer never pays more)."""
    factor = Decimal(10_000 - discount_bps) / Decimal(10_000)

    def cut(price: Decimal) -> Decimal:
        return (price * factor).quantize(FAR_QUANTUM, rounding=ROUND_DOWN, context=Context(prec=100))

    return prices.model_copy(
        update={
            "prompt_price_per_token_far": cut(prices.prompt_price_per_token_far),
            "completion_price_per_token_far": cut(prices.completion_price_per_token_far),
        }
    )


def _store(state: GatewayState) -> BatchStore:
    return BatchStore(state.redis, file_ttl_s=state.settings.gateway_batch_file_ttl_s)


def _limit(request: Request) -> int:
    limit = whole_number(request.query_params.get("limit", "20"))
    if limit is None or not 1 <= limit <= MAX_LIST:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_LIST}", field="limit")
    return limit


def _page(items: list[dict[str, Any]], limit: int) -> JSONResponse:
    shown = items[:limit]
    return JSONResponse(
        {
            "object": "list",
            "data": shown,
            "first_id": shown[0]["id"] if shown else None,
            "last_id": shown[-1]["id"] if shown else None,
            "has_more": len(items) > limit,
        }
    )


async def _upload(request: Request) -> Response:
    state = state_of(request)
    key = await authenticate(request)
    most = state.settings.gateway_batch_max_file_bytes
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UnsupportedMediaType("upload a file as multipart/form-data with the fields file and purpose")
    await take_rate_limit(state, key)
    store = _store(state)
    most_files = state.settings.gateway_batch_max_files
    kept = len(await store.files(key.key_id, purpose=INPUT_PURPOSE, limit=most_files, after=None))
    if kept >= most_files:
        raise QuotaExceeded(
            f"this API key keeps {kept} input files, the most it may (GATEWAY_BATCH_MAX_FILES); delete one first",
            field="file",
        )
    # The whole body, read only up to its limit, then parsed: Starlette would spool a larger one to disk first.
    body = await read_body(request, most + MULTIPART_OVERHEAD_BYTES)
    try:
        async with _replayed(request, body).form(max_files=1, max_fields=MAX_FORM_FIELDS) as form:
            unknown = sorted(set(form.keys()) - {"file", "purpose"})
            if unknown:
                raise InvalidRequest(f"unknown form field {unknown[0]!r}; send file and purpose", field=unknown[0])
            purpose, upload = form.get("purpose"), form.get("file")
            if purpose != INPUT_PURPOSE:
                message = f"purpose must be {INPUT_PURPOSE!r}, the only purpose files serve here"
                raise InvalidRequest(message, field="purpose")
            if not isinstance(upload, UploadFile):
                raise InvalidRequest("the form needs a file field holding the JSONL input", field="file")
            data = await upload.read(most + 1)
            filename = upload.filename or "input.jsonl"
    except HTTPException as exc:  # a form Starlette cannot parse, or with too many parts
        raise InvalidRequest(f"the upload is not a form this route reads: {exc.detail}", field="file") from None
    if len(data) > most:
        raise PayloadTooLarge(f"the file is over {most} bytes, the most a file may be (GATEWAY_BATCH_MAX_FILE_BYTES)")
    # OpenAI takes any file and checks it when a batch is created; so here: bytes that are not UTF-8 become U+FFFD
    # and fail that batch's validation, naming the line
    text = data.decode(errors="replace")
    meta = await store.put_file(key.key_id, filename[:256], INPUT_PURPOSE, text)
    return JSONResponse(meta)


def _replayed(request: Request, body: bytes) -> Request:
    """`request` with `body`, already read, as what its receive channel gives."""

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


async def upload_file(request: Request) -> Response:
    return await _openai_errors(_upload(request))


async def _list_files(request: Request) -> Response:
    state = state_of(request)
    key = await authenticate(request)
    limit = _limit(request)
    files = await _store(state).files(
        key.key_id, purpose=request.query_params.get("purpose"), limit=limit, after=request.query_params.get("after")
    )
    return _page(files, limit)


async def list_files(request: Request) -> Response:
    return await _openai_errors(_list_files(request))


async def _retrieve_file(request: Request) -> Response:
    key = await authenticate(request)
    return JSONResponse(await _store(state_of(request)).file(key.key_id, request.path_params["file_id"]))


async def retrieve_file(request: Request) -> Response:
    return await _openai_errors(_retrieve_file(request))


async def _file_content(request: Request) -> Response:
    key = await authenticate(request)
    text = await _store(state_of(request)).content(key.key_id, request.path_params["file_id"])
    return Response(text, media_type="application/jsonl")


async def file_content(request: Request) -> Response:
    return await _openai_errors(_file_content(request))


async def _delete_file(request: Request) -> Response:
    key = await authenticate(request)
    file_id = request.path_params["file_id"]
    await _store(state_of(request)).delete_file(key.key_id, file_id)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})


async def delete_file(request: Request) -> Response:
    return await _openai_errors(_delete_file(request))


async def _create_batch(request: Request) -> Response:
    state = state_of(request)
    key = await authenticate(request)
    body = await read_model(request, BatchCreate, state.settings.gateway_max_body_bytes)
    await take_rate_limit(state, key)
    if key.limits.budgeted:
        raise Forbidden(
            "batches are not offered to API keys with a budget yet; use a key without max_budget_far or "
            "period_budget_far",
            field="input_file_id",
        )
    store = _store(state)
    try:
        input_file = await store.file(key.key_id, body.input_file_id)
    except NotFound:
        raise NotFound(f"no file {body.input_file_id!r}", field="input_file_id") from None
    if input_file["purpose"] != INPUT_PURPOSE:
        raise InvalidRequest(f"file {body.input_file_id!r} is not a batch input", field="input_file_id")
    # Checking 10,000 lines takes seconds of CPU: on a thread, so the streams this process relays keep flowing.
    text = await store.content(key.key_id, body.input_file_id)
    parsed = await asyncio.to_thread(parse_input, text, body.endpoint, state.settings)
    errors = list(parsed.errors)
    lines: list[str] = []
    batch_id = new_batch_id()
    prices: dict[str, Prices] = {}
    if not errors:
        for index, line in enumerate(parsed.lines):
            if index % ADMIT_YIELD_LINES == ADMIT_YIELD_LINES - 1:
                await asyncio.sleep(0)  # a turn for the streams between runs of lines
            stored = await _admit_line(state, key, batch_id, index, line, prices)
            if isinstance(stored, LineError):
                errors.append(stored)
            else:
                lines.append(stored)
    now = int(time.time())
    meta: dict[str, Any] = {
        "id": batch_id,
        "object": "batch",
        "endpoint": body.endpoint,
        "errors": None,
        "input_file_id": body.input_file_id,
        "completion_window": body.completion_window,
        "status": "in_progress",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": now,
        "in_progress_at": now,
        "expires_at": now + COMPLETION_WINDOW_S,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": len(parsed.lines), "completed": 0, "failed": 0},
        "metadata": body.metadata,
        "discount_bps": state.settings.gateway_batch_discount_bps,
        "prices": {model: p.quote() for model, p in prices.items()},
    }
    if errors:
        error_text = "".join(json.dumps(e.as_json()) + "\n" for e in errors)
        error_file = await store.put_file(key.key_id, "batch_errors.jsonl", OUTPUT_PURPOSE, error_text)
        meta |= {
            "status": "failed",
            "in_progress_at": None,
            "failed_at": now,
            "errors": error_lines(errors),
            "error_file_id": error_file["id"],
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "prices": {},
        }
        lines = []
    await store.create_batch(key.key_id, meta, lines)
    return JSONResponse(meta)


async def _admit_line(
    state: GatewayState, key: ApiKey, batch_id: str, index: int, line: ValidLine, prices: dict[str, Prices]
) -> str | LineError:
    """Line `index` as the runner will enqueue it (its job, JSON), prices fixed now; or why it cannot run."""
    prepared = line.prepared
    number = index + 1
    try:
        generate = apply_caps(state.settings, prepared.generate, prepared.prompt_field, chat=prepared.chat)
        if generate.user_wallet is not None and generate.user_wallet != key.wallet:
            raise Forbidden(f"user_wallet {generate.user_wallet} is not this API key's wallet", field="user_wallet")
        model_id = prepared.body.model
        check_key_limits(key, model_id)
    except ApiError as exc:
        return LineError(exc.code, exc.message, number, None if exc.field is None else f"body.{exc.field}")
    spec = state.settings.catalog.get(model_id)
    assert spec is not None  # parse_input checked it
    if model_id not in prices:
        quoted = await prices_now(state.redis, state.settings.catalog, spec)
        prices[model_id] = discounted(quoted, state.settings.gateway_batch_discount_bps)
    price = prices[model_id]
    try:  # the line's provider.max_price against the batch's own (discounted) quote
        check_max_price(generate, price)
    except ApiError as exc:
        return LineError(exc.code, exc.message, number, f"body.{exc.field}")
    request_id = line_request_id(batch_id, index)
    job = build_job(state, generate, spec, price, request_id, key, prepared.origin(answered_whole=True))
    most = max_cost_far(generate, price, prepared.turns)
    return json.dumps({"custom_id": line.custom_id, "chat": prepared.chat, "most_far": str(most), "job": job.payload()})


async def create_batch(request: Request) -> Response:
    return await _openai_errors(_create_batch(request))


async def _retrieve_batch(request: Request) -> Response:
    key = await authenticate(request)
    return JSONResponse(await _store(state_of(request)).batch(key.key_id, request.path_params["batch_id"]))


async def retrieve_batch(request: Request) -> Response:
    return await _openai_errors(_retrieve_batch(request))


async def _list_batches(request: Request) -> Response:
    key = await authenticate(request)
    limit = _limit(request)
    found = await _store(state_of(request)).batches(key.key_id, limit=limit, after=request.query_params.get("after"))
    return _page(found, limit)


async def list_batches(request: Request) -> Response:
    return await _openai_errors(_list_batches(request))


async def _cancel_batch(request: Request) -> Response:
    key = await authenticate(request)
    store = _store(state_of(request))
    batch_id = request.path_params["batch_id"]
    batch = await store.batch(key.key_id, batch_id)
    if batch["status"] not in ("validating", "in_progress", "cancelling"):
        raise Conflict(f"batch {batch_id!r} is {batch['status']}; only a running batch can be cancelled")
    return JSONResponse(await store.cancel(key.key_id, batch_id))


async def cancel_batch(request: Request) -> Response:
    return await _openai_errors(_cancel_batch(request))


async def files(request: Request) -> Response:
    """/v1/files: one route for both methods, so a 405 names both in Allow."""
    return await (upload_file(request) if request.method == "POST" else list_files(request))


async def file(request: Request) -> Response:
    return await (delete_file(request) if request.method == "DELETE" else retrieve_file(request))


async def batches(request: Request) -> Response:
    return await (create_batch(request) if request.method == "POST" else list_batches(request))
