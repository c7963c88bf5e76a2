"""The gateway's configuration: where the key store lives, what it listens on, and every limit it enforces.

Read once at start-up (`GatewaySettings.from_env()`); a bad value stops `far-mesh gateway` with the variable's
name. Defaults suit one replica in front of a small swarm.
"""

from pydantic import Field

from protocol.money import MAX_FEE_BPS
from protocol.requests import MAX_BODY_BYTES, MAX_CHOICES, MAX_NEW_TOKENS, MAX_PROMPT_CHARS
from protocol.settings import CommonSettings
from schema.settings import PostgresUrl


class GatewaySettings(CommonSettings):
    """GATEWAY_* variables plus POSTGRES_URL, on top of the shared ones (REDIS_URL, FAR_MESH_MODELS...)."""

    postgres_url: PostgresUrl = Field(description="Required. PostgreSQL URL of the ledger holding far_api_keys")
    gateway_host: str = Field(default="0.0.0.0", description="Address the HTTP server binds")
    gateway_port: int = Field(default=8100, ge=1, le=65535, description="Port the HTTP server listens on")
    gateway_metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of a separate /metrics listener (not the public port); 0 serves /metrics on GATEWAY_PORT",
    )
    gateway_max_body_bytes: int = Field(
        default=64 * 1024, ge=1024, le=MAX_BODY_BYTES, description="Largest request body accepted (413 above)"
    )
    gateway_max_prompt_chars: int = Field(
        default=8000, ge=1, le=MAX_PROMPT_CHARS, description="Longest prompt accepted, in characters"
    )
    gateway_max_tokens: int = Field(
        default=1024, ge=1, le=MAX_NEW_TOKENS, description="Largest max_tokens a request may ask for"
    )
    gateway_max_choices: int = Field(
        default=8,
        ge=1,
        le=MAX_CHOICES,
        description="Most choices (n) one request may ask for; its max_tokens is reserved once per choice",
    )
    gateway_rate_limit_per_minute: int = Field(
        default=60, ge=1, description="New requests one API key may start per sliding minute (429 above)"
    )
    gateway_max_concurrent_streams: int = Field(
        default=8, ge=1, description="Requests one API key may stream at once, over all replicas (429 above)"
    )
    gateway_heartbeat_interval_s: float = Field(
        default=15.0, gt=0, le=300, description="Idle seconds before an SSE comment keeps the connection alive"
    )
    gateway_cancel_grace_s: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="A disconnected client may reconnect this long before its job is cancelled",
    )
    gateway_relay_readers: int = Field(
        default=4, ge=1, le=64, description="Tasks per process that each XREAD BLOCK over many clients' streams"
    )
    gateway_key_cache_s: float = Field(
        default=10.0, ge=0, le=600, description="How long an API key lookup is cached; a revocation takes this long"
    )
    gateway_ledger_timeout_s: float = Field(
        default=2.0, gt=0, le=60, description="Longest wait for PostgreSQL on a request (key lookup, request id check)"
    )
    gateway_stream_deadline_s: float = Field(
        default=1000.0,
        gt=0,
        le=86400,
        description="A stream (or non-streaming OpenAI call) still open after this long gets an error and is cancelled",
    )
    gateway_max_unsent_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Events piled up behind a write the client is not reading, in bytes, before it is disconnected",
    )
    gateway_shutdown_drain_s: float = Field(
        default=30.0, ge=0, le=3600, description="On SIGTERM, how long open streams may run on before they are cut"
    )
    gateway_require_prepaid_balance: bool = Field(
        default=False,
        description="Admit a request only if its wallet's prepaid balance (deposits minus charges, minus open "
        "holds) covers its maximum cost, else 402 insufficient_balance; off: requests are charged without a check, so "
        "unfunded wallets generate (off in the code for the test harnesses; `make run` and the Kubernetes manifests "
        "turn it on: docs/deposits.md)",
    )
    far_mesh_platform_fee_bps: int = Field(
        default=0,
        ge=0,
        le=MAX_FEE_BPS,
        description="The platform's fee, in basis points of each session's cost, fixed on the job at admission; "
        "the providers share the rest. 0: providers are paid the whole cost, as before the fee existed",
    )
    gateway_batch_discount_bps: int = Field(
        default=5000,
        ge=0,
        le=10_000,
        description="Batch API discount, in basis points off both live prices, fixed on each line's job when its "
        "batch is admitted (5000: half price, as OpenAI and Together sell batches)",
    )
    gateway_batch_max_file_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        le=200 * 1024 * 1024,
        description="Largest file POST /v1/files accepts (413 above); files live in Redis until deleted or expired",
    )
    gateway_batch_max_files: int = Field(
        default=100,
        ge=1,
        le=100_000,
        description="Input files one API key may keep at once; POST /v1/files refuses more (429 quota_exceeded) "
        "until one is deleted or expires, so a key cannot fill Redis with files",
    )
    gateway_batch_max_lines: int = Field(
        default=10_000, ge=1, le=50_000, description="Most requests one batch input file may hold (400 above)"
    )
    gateway_batch_max_in_flight: int = Field(
        default=4,
        ge=1,
        le=1024,
        description="Batch lines of one model running at once over the whole fleet; a line is dispatched only while "
        "that model's queue is empty, so interactive requests never queue behind batch lines",
    )
    gateway_batch_yield_s: float = Field(
        default=2.0,
        ge=0,
        le=3600,
        description="Batch lines of a model start only after no interactive request of it has run for this long, "
        "so batches fill idle capacity; 0: only the empty queue and GATEWAY_BATCH_MAX_IN_FLIGHT hold them back",
    )
    gateway_batch_file_ttl_s: int = Field(
        default=30 * 86400,
        ge=60,
        description="How long a Batch API file (input, output or error) is kept in Redis after it is written",
    )
