"""What `far-mesh payouts run|serve|resolve` read: the ledger, the chain (chain.settings), and PAYOUT_*:
how batches are paid, and what verification holds back."""

from dataclasses import dataclass
from decimal import Decimal
from typing import Self

from pydantic import Field, model_validator

from chain.settings import ChainSettings
from protocol.cheating_odds import break_even_reserve, cheating_loses, default_reserve
from protocol.money import FarAmount
from schema.settings import LedgerSettings


@dataclass(frozen=True)
class BatchPolicy:
    """Which wallets one batch pays: those owed at least `min_far`, at most `max_wallets` of them.

    One policy for the chain payer and the file payer, for `payouts run` and `payouts serve`: either payer's batch
    is one payBatch transaction (the file payer's is signed by hand), so the same gas bound holds, and a wallet
    owed less than the floor would cost more gas than it is paid. Its defaults are the settings' below; a change
    of policy is a change here (docs/payouts.md, "Batch policy").
    """

    min_far: Decimal
    max_wallets: int


class PayoutSettings(LedgerSettings, ChainSettings):
    """What `far-mesh payouts run|serve` reads: the ledger, the chain, and how batches are paid."""

    payout_confirmations: int = Field(
        default=2,
        ge=1,
        le=1000,
        description="Blocks a payout transaction needs (its own included) before rows are paid",
    )
    payout_min_far: FarAmount = Field(
        default=Decimal(1),
        description="Smallest unpaid total a wallet is paid in a batch, by either payer (`payouts serve`, and "
        "`payouts run` unless --min-far says otherwise)",
    )
    payout_max_wallets: int = Field(
        default=200,
        ge=1,
        le=1000,
        description="Most wallets one batch pays (one payBatch transaction), by either payer (`payouts serve`, and "
        "`payouts run` unless --max-wallets says otherwise)",
    )
    payout_interval_s: float = Field(
        default=60.0, gt=0, description="How often `payouts serve` looks for wallets owed at least the minimum"
    )
    payout_poll_s: float = Field(default=1.0, gt=0, le=60, description="How often a sent transaction is checked")
    payout_replace_after_s: float = Field(
        default=120.0,
        gt=0,
        description="A transaction not mined for this long is replaced with higher fees, same nonce",
    )
    payout_fee_bump_percent: int = Field(
        default=25, ge=10, le=500, description="How much a replacement raises both EIP-1559 fees (nodes want >= 10%)"
    )
    payout_max_fee_gwei: Decimal = Field(
        default=Decimal(500), gt=0, description="Highest max fee per gas a payout transaction may offer, in gwei"
    )
    payout_priority_fee_gwei: Decimal = Field(
        default=Decimal(1), ge=0, description="Priority fee (tip) per gas of a first attempt, in gwei"
    )
    payout_metrics_port: int = Field(
        default=9103, ge=0, le=65535, description="Port of the payer's /metrics (Prometheus); 0 disables"
    )
    worker_verify_fraction: float = Field(
        default=0.05,
        gt=0,
        le=1,
        description="Share of sessions whose server spans the verifier recomputes (the workers' sample rate, read "
        "by the payer to size the reserve)",
    )
    payout_verify_max_lag_s: float = Field(
        default=900.0,
        gt=0,
        description="The verifier's stated maximum lag: a session not sampled is paid only once it finished this "
        "long ago (sampled ones once verified), so a mismatch of the same wallet can still forfeit it",
    )
    payout_reserve_sessions: int | None = Field(
        default=None,
        ge=1,
        description="A wallet's most recent unpaid contribution rows held back as the stake a mismatch forfeits; "
        "unset: ceil(1/WORKER_VERIFY_FRACTION); 1/WORKER_VERIFY_FRACTION - 2 or fewer is refused",
    )
    payout_reserve_hold_s: float = Field(
        default=604_800.0,
        gt=0,
        description="A reserved row is paid once its session finished this long ago (a provider that stops is paid "
        "in full); longer than PAYOUT_VERIFY_MAX_LAG_S",
    )

    @model_validator(mode="after")
    def _tip_within_cap(self) -> Self:
        if self.payout_priority_fee_gwei > self.payout_max_fee_gwei:
            raise ValueError("PAYOUT_PRIORITY_FEE_GWEI must not exceed PAYOUT_MAX_FEE_GWEI")
        return self

    @model_validator(mode="after")
    def _cheating_loses(self) -> Self:
        """Refuse a reserve too small for cheating to be a losing bet at the sample rate, and a reserve released
        before the verifier's lag is over (docs/verification.md, "What cheating costs")."""
        fraction = self.worker_verify_fraction
        if not cheating_loses(fraction, self.reserve_sessions):
            raise ValueError(
                f"PAYOUT_RESERVE_SESSIONS={self.reserve_sessions} does not exceed the break-even "
                f"{float(break_even_reserve(fraction)):g} sessions at WORKER_VERIFY_FRACTION={fraction}: "
                "cheating would pay"
            )
        if self.payout_reserve_hold_s <= self.payout_verify_max_lag_s:
            raise ValueError("PAYOUT_RESERVE_HOLD_S must exceed PAYOUT_VERIFY_MAX_LAG_S")
        return self

    def batch_policy(self, *, min_far: Decimal | None = None, max_wallets: int | None = None) -> "BatchPolicy":
        """The batch policy of both payers, `run` and `serve` alike: these settings, or a `run`'s flags for once."""
        return BatchPolicy(
            min_far=self.payout_min_far if min_far is None else min_far,
            max_wallets=self.payout_max_wallets if max_wallets is None else max_wallets,
        )

    @staticmethod
    def reserve_at(fraction: float) -> int:
        """The default reserve at sample rate `fraction`."""
        return default_reserve(fraction)

    @property
    def reserve_sessions(self) -> int:
        """PAYOUT_RESERVE_SESSIONS, or ceil(1/WORKER_VERIFY_FRACTION) when it is unset."""
        if self.payout_reserve_sessions is not None:
            return self.payout_reserve_sessions
        return default_reserve(self.worker_verify_fraction)
