"""The seed's inference API: POST /inference/generate (SSE), resume a stream, cancel a request."""

import re

import redis.asyncio as aioredis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.auth import authenticate
from gateway.bodies import read_model
from gateway.errors import InvalidRequest
from gateway.following import slot_hooks
from gateway.inflight import Slot
from gateway.request_trace import RequestTrace
from gateway.sse import EventStreamResponse, Render, render_native
from gateway.state import GatewayState, state_of
from gateway.submission import admit, owned_request, submit, take_rate_limit
from protocol import keys
from protocol.events import FINAL_KINDS, KIND_FIELD
from protocol.requests import REQUEST_ID_PATTERN, GenerateRequest
from protocol.stream_ids import BEFORE_FIRST, EntryId, parse_entry_id


def relay_response(
    state: GatewayState,
    slot: Slot,
    *,
    after_id: str = BEFORE_FIRST,
    render: Render = render_native,
    trace: RequestTrace | None = None,
) -> EventStreamResponse:
    """Stream `slot`'s request to the client, holding the slot while the connection lasts; `trace` (a new
    submission's) is ended with the response."""
    settings = state.settings
    hooks = slot_hooks(state, slot, trace)
    return EventStreamResponse(
        state.shard(slot.followed.model_id).relay,
        keys.token_stream(slot.followed.request_id),
        request_id=slot.followed.request_id,
        after_id=after_id,
        render=render,
        on_open=hooks.on_open,
        on_close=hooks.on_close,
        on_deadline=hooks.on_deadline,
        deadline_s=settings.gateway_stream_deadline_s,
        max_unsent_bytes=settings.gateway_max_unsent_bytes,
        headers={"x-request-id": slot.followed.request_id},
        active_gauge=state.metrics.stream_opened,
    )


async def generate(request: Request) -> Response:
    state = state_of(request)
    key = await authenticate(request)
    body = await read_model(request, GenerateRequest, state.settings.gateway_max_body_bytes)
    accepted = await submit(state, body, key)
    return relay_response(state, accepted.slot, trace=accepted.trace)


def _request_id(request: Request) -> str:
    request_id: str = request.path_params["request_id"]
    if not re.fullmatch(REQUEST_ID_PATTERN, request_id):
        raise InvalidRequest(
            "request_id must be 1-64 characters: letters, digits, _ . : -",
            field="request_id",
            details=[{"loc": ["path", "request_id"], "msg": "invalid request id", "type": "string_pattern_mismatch"}],
        )
    return request_id


async def resume(request: Request) -> Response:
    """GET /inference/{request_id}/stream: replay the stream from the start, or after `Last-Event-ID`."""
    state = state_of(request)
    key = await authenticate(request)
    request_id = _request_id(request)
    after_id = request.headers.get("last-event-id", BEFORE_FIRST).strip() or BEFORE_FIRST
    try:
        after = parse_entry_id(after_id)
    except ValueError:
        raise _not_sent("not a stream entry id") from None
    await take_rate_limit(state, key)
    followed = await owned_request(state, request_id, key)
    if await _read_to_the_end(state.shard(followed.model_id).redis, request_id, after):
        # 204 is the one answer that stops an EventSource from reconnecting, again and again, to a stream it has read
        return Response(status_code=204, headers={"x-request-id": request_id})
    return relay_response(state, await admit(state, followed), after_id=after_id)


def _not_sent(why: str) -> InvalidRequest:
    return InvalidRequest(
        "Last-Event-ID must be an event id this API sent for this request, such as 1700000000000-0",
        field="Last-Event-ID",
        details=[{"loc": ["header", "Last-Event-ID"], "msg": why, "type": "value_error"}],
    )


async def _read_to_the_end(redis: aioredis.Redis, request_id: str, after: EntryId) -> bool:
    """True when the stream's final event is at or before `after`: the client has everything there is (`redis`:
    the request's shard). An id past the last entry of a stream still running was never sent for it (another
    request's, or made up): 422, since following from it would skip what comes before it, or wait for ever."""
    last = await redis.xrevrange(keys.token_stream(request_id), count=1)
    last_id = parse_entry_id(last[0][0]) if last else parse_entry_id(BEFORE_FIRST)
    if last and last[0][1].get(KIND_FIELD) in FINAL_KINDS:
        return last_id <= after
    if after > last_id:
        raise _not_sent("after the last event of this request's stream")
    return False


async def cancel(request: Request) -> Response:
    """POST /inference/{request_id}/cancel: ask the worker to stop; it ends the stream with a cancelled event."""
    state = state_of(request)
    key = await authenticate(request)
    request_id = _request_id(request)
    followed = await owned_request(state, request_id, key)
    shard = state.shard(followed.model_id).redis  # the owner record's model, never one the client names
    last = await shard.xrevrange(keys.token_stream(request_id), count=1)
    if last and last[0][1].get(KIND_FIELD) in FINAL_KINDS:
        return JSONResponse({"request_id": request_id, "status": "finished"})
    await shard.set(keys.cancel_flag(request_id), "cancelled by client", ex=keys.TOKEN_STREAM_TTL_S)
    return JSONResponse({"request_id": request_id, "status": "cancelling"}, status_code=202)
