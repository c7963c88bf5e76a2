"""The accounting process's settings: the ledger's POSTGRES_URL, how the usage stream is consumed, and how the
pricer moves each model's prices (docs/pricing.md)."""

from decimal import Decimal

from pydantic import Field

from protocol.pricing import PricingPolicy
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
    pricing_enabled: bool = Field(
        default=False,
        description="Move each model's prices with its queue depth and swarm coverage (docs/pricing.md); off: every "
        "model sells at its catalogue prices, as before the pricer existed",
    )
    pricing_interval_s: float = Field(default=10.0, gt=0, description="How often the pricer recomputes the prices")
    pricing_floor: Decimal = Field(
        default=Decimal("0.5"),
        gt=0,
        le=1,
        decimal_places=4,
        description="Lowest price, as a multiple of the catalogue's",
    )
    pricing_ceiling: Decimal = Field(
        default=Decimal("3"),
        ge=1,
        le=1000,
        decimal_places=4,
        description="Highest price, as a multiple of the catalogue's",
    )
    pricing_queue_reference: int = Field(
        default=16,
        ge=1,
        description="Jobs queued or running for a model that add pricing_demand_weight to its multiplier",
    )
    pricing_demand_weight: Decimal = Field(
        default=Decimal("0.5"),
        ge=0,
        le=100,
        decimal_places=4,
        description="Multiplier added per pricing_queue_reference jobs",
    )
    pricing_target_servers: int = Field(
        default=2, ge=1, description="Online servers per block at which a block counts as fully served"
    )
    pricing_scarcity_weight: Decimal = Field(
        default=Decimal("1"),
        ge=0,
        le=100,
        decimal_places=4,
        description="Multiplier added at full scarcity (every block unserved); the thinnest block counts most",
    )
    pricing_surplus_discount: Decimal = Field(
        default=Decimal("0.25"),
        ge=0,
        le=1,
        decimal_places=4,
        description="Multiplier taken off when every block has twice pricing_target_servers or more",
    )
    pricing_smoothing: Decimal = Field(
        default=Decimal("0.5"),
        gt=0,
        le=1,
        decimal_places=4,
        description="Share of the gap to its target the multiplier closes per recomputation (1: no smoothing)",
    )
    pricing_deadband: Decimal = Field(
        default=Decimal("0.05"),
        ge=0,
        le=10,
        decimal_places=4,
        description="A multiplier this close to its target stays put (hysteresis: a breathing queue leaves it alone)",
    )

    pricing_provider_premium: Decimal = Field(
        default=Decimal("1"),
        ge=0,
        le=10,
        decimal_places=4,
        description="Extra weight of an unserved block's work in its providers' shares, fixed on each job at "
        "admission: a block with half of pricing_target_servers weighs 1 + half of this (docs/pricing.md)",
    )

    @property
    def pricing_policy(self) -> PricingPolicy:
        """The pricing formula's parameters, checked for consistency (floor <= 1 <= ceiling...)."""
        return PricingPolicy(
            floor=self.pricing_floor,
            ceiling=self.pricing_ceiling,
            queue_reference=self.pricing_queue_reference,
            demand_weight=self.pricing_demand_weight,
            target_servers=self.pricing_target_servers,
            scarcity_weight=self.pricing_scarcity_weight,
            surplus_discount=self.pricing_surplus_discount,
            smoothing=self.pricing_smoothing,
            deadband=self.pricing_deadband,
            provider_premium=self.pricing_provider_premium,
        )
