"""The seed's inference API: POST /inference/generate (SSE), resume a stream, cancel a request."""

import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.auth import authenticate
from gateway.bodies import read_model
from gateway.errors import InvalidRequest
from gateway.inflight import Lease
from gateway.relay import parse_entry_id
from gateway.sse import EventStreamResponse, Render, render_native
from gateway.state import GatewayState, state_of
from gateway.submission import admit, owned_request, submit
from protocol import keys
from protocol.requests import REQUEST_ID_PATTERN, GenerateRequest


def relay_response(
    state: GatewayState,
    lease: Lease,
    *,
    after_id: str = "0-0",
    render: Render = render_native,
) -> EventStreamResponse:
    """Stream `lease`'s token stream to the client, holding the lease while the connection lasts."""
    state.inflight.attach(lease)

    async def on_close(finished: bool, client_left: bool) -> None:
        await state.inflight.release(lease, finished=finished, client_left=client_left)

    return EventStreamResponse(
        state.relay,
        keys.token_stream(lease.request_id),
        after_id=after_id,
        render=render,
        on_close=on_close,
        headers={"x-request-id": lease.request_id},
        active_gauge=state.metrics.stream_opened,
    )


async def generate(request: Request) -> Response:
    state = state_of(request)
    key = await authenticate(request)
    body = await read_model(request, GenerateRequest, state.settings.gateway_max_body_bytes)
    accepted = await submit(state, body, key)
    return relay_response(state, accepted.lease)


def _request_id(request: Request) -> str:
    request_id: str = request.path_params["request_id"]
    if not re.match(REQUEST_ID_PATTERN, request_id):
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
    after_id = request.headers.get("last-event-id", "0-0").strip() or "0-0"
    try:
        parse_entry_id(after_id)
    except ValueError:
        raise InvalidRequest(
            "Last-Event-ID must be an event id this API sent, such as 1700000000000-0",
            field="Last-Event-ID",
            details=[{"loc": ["header", "Last-Event-ID"], "msg": "not a stream entry id", "type": "value_error"}],
        ) from None
    lease = await owned_request(state, request_id, key)
    await admit(state, lease)
    return relay_response(state, lease, after_id=after_id)


async def cancel(request: Request) -> Response:
    """POST /inference/{request_id}/cancel: ask the worker to stop; it ends the stream with a cancelled event."""
    state = state_of(request)
    key = await authenticate(request)
    request_id = _request_id(request)
    await owned_request(state, request_id, key)
    last = await state.redis.xrevrange(keys.token_stream(request_id), count=1)
    if last and last[0][1].get("kind") in ("done", "error"):
        return JSONResponse({"request_id": request_id, "status": "finished"})
    await state.redis.set(keys.cancel_flag(request_id), "cancelled by client", ex=keys.TOKEN_STREAM_TTL_S)
    return JSONResponse({"request_id": request_id, "status": "cancelling"}, status_code=202)
