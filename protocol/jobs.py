"""The arq job the gateway enqueues and a worker runs: everything needed to generate and bill one request.

The price is fixed when the job is enqueued, so the client is billed what it was quoted even if the
configured price changes while the job waits.
"""

import logging
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from protocol import keys
from protocol.catalog import ModelId
from protocol.money import FarAmount
from protocol.requests import MAX_JOB_PROMPT_CHARS, MAX_NEW_TOKENS, RequestId, SamplingOptions
from protocol.wallet import Wallet

log = logging.getLogger(__name__)

GENERATE_FUNCTION: Final = "generate"
"""The arq function name of the generate job; its only argument is `GenerateJob.payload()`."""
TRACE_PARENT_MAX_CHARS: Final = 128
"""A W3C traceparent is 55 characters today; later versions may append fields."""
_NO_TRACE: Final = {"trace_parent"}


class ChatTurn(BaseModel):
    """One message of a chat request, as the model's chat template reads it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(max_length=MAX_JOB_PROMPT_CHARS)


class GenerateJob(SamplingOptions):
    """A validated, priced generation request, as a worker receives it.

    The sampling controls (`SamplingOptions`: stop, seed, top_k, penalties, logprobs) all have defaults, so a job
    enqueued by a gateway older than them still parses and samples as it did.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: RequestId
    model_id: ModelId
    prompt: str = Field(min_length=1, max_length=MAX_JOB_PROMPT_CHARS)
    max_tokens: int = Field(ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(gt=0.0, le=1.0, allow_inf_nan=False)
    user_wallet: Wallet | None = None
    api_key_id: str | None = Field(default=None, max_length=64)
    price_per_token_far: FarAmount
    enqueued_at: float = Field(description="Unix time the gateway enqueued the job, for queue-wait metrics")
    budgeted: bool = Field(
        default=False, description="The key has a budget: the worker settles the request's reservation when it ends"
    )
    messages: list[ChatTurn] | None = Field(
        default=None,
        max_length=1000,
        description="A chat request's turns: the worker formats them with the tokenizer's chat template when it "
        "has one; `prompt` is the same turns in the gateway's fallback format, for tokenizers without one",
    )
    trace_parent: str | None = Field(
        default=None,
        max_length=TRACE_PARENT_MAX_CHARS,
        description="W3C traceparent of the gateway's request span when tracing is on, so the worker's spans join "
        "its trace; left out of the payload when None, so a worker older than it still parses the job",
    )

    def payload(self) -> dict[str, Any]:
        """The arq argument: the job as JSON types, without the trace field when there is no trace."""
        return self.model_dump(mode="json", exclude=_NO_TRACE if self.trace_parent is None else None)


async def enqueue_generate(pool: Any, job: GenerateJob) -> bool:
    """Queue `job` on its model's queue under its request id, and wake that model's idle workers.

    `pool` is an `arq.connections.ArqRedis`. False when a job with this request id is already queued or
    running (arq refuses the duplicate), so a repeated request never runs twice. Once the job is queued it will
    run and bill, so a failed wake-up is only logged: answering the client with an error would be a lie.
    """
    queued = await pool.enqueue_job(
        GENERATE_FUNCTION, job.payload(), _job_id=job.request_id, _queue_name=keys.queue_for(job.model_id)
    )
    if queued is None:
        return False
    try:
        await pool.publish(keys.queue_wake(job.model_id), job.request_id)
    except Exception as exc:  # redis-py raises several types; none may undo an enqueue that happened
        log.warning("wake-up not published request_id=%s error=%s; workers' polling takes the job", job.request_id, exc)
    return True
