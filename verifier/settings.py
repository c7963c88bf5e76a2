"""The verifier's settings: the ledger (POSTGRES_URL), Redis, the catalog whose weights it loads, and the ban rule."""

from pydantic import Field

from protocol.settings import unique_consumer_name
from schema.settings import LedgerSettings


class VerifierSettings(LedgerSettings):
    verifier_ban_after: int = Field(
        default=2, ge=1, le=1000, description="Mismatches within VERIFIER_BAN_WINDOW_S that ban a node"
    )
    verifier_ban_window_s: float = Field(
        default=86_400.0, gt=0, description="How far back mismatches count towards a ban"
    )
    verifier_ban_s: float = Field(
        default=3_600.0, gt=0, description="How long a banned node is kept out of routes (the cool-down)"
    )
    verifier_threads: int = Field(
        default=1, ge=1, le=256, description="torch threads for recomputation (1 suits small models on shared cores)"
    )
    verifier_batch: int = Field(default=8, ge=1, le=1000, description="Spot checks read per stream call")
    verifier_consumer_name: str = Field(
        default_factory=unique_consumer_name,
        min_length=1,
        max_length=200,
        description="This verifier's name in its consumer group; defaults to host-pid-random",
    )
    verifier_metrics_port: int = Field(
        default=9104, ge=0, le=65535, description="Port of the verifier's /metrics and /healthz; 0 disables both"
    )
    verifier_refresh_interval_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="How often verdicts that came before their sessions are slashed again and bans copied to Redis",
    )
    verifier_lost_check_after_s: float = Field(
        default=3600.0,
        ge=60,
        description="A sampled session with neither a verdict nor a notice that finished this long before the oldest "
        "check still waiting (or before now) is recorded unverified (never-published) and paid as an unsampled one: "
        "its worker died between its usage record and its check",
    )
    verifier_liveness_s: float = Field(
        default=120.0, gt=0, description="/healthz fails once the verifier loop has not turned for this long"
    )
