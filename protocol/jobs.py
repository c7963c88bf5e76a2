"""The arq job the gateway enqueues and a worker runs: everything needed to generate and bill one request.

The prices (per prompt token and per generated token) and the platform's fee are fixed when the job is
enqueued, so the client is billed what it was quoted, and the providers paid on the terms in force, even if the
configuration changes while the job waits.
"""

from decimal import Decimal
from typing import Annotated, Any, Final, Literal

from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from pydantic import BaseModel, ConfigDict, Field

from protocol import keys
from protocol.catalog import ModelId
from protocol.money import MAX_FEE_BPS, FarAmount, session_cost
from protocol.pricing import MAX_BLOCKS, MAX_PROVIDER_PREMIUM, PREMIUM_BASE_BPS
from protocol.provider_preferences import ProviderPreferences
from protocol.requests import MAX_JOB_PROMPT_CHARS, MAX_NEW_TOKENS, RequestId, SamplingOptions
from protocol.tools import ToolUse
from protocol.wallet import Wallet

GENERATE_FUNCTION: Final = "generate"
"""The arq function name of the generate job; its only argument is `GenerateJob.payload()`."""
MAX_CHAT_TURNS: Final = 1000
"""The most messages a chat request may send."""
TRACE_PARENT_MAX_CHARS: Final = 128
"""A W3C traceparent is 55 characters today; later versions may append fields."""
_LEFT_OUT_WHEN_UNSET: Final = (
    "trace_parent",
    "prompt_price_per_token_far",
    "platform_fee_bps",
    "response_format",
    "tool_use",
    "block_premium_bps",
    "provider",
    "answered_whole",
)
"""Fields left out of the payload while unset (None, 0), so a worker older than them still parses the job (and
bills it as such a worker always did: prompts free, no fee). A constrained job is never left without its
`response_format` or `tool_use`: a worker older than them refuses the job as invalid rather than run it
unconstrained."""


BlockPremium = Annotated[int, Field(ge=PREMIUM_BASE_BPS, le=int(PREMIUM_BASE_BPS * (1 + MAX_PROVIDER_PREMIUM)))]
"""One block's weight in basis points: par (10,000) up to 1 + the largest provider premium."""


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
    price_per_token_far: FarAmount = Field(description="Price per generated token (the completion price), in $FAR")
    prompt_price_per_token_far: FarAmount = Field(
        default=Decimal(0), description="Price per prompt token, in $FAR; 0 in jobs of a gateway older than it"
    )
    platform_fee_bps: int = Field(
        default=0, ge=0, le=MAX_FEE_BPS, description="The platform's fee in basis points of the session's cost"
    )
    block_premium_bps: tuple[BlockPremium, ...] = Field(
        default=(),
        max_length=MAX_BLOCKS,
        description="Each block's weight in its providers' shares, in basis points (10,000: at par), fixed at "
        "admission from the pricer's view of the swarm (docs/pricing.md); empty: every block at par. Left out of the "
        "payload when empty",
    )
    enqueued_at: float = Field(description="Unix time the gateway enqueued the job, for queue-wait metrics")
    budgeted: bool = Field(
        default=False, description="The key has a budget: the worker settles the request's reservation when it ends"
    )
    messages: list[ChatTurn] | None = Field(
        default=None,
        max_length=MAX_CHAT_TURNS + 1,
        description="A chat request's turns (and the system turn offering its tools, when it has no system turn of "
        "its own): the worker formats them with the tokenizer's chat template when it has one; `prompt` is the same "
        "turns in the gateway's fallback format, for tokenizers without one",
    )
    tool_use: ToolUse | None = Field(
        default=None,
        description="A chat request's tools (protocol.tools): the worker constrains the reply to a call or text; "
        "the turns already describe them. Left out of the payload when None",
    )
    provider: ProviderPreferences | None = Field(
        default=None,
        description="The buyer's routing preferences (protocol.provider_preferences), honoured by the worker when it "
        "chooses routes; left out of the payload when None, so a worker older than it still parses the job (and "
        "refuses one with preferences as invalid rather than route it ignoring them)",
    )
    answered_whole: bool = Field(
        default=False,
        description="The client is answered only once the request has ended (OpenAI without streaming, a Batch API "
        "line), so it receives no token of a request that fails: a failed one bills nothing (docs/architecture.md, "
        "'Money rules'). Left out of the payload when False",
    )
    trace_parent: str | None = Field(
        default=None,
        max_length=TRACE_PARENT_MAX_CHARS,
        description="W3C traceparent of the gateway's request span when tracing is on, so the worker's spans join "
        "its trace; left out of the payload when None, so a worker older than it still parses the job",
    )

    def cost_far(self, prompt_tokens: int, tokens_generated: int) -> Decimal:
        """What the request costs after `tokens_generated` tokens (of all its choices: the prompt is billed once),
        at the prices fixed on the job at admission."""
        return session_cost(prompt_tokens, tokens_generated, self.prompt_price_per_token_far, self.price_per_token_far)

    def payload(self) -> dict[str, Any]:
        """The arq argument: the job as JSON types, without the fields that are unset (no trace, no prompt price,
        no fee)."""
        unset = {name for name in _LEFT_OUT_WHEN_UNSET if not getattr(self, name)}
        if self.n == 1:  # one choice is every job a worker older than `n` runs; more is refused there as invalid
            unset.add("n")
        return self.model_dump(mode="json", exclude=unset or None)


_ENQUEUE = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[4])
return 1
"""
"""arq's enqueue (refused while the job, or its result, exists) and the wake-up, as one atomic call. KEYS: the job,
its result, the queue. ARGV: the serialized job, its expiry in ms, its score (the enqueue time in ms), its id, the
wake-up channel."""


async def enqueue_generate(pool: Any, job: GenerateJob) -> bool:
    """Queue `job` on its model's queue under its request id, and wake that model's idle workers.

    `pool` is an `arq.connections.ArqRedis`. False when a job with this request id is already queued or has
    run, so a repeated request never runs twice. One round trip: arq's own `enqueue_job` (a WATCH, an EXISTS,
    then a transaction) and the wake-up took four, all on the way to the first token (#32). The job is the one
    arq writes (`serialize_job`, arq's expiry), so arq's worker reads it as its own.
    """
    enqueued_ms = timestamp_ms()
    payload = serialize_job(GENERATE_FUNCTION, (job.payload(),), {}, None, enqueued_ms, serializer=pool.job_serializer)
    script_keys = [keys.arq_job(job.request_id), keys.arq_result(job.request_id), keys.queue_for(job.model_id)]
    args = [payload, pool.expires_extra_ms, enqueued_ms, job.request_id, keys.queue_wake(job.model_id)]
    return bool(await pool.register_script(_ENQUEUE)(keys=script_keys, args=args))
