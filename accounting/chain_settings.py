"""What accounting's chain processes read: `far-mesh deposits watch` (DepositSettings) and `far-mesh ledger
reconcile|serve` (ReconcileSettings): the ledger (schema.settings) joined with the chain (chain.settings), which
itself never touches the ledger."""

from pydantic import Field

from chain.settings import DepositChainSettings
from protocol.money import FarAmount
from schema.settings import LedgerSettings


class DepositSettings(LedgerSettings, DepositChainSettings):
    """What `far-mesh deposits watch` reads: the ledger, the chain, and how the watcher scans."""

    deposit_start_block: int = Field(
        default=0,
        ge=0,
        description="First block scanned when the ledger has no checkpoint for the contract (its deployment block)",
    )
    deposit_poll_s: float = Field(
        default=5.0, gt=0, le=3600, description="How often the deposit watcher looks for newly deep blocks"
    )
    deposit_max_blocks: int = Field(
        default=1000, ge=1, le=100_000, description="Most blocks one eth_getLogs call (and one ledger commit) covers"
    )
    deposit_metrics_port: int = Field(
        default=9105, ge=0, le=65535, description="Port of the deposit watcher's /metrics (Prometheus); 0 disables"
    )


class ReconcileSettings(DepositSettings):
    """What `far-mesh ledger reconcile` and `far-mesh ledger serve` read: the ledger, the chain (the deposit
    contract's treasury and token, the batch contract the payer pays through), and how often to reconcile."""

    ledger_opening_far: FarAmount | None = Field(
        default=None,
        description="The treasury's $FAR before any deposit or payout; set, `ledger serve` (and `ledger reconcile` "
        "without --opening-far) also checks the treasury and each paid wallet's receipts on chain",
    )
    ledger_receipts_from_block: int = Field(
        default=0,
        ge=0,
        description="First block of each wallet's receipts from the treasury's payouts (the batch "
        "contract's deployment block)",
    )
    ledger_reconcile_interval_s: float = Field(
        default=300.0, gt=0, le=86_400, description="How often `far-mesh ledger serve` reconciles the books"
    )
    ledger_metrics_port: int = Field(
        default=9106, ge=0, le=65535, description="Port of `far-mesh ledger serve`'s /metrics (Prometheus); 0 disables"
    )
