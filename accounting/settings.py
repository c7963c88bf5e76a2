"""The accounting process's settings: the ledger's POSTGRES_URL plus how the usage stream is consumed."""

from pydantic import Field

from protocol.settings import unique_consumer_name
from schema.settings import LedgerSettings


class AccountingSettings(LedgerSettings):
    accounting_batch_size: int = Field(default=500, ge=1, le=10_000, description="Usage records per transaction")
    accounting_batch_wait_ms: int = Field(
        default=100, ge=1, le=60_000, description="Longest a partly filled batch waits for more records"
    )
    accounting_claim_idle_ms: int = Field(
        default=60_000, ge=100, description="Pending entries idle this long belong to a dead consumer and are claimed"
    )
    accounting_claim_interval_s: float = Field(
        default=5.0, gt=0, description="How often dead consumers' entries are sought"
    )
    accounting_trim_interval_s: float = Field(
        default=10.0, gt=0, description="How often the usage stream is trimmed below what every group acknowledged"
    )
    accounting_snapshot_interval_s: float = Field(
        default=5.0, gt=0, description="How often the node registry is refreshed from the swarm snapshots"
    )
    accounting_retry_max_s: float = Field(default=10.0, gt=0, description="Longest wait between ledger reconnects")
    accounting_consumer_name: str = Field(
        default_factory=unique_consumer_name,
        min_length=1,
        max_length=200,
        description="This consumer's name in the group; defaults to host-pid-random",
    )
    accounting_metrics_port: int = Field(
        default=9102, ge=0, le=65535, description="Port of /metrics (Prometheus) and /healthz (liveness); 0 disables"
    )
    accounting_liveness_s: float = Field(
        default=60.0,
        gt=0,
        description="/healthz fails once the consumer loop has not completed an iteration for this long",
    )
