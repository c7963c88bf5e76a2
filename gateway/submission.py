"""From a validated request to a running job: caps, wallet, idempotency, limits, swarm health, enqueue.

A request id is owned by the API key that first submitted it (`keys.request_owner`, which outlives the request's
stream). The same key sending it again attaches to the running (or finished) stream and never starts or bills a
second job; another key gets 409. Once the stream and its owner have expired (or Redis lost them), the ledger
remembers every request id that ever ran: such an id is refused with 409 rather than run a second time.
Every submission, new or re-attaching, takes one from the key's rate limit and one connection slot.
"""

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal

import telemetry
from gateway.api_keys import ApiKey
from gateway.budget_admission import check_key_limits
from gateway.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    MaxPriceExceeded,
    NotFound,
    RequestIdUsed,
    ServiceUnavailable,
    TooManyRequests,
    UnsupportedSchema,
)
from gateway.inflight import FollowedRequest, Slot
from gateway.request_trace import RequestTrace
from gateway.settings import GatewaySettings
from gateway.state import GatewayState
from protocol import keys
from protocol.catalog import ModelSpec
from protocol.jobs import ChatTurn, GenerateJob, enqueue_generate
from protocol.live_prices import Prices, prices_now
from protocol.money import session_cost
from protocol.ownership import RequestOwner
from protocol.requests import GenerateRequest, SamplingOptions
from protocol.structured import JsonObjectFormat, JsonSchemaFormat, SchemaRefused, grammar_of
from protocol.swarm import read_swarm_snapshot
from protocol.tools import ToolUse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Origin:
    """What the route that took a request knows beyond its body."""

    prompt_field: str = "prompt"
    """The client's field the prompt came from, named in error messages (chat: "messages")."""
    messages: list[ChatTurn] | None = None
    """A chat request's turns, which the worker formats with the model's chat template."""
    tool_use: ToolUse | None = None
    """A chat request's tools, checked by the route (`gateway.openai_api`), enforced by the worker's grammar."""
    answered_whole: bool = False
    """The client gets the answer only once the request has ended (OpenAI without streaming, a Batch API line):
    it receives no token of a request that fails, and so is billed none (`GenerateJob.answered_whole`)."""


@dataclass(frozen=True)
class Accepted:
    """A request the caller may stream, new or submitted earlier by the same API key."""

    request_id: str
    spec: ModelSpec
    slot: Slot
    trace: RequestTrace = field(default_factory=RequestTrace, compare=False)
    """The request's root span and admission time (`gateway.request_trace`), ended when its answer is."""


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def resolve_model(state: GatewayState, model_id: str | None, *, field: str = "model_id") -> ModelSpec:
    """The catalog entry for `model_id` (DEFAULT_MODEL_ID when None); 404 when the mesh does not sell it."""
    catalog = state.settings.catalog
    spec = catalog.get(model_id or catalog.default_model_id)
    if spec is None:
        raise NotFound(
            f"unknown model {model_id!r}; GET /models lists the models on sale: {catalog.model_ids}", field=field
        )
    return spec


def apply_caps(settings: GatewaySettings, body: GenerateRequest, prompt_field: str, *, chat: bool) -> GenerateRequest:
    """`body` within the configured caps: an omitted max_tokens shrinks to the cap, an explicit one over it is 422.

    A chat's prompt is not capped as a whole: each of its texts was, by itself (`gateway.openai_api`)."""
    if "max_tokens" not in body.model_fields_set and body.max_tokens > settings.gateway_max_tokens:
        body = body.model_copy(update={"max_tokens": settings.gateway_max_tokens})
    problems = []
    if not chat and len(body.prompt) > settings.gateway_max_prompt_chars:
        problems.append(
            (
                prompt_field,
                f"prompt has {len(body.prompt)} characters; at most {settings.gateway_max_prompt_chars} are accepted",
                "string_too_long",
            )
        )
    if body.max_tokens > settings.gateway_max_tokens:
        problems.append(("max_tokens", f"max_tokens may be at most {settings.gateway_max_tokens}", "less_than_equal"))
    if body.n > settings.gateway_max_choices:
        most = settings.gateway_max_choices
        problems.append(("n", f"n asks for {body.n} choices; this gateway samples at most {most}", "less_than_equal"))
    if problems:
        field, msg, kind = problems[0]
        details = [{"loc": ["body", f], "msg": m, "type": t} for f, m, t in problems]
        raise InvalidRequest(f"{field}: {msg}", field=field, details=details)
    if isinstance(body.response_format, JsonObjectFormat | JsonSchemaFormat):
        _check_grammar(body.response_format)
    return body


def _check_grammar(response_format: JsonObjectFormat | JsonSchemaFormat) -> None:
    """Compile the format as the worker will (`protocol.structured.grammar_of`): a schema the engine refuses is
    answered now, naming where in it, rather than failing on a worker after the prompt went through the swarm."""
    try:
        grammar_of(response_format)
    except SchemaRefused as exc:
        where = [part.replace("~1", "/").replace("~0", "~") for part in exc.where.split("/")[1:]]
        hint = (
            "; remove it, or set strict to false to have keywords the engine cannot enforce ignored"
            if "Unimplemented keys" in exc.reason
            else ""
        )
        message = f"response_format: the schema cannot be enforced: {exc}{hint}"
        loc = ["body", "response_format", "json_schema", "schema", *where]
        raise UnsupportedSchema(
            message, field="response_format", details=[{"loc": loc, "msg": str(exc), "type": "unsupported_schema"}]
        ) from None


async def submit(state: GatewayState, body: GenerateRequest, key: ApiKey, origin: Origin = Origin()) -> Accepted:
    """Start `body` as a job billed to `key`'s wallet, or attach to it if this key already submitted its id."""
    trace = RequestTrace()
    try:
        with telemetry.span("gateway.admission", parent=trace.root):
            return await _submit(state, body, key, trace, origin)
    except BaseException as exc:
        trace.refused(exc)
        raise


async def _submit(
    state: GatewayState,
    body: GenerateRequest,
    key: ApiKey,
    trace: RequestTrace,
    origin: Origin,
) -> Accepted:
    body = apply_caps(state.settings, body, origin.prompt_field, chat=origin.messages is not None)
    if body.user_wallet is not None and body.user_wallet != key.wallet:
        raise Forbidden(
            f"user_wallet {body.user_wallet} is not the wallet of this API key ({key.wallet}); "
            "omit it or use a key issued for that wallet",
            field="user_wallet",
        )
    spec = resolve_model(state, body.model_id)
    check_key_limits(key, spec.model_id)
    request_id = body.request_id or new_request_id()
    redis = state.redis

    # Three reads in one round trip's time, on the way to the first token (#32); the rate limit still answers first,
    # and the swarm's snapshot is read even for a repeated request id, which rarely happens and never needs it
    _, owner, snapshot = await asyncio.gather(
        take_rate_limit(state, key),
        redis.get(keys.request_owner(request_id)),
        read_swarm_snapshot(redis, spec.model_id),
    )
    if owner is None:
        if snapshot is None or not snapshot.healthy:
            reason = (
                "no worker reported on its swarm in the last minute"
                if snapshot is None
                else ("some of its blocks have no online server")
            )
            raise ServiceUnavailable(
                f"model {spec.model_id} cannot serve now: {reason}; retry later", code="no_healthy_swarm"
            )
        if body.request_id is not None:
            await _refuse_if_used(state, request_id)
        new_owner = RequestOwner(key.key_id, spec.model_id).encode()
        if await redis.set(keys.request_owner(request_id), new_owner, nx=True, ex=keys.REQUEST_OWNER_TTL_S):
            slot = await _start(state, body, spec, request_id, key, origin, trace.traceparent())
            trace.admitted(request_id, spec.model_id, new_job=True)
            return Accepted(request_id, spec, slot, trace)
        owner = await redis.get(keys.request_owner(request_id))  # lost a race with another submission
    first = RequestOwner.decode(owner)
    if first.api_key_id != key.key_id:
        raise Conflict(
            f"request_id {request_id!r} is already used by another API key; choose another", field="request_id"
        )
    spec = resolve_model(state, first.model_id)  # the first submission's model, whatever this body says
    if not await state.shard(spec.model_id).redis.exists(*keys.job_traces(request_id)):
        # Its first submission lost Redis between the owner key and the job, and could not undo the key either:
        # nothing was queued, so following it would wait for nothing. Start it now, as that submission meant to.
        await _refuse_if_used(state, request_id)
        log.warning("request never queued is started by its retry request_id=%s", request_id)
        slot = await _start(state, body, spec, request_id, key, origin, trace.traceparent())
        trace.admitted(request_id, spec.model_id, new_job=True)
        return Accepted(request_id, spec, slot, trace)
    slot = await admit(state, following(key, spec.model_id, request_id))
    trace.admitted(request_id, spec.model_id, new_job=False)
    return Accepted(request_id, spec, slot, trace)


async def _refuse_if_used(state: GatewayState, request_id: str) -> None:
    """409 `request_id_used` when the ledger holds a request that ran under `request_id`."""
    if await state.request_history.used(request_id):
        raise RequestIdUsed(
            f"request_id {request_id!r} was used by a request that has finished; its stream is no longer "
            "kept, and an id never runs twice: send the request with a new request_id",
            field="request_id",
        )


async def take_rate_limit(state: GatewayState, key: ApiKey) -> None:
    """One request from `key`'s per-minute budget; 429 with Retry-After when it is spent."""
    per_minute = key.limits.rate_limit_per_minute or state.settings.gateway_rate_limit_per_minute
    wait_s = await state.rate_limiter.take(key.key_id, per_minute=per_minute)
    if wait_s > 0:
        raise TooManyRequests(
            f"rate limit of {per_minute} requests per minute reached for this API key",
            retry_after_s=wait_s,
        )


async def _start(
    state: GatewayState,
    body: GenerateRequest,
    spec: ModelSpec,
    request_id: str,
    key: ApiKey,
    origin: Origin,
    trace_parent: str | None,
) -> Slot:
    """Admit and enqueue the request whose owner key was just written; undo both if either fails, so a retry
    with the same id starts it afresh and no slot is left taken.

    The prices are read once, here: the reservation, the hold and the job all use the prices quoted now, and the
    job carries them to the worker and the ledger whatever the pricer sets while the request runs."""
    followed = following(key, spec.model_id, request_id)
    slot: Slot | None = None
    reserved = held = False
    try:
        slot = await admit(state, followed)
        prices = await prices_now(state.redis, state.settings.catalog, spec)
        check_max_price(body, prices)
        if key.limits.budgeted or state.balances is not None:
            most = max_cost_far(body, prices, origin.messages)
            if key.limits.budgeted:
                await state.budgets.reserve(key, request_id, most)
                reserved = True
            if state.balances is not None:
                await state.balances.hold(key.wallet, request_id, most)
                held = True
        with telemetry.span("gateway.enqueue"):
            await _enqueue(state, build_job(state, body, spec, prices, request_id, key, origin, trace_parent))
        return slot
    except BaseException:
        if reserved:
            await state.budgets.release(key.key_id, request_id)
        if held and state.balances is not None:
            await state.balances.release(key.wallet, request_id)
        async with state.redis.pipeline(transaction=False) as pipe:
            pipe.delete(keys.request_owner(request_id))
            if slot is not None:
                streams_key, _ = followed.keys
                pipe.zrem(streams_key, slot.connection_id)
            await pipe.execute()
        raise


def check_max_price(body: GenerateRequest, prices: Prices) -> None:
    """409 when a price quoted now is above the request's `provider.max_price`: the buyer said it would not pay
    it, so nothing is queued (the job would be billed at this quote, fixed on it)."""
    if body.provider is None:
        return
    refused = body.provider.price_refusal(prices.prompt_price_per_token_far, prices.completion_price_per_token_far)
    if refused is not None:
        field, message = refused
        raise MaxPriceExceeded(message, field=field)


PROMPT_TOKENS_PER_TURN = 16
"""Tokens a chat template may add per turn (role markers, special tokens) beyond the turn's own text."""


def max_cost_far(body: GenerateRequest, prices: Prices, messages: list[ChatTurn] | None) -> Decimal:
    """The most the request can cost, which a budgeted key reserves: max_tokens at the completion price plus, at
    the prompt price, more prompt tokens than the prompt can have (the gateway has no tokenizer; Llama-style and
    byte-level tokenizers make at most one token per UTF-8 byte, and a chat template adds a few per turn). With n
    choices, max_tokens is reserved once per choice; the prompt once, as it is billed."""
    prompt_bound = len(body.prompt.encode()) + PROMPT_TOKENS_PER_TURN * (1 + len(messages or ()))
    return session_cost(
        prompt_bound, body.max_tokens * body.n, prices.prompt_price_per_token_far, prices.completion_price_per_token_far
    )


def following(key: ApiKey, model_id: str, request_id: str) -> FollowedRequest:
    """What a connection of `key` follows: the request, counted against the key's own stream limit."""
    return FollowedRequest(key.key_id, model_id, request_id, key.limits.max_concurrent_streams)


async def admit(state: GatewayState, followed: FollowedRequest) -> Slot:
    """A concurrent-stream slot for one more connection of `followed`'s key; 429 when it already holds the most
    (the key's own limit, else GATEWAY_MAX_CONCURRENT_STREAMS)."""
    limit = followed.max_streams or state.settings.gateway_max_concurrent_streams
    slot = await state.inflight.admit(followed, limit)
    if slot is None:
        raise TooManyRequests(
            f"this API key already streams {limit} requests, the most allowed at once; wait for one to finish",
            retry_after_s=1,
            code="too_many_streams",
        )
    return slot


async def _enqueue(state: GatewayState, job: GenerateJob) -> None:
    queued = await enqueue_generate(state.shard(job.model_id).arq, job)
    log.info(
        "request accepted request_id=%s model_id=%s key_id=%s new_job=%s",
        job.request_id,
        job.model_id,
        job.api_key_id,
        queued,
    )


def build_job(
    state: GatewayState,
    body: GenerateRequest,
    spec: ModelSpec,
    prices: Prices,
    request_id: str,
    key: ApiKey,
    origin: Origin,
    trace_parent: str | None = None,
) -> GenerateJob:
    """The job that runs `body` for `key` at `prices`, as the interactive routes and the Batch API enqueue it."""
    return GenerateJob(
        request_id=request_id,
        model_id=spec.model_id,
        prompt=body.prompt,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        user_wallet=key.wallet,
        api_key_id=key.key_id,
        price_per_token_far=prices.completion_price_per_token_far,
        prompt_price_per_token_far=prices.prompt_price_per_token_far,
        block_premium_bps=prices.block_premium_bps,
        platform_fee_bps=state.settings.far_mesh_platform_fee_bps,
        enqueued_at=time.time(),
        messages=origin.messages,
        budgeted=key.limits.budgeted,
        trace_parent=trace_parent,
        tool_use=origin.tool_use,
        answered_whole=origin.answered_whole,
        provider=body.provider,
        **body.model_dump(include=set(SamplingOptions.model_fields)),
    )


async def owned_request(state: GatewayState, request_id: str, key: ApiKey) -> FollowedRequest:
    """What `key` would hold to follow `request_id`; 404 unless it exists, 403 when another key owns it."""
    owner = await state.redis.get(keys.request_owner(request_id))
    if owner is None:
        raise NotFound(f"no request {request_id!r} (unknown, or finished over an hour ago)", field="request_id")
    first = RequestOwner.decode(owner)
    if first.api_key_id != key.key_id:
        raise Forbidden(f"request {request_id!r} belongs to another API key", field="request_id")
    return following(key, first.model_id, request_id)
