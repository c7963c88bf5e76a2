"""How a request ends: its one done or error event and its one usage record, also when its job never runs.

A run that finishes builds both from what it generated. When arq gives up on a job (its tries are spent, its
payload expired, its run timed out or raised) or the payload is invalid, no run is left to write them, so the
client would wait on the stream forever: `end_abandoned` ends it with an error through the same once-only
script, billing exactly the tokens the client already received.

`RunEnd` names how a run of the generate job ended. Its words never leave the worker process as protocol: the
job function returns one (as a plain string) to arq, whose result this worker's own queue reads back, and the
jobs-finished metric is labelled with it; so its one home is here, not in `protocol/`
(docs/architecture.md, "One home for every word").
"""

import logging
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Literal

import redis.asyncio as aioredis
from pydantic import ValidationError

from mesh.announce import wallet_from_public_name
from protocol.events import ChoiceEnd, DoneEvent, ErrorBody, ErrorEvent, StreamEvent
from protocol.jobs import GenerateJob
from protocol.ownership import RequestOwner
from protocol.usage import UsageRecord
from workers import budget_settlement
from workers.attribution import Attribution
from workers.stream import TokenStreamWriter, Written

logger = logging.getLogger(__name__)


class RunEnd(StrEnum):
    """How one run of a generate job ended: the status it wrote, or why it wrote none."""

    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    """Another run took the request over: this one leaves the job, which its successor still runs, alone."""
    ALREADY_FINISHED = "already-finished"
    """The request's stream had already ended: the job is done and can be retired."""
    INVALID = "invalid"
    """The job's payload could not be run; its stream was ended with an error."""


@dataclass
class Outcome:
    status: Literal["completed", "cancelled", "failed"]
    finish_reason: str
    error: ErrorBody | None = None

    @classmethod
    def failed(cls, error: ErrorBody) -> "Outcome":
        """A run that ends with `error` (its usage record's finish_reason is "error", not an event kind)."""
        return cls("failed", "error", error)


@dataclass(frozen=True)
class Billing:
    """What one run of a request did, as far as the bill is concerned."""

    prompt_tokens: int
    tokens_generated: int
    started_at: datetime
    attribution: Attribution
    ttft_s: float | None = None
    failovers: int = 0
    route_policy: str | None = None
    spot_checked: bool = False
    """The run recorded its spans for the verifier (its contributions wait for the verdict to be paid)."""
    choices: list[ChoiceEnd] | None = None
    """With n > 1, how each choice ended (the done event lists them)."""

    def nothing_delivered(self) -> "Billing":
        """This run's bill when its client received none of it: no token billed (the prompt is billed with the
        first), so no node credited, for no node is paid for work on tokens not billed."""
        return replace(self, tokens_generated=0, attribution=Attribution(), choices=None)


def ending_of(job: GenerateJob, outcome: Outcome, billing: Billing, worker_id: str) -> tuple[StreamEvent, UsageRecord]:
    """The final stream event and the usage record that bills `billing`'s tokens at the job's prices (fixed at
    admission, never the catalog's now) and takes the job's platform fee before the providers' shares."""
    if outcome.error is not None and job.answered_whole:
        billing = billing.nothing_delivered()
    cost = job.cost_far(billing.prompt_tokens, billing.tokens_generated)
    event: StreamEvent
    if outcome.error is not None:
        event = ErrorEvent(
            error=outcome.error,
            request_id=job.request_id,
            tokens_generated=billing.tokens_generated,
            total_cost_far=cost,
        )
    else:
        event = DoneEvent(
            request_id=job.request_id,
            status="cancelled" if outcome.status == "cancelled" else "completed",
            finish_reason=outcome.finish_reason,
            prompt_tokens=billing.prompt_tokens,
            tokens_generated=billing.tokens_generated,
            total_cost_far=cost,
            choices=billing.choices,
        )
    contributions, fee, remainder = billing.attribution.settle(
        cost, job.platform_fee_bps, wallet_from_public_name, job.block_premium_bps
    )
    usage = UsageRecord(
        request_id=job.request_id,
        model_id=job.model_id,
        user_wallet=job.user_wallet,
        api_key_id=job.api_key_id,
        status=outcome.status,
        finish_reason=outcome.finish_reason,
        prompt_tokens=billing.prompt_tokens,
        tokens_generated=billing.tokens_generated,
        price_per_token_far=job.price_per_token_far,
        prompt_price_per_token_far=job.prompt_price_per_token_far,
        total_cost_far=cost,
        platform_fee_bps=job.platform_fee_bps,
        platform_fee_far=fee,
        platform_remainder_far=remainder,
        started_at=billing.started_at,
        finished_at=max(billing.started_at, datetime.now(UTC)),
        time_to_first_token_ms=billing.ttft_s * 1000 if billing.ttft_s is not None else None,
        failovers=billing.failovers,
        route_policy=billing.route_policy,
        spot_checked=billing.spot_checked,
        worker_id=worker_id,
        contributions=contributions,
        trace_parent=job.trace_parent,  # a run replaces it with its own span's; an abandoned job keeps the gateway's
    )
    return event, usage


async def end_abandoned(
    redis: aioredis.Redis,
    request_id: str,
    payload: object,
    error: ErrorBody,
    *,
    worker_id: str,
    lease_ttl_s: float,
    prompt_tokens: int = 0,
    home: aioredis.Redis | None = None,
) -> bool:
    """End the stream of a request no run will finish with `error`; False when it had already ended.

    Taking the lease first fences out any stalled run of the request. The delivered tokens are billed, and the
    nodes that served them credited from the steps the runs wrote beside the stream; a payload that is lost or
    invalid names nobody to bill, so then only the error is written. Either way the request's budget reservation
    is settled, at what was billed (nothing, for a job that never ran), so it never waits to lapse.

    `redis` holds the request's stream (its model's shard); `home`, when another, its budget and balance.
    """
    home = home if home is not None else redis
    try:
        job: GenerateJob | None = GenerateJob.model_validate(payload)
    except ValidationError:
        job = None
    if job is not None and job.request_id != request_id:
        job = None
    # The owner key is refreshed with the ending, as a run's is: ownership outlives the stream it guards
    owner = RequestOwner(job.api_key_id, job.model_id) if job is not None and job.api_key_id else None
    writer = TokenStreamWriter(
        redis,
        request_id,
        f"{worker_id}:ending:{uuid.uuid4().hex[:8]}",
        lease_ttl_s=lease_ttl_s,
        owner=owner,
        home=home,
    )
    so_far = await writer.acquire()
    if so_far.final is not None:
        return False
    usage: UsageRecord | None = None
    if job is not None:
        billing = Billing(
            prompt_tokens=prompt_tokens,
            tokens_generated=len(so_far.token_ids),
            started_at=datetime.now(UTC),
            attribution=Attribution.earlier(so_far.served_steps),
        )
        event, usage = ending_of(job, Outcome.failed(error), billing, worker_id)
    else:
        event = ErrorEvent(
            error=error, request_id=request_id, tokens_generated=len(so_far.token_ids), total_cost_far=so_far.cost_far
        )
    ended = await writer.finish(event, usage) is Written.WRITTEN
    if ended:
        logger.warning(
            "request ended by the worker request_id=%s code=%s tokens=%d billed=%s",
            request_id,
            error.code,
            len(so_far.token_ids),
            usage is not None,
        )
        if job is not None and usage is not None:
            await budget_settlement.settle_reservation(home, job, usage.total_cost_far)
        else:
            await budget_settlement.settle_owned_reservation(home, request_id, Decimal(0))
    return ended
