"""The body of POST /inference/generate, field for field as the seed's API defines it, with limits.

These are hard ceilings every process agrees on; the gateway may apply tighter, configured caps
(prompt length, max_tokens) on top.
"""

from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_validator,
)

from protocol.catalog import ModelId
from protocol.provider_preferences import ProviderPreferences
from protocol.structured import ResponseFormat, TextFormat
from protocol.wallet import to_checksum_address

MAX_PROMPT_CHARS = 32_000
"""The longest one text may be: a completion's prompt, or one chat message (or one part of it)."""
MAX_BODY_BYTES = 16 * 1024 * 1024
"""The largest request body any gateway may be configured to accept (GATEWAY_MAX_BODY_BYTES's ceiling)."""
MAX_JOB_PROMPT_CHARS = MAX_BODY_BYTES
"""A job's prompt text, and one chat turn's: a chat's fallback prompt joins all its messages, so it is bounded by
the body it came from, not by MAX_PROMPT_CHARS (every character of it took at least one byte of that body). What
bounds a prompt for real is the model's context, in tokens, which only a worker can count (`prompt_too_long`)."""
MAX_NEW_TOKENS = 4096
REQUEST_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
RequestId = Annotated[str, Field(pattern=REQUEST_ID_PATTERN, description="1-64 characters: letters, digits, _ . : -")]
WALLET_PATTERN = r"^0x[0-9a-fA-F]{40}$"


def _json_integer(value: object) -> object:
    """JSON has one number type: 2.0 is the integer 2 (as JSON Schema says), while true and "2" are not numbers."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[StrictInt, BeforeValidator(_json_integer)]
TokenIdKey = Annotated[str, Field(pattern=r"^[0-9]{1,9}$")]
"""A token id as a JSON object's key (logit_bias), as OpenAI takes it."""
"""An integer as a JSON client means one: 2 or 2.0, never true or "2"."""
RequestWallet = Annotated[
    str,
    Field(pattern=WALLET_PATTERN, description="0x and 40 hex digits, any case; compared with the API key's wallet"),
    AfterValidator(to_checksum_address),
]
"""A wallet a client names in a request: any capitalisation of a valid address, normalised to EIP-55, so a
wrong wallet is refused for what it is (not the key's, 403) rather than for its letter case."""
MAX_STOP_SEQUENCES = 4
MAX_CHOICES = 128
"""The most choices (`n`) any process accepts, OpenAI's own ceiling; a gateway caps it lower (GATEWAY_MAX_CHOICES)."""
MAX_STOP_CHARS = 128
MAX_TOP_LOGPROBS = 5
MAX_SEED = 2**63 - 1
MAX_LOGIT_BIAS = 300
MIN_REPETITION_PENALTY = 0.1
MAX_REPETITION_PENALTY = 10.0
"""repetition_penalty divides a seen token's positive logit (and multiplies a negative one): bounded on both sides,
as 1/10 and 10, it moves a logit at most tenfold. Any positive value used to pass, and 5e-324 turned every seen
token's logit into inf after the prefill: a `sampling_error` with the swarm's prefill done and unbilled."""
StopSequence = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
StopSequences = Annotated[
    list[StopSequence],
    Field(max_length=MAX_STOP_SEQUENCES, description="Up to 4 strings; generation ends before the first one to appear"),
]


class SamplingOptions(BaseModel):
    """The sampling controls a request may set, shared by the client's request and the job a worker runs.

    Defaults change nothing: a job without them samples exactly as before these fields existed.
    """

    stop: StopSequences = Field(default_factory=list)
    seed: JsonInt | None = Field(
        default=None, ge=-MAX_SEED - 1, le=MAX_SEED, description="Same seed, same request, same swarm: same output"
    )
    top_k: JsonInt = Field(default=0, ge=0, le=1000, description="Sample among the k most likely tokens; 0: off")
    repetition_penalty: StrictFloat = Field(
        default=1.0,
        ge=MIN_REPETITION_PENALTY,
        le=MAX_REPETITION_PENALTY,
        allow_inf_nan=False,
        description="Divides the logits of tokens already seen (multiplies the negative ones); 1: off",
    )
    frequency_penalty: StrictFloat = Field(
        default=0.0, ge=-2.0, le=2.0, allow_inf_nan=False, description="Subtracted once per earlier occurrence"
    )
    presence_penalty: StrictFloat = Field(
        default=0.0, ge=-2.0, le=2.0, allow_inf_nan=False, description="Subtracted from tokens generated before"
    )
    logit_bias: dict[TokenIdKey, Annotated[StrictFloat, Field(ge=-100.0, le=100.0, allow_inf_nan=False)]] = Field(
        default_factory=dict,
        max_length=MAX_LOGIT_BIAS,
        description="Token id to a bias added to its logit; -100 bans the token, 100 all but forces it",
        json_schema_extra={"additionalProperties": False},
    )
    logprobs: StrictBool = Field(default=False, description="Each token event carries its log probability")
    top_logprobs: JsonInt = Field(
        default=0, ge=0, le=MAX_TOP_LOGPROBS, description="With logprobs: the most likely alternatives per token"
    )
    n: JsonInt = Field(
        default=1,
        ge=1,
        le=MAX_CHOICES,
        description="Choices to sample from the same prompt, each billed per generated token (the prompt once); "
        'generated one after another, each with its own session (docs/structured-outputs.md, "Several choices")',
    )
    response_format: ResponseFormat | None = Field(
        default=None,
        description="json_object: the reply is one JSON object; json_schema: JSON the schema accepts (every "
        "keyword enforced with strict: true); enforced token by token by the worker (docs/structured-outputs.md)",
    )

    @field_validator("response_format")
    @classmethod
    def _text_is_unconstrained(cls, value: object) -> object:
        """Plain text is no constraint: carried as None, so a job without one is the job it always was."""
        return None if isinstance(value, TextFormat) else value


class GenerateRequest(SamplingOptions):
    """A client's generation request; unknown fields are rejected so a misspelt option never goes unnoticed."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="Text the model continues")
    max_tokens: JsonInt = Field(default=256, ge=1, le=MAX_NEW_TOKENS, description="Most tokens to generate")
    temperature: StrictFloat = Field(default=0.7, ge=0.0, le=2.0, allow_inf_nan=False, description="0 means greedy")
    top_p: StrictFloat = Field(default=0.9, gt=0.0, le=1.0, allow_inf_nan=False, description="Nucleus sampling mass")
    user_wallet: RequestWallet | None = Field(default=None, description="The address billed; must be the API key's")
    request_id: RequestId | None = Field(default=None, description="Idempotency key; generated when absent")
    model_id: ModelId | None = Field(default=None, description="Defaults to DEFAULT_MODEL_ID")
    provider: ProviderPreferences | None = Field(
        default=None, description="Routing preferences, OpenRouter's provider object (docs/routing.md)"
    )
