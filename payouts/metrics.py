"""Prometheus metrics of the payer (`far-mesh payouts serve`, served on PAYOUT_METRICS_PORT). Amounts
here are for dashboards only (Prometheus values are floats); the ledger's exact figures are in far_payment_batches.
"""

from decimal import Decimal

from prometheus_client import Counter, Gauge, Histogram

PAYOUT_BATCHES = Gauge("far_payout_batches", "Payment batches by status", ["status"])
PAYOUT_FAR_PAID = Counter("far_payout_far_paid", "$FAR paid by confirmed payout transactions")
PAYOUT_WALLETS_PAID = Counter("far_payout_wallets_paid", "Wallet payments in confirmed payout transactions")
PAYOUT_GAS_USED = Counter("far_payout_gas_used", "Gas used by payout transactions, reverted ones included")
PAYOUT_GAS_COST = Counter("far_payout_gas_cost", "Gas token spent on confirmed payout transactions (ETH units)")
PAYOUT_FAILURES = Counter("far_payout_failures", "Payment batches failed (rows released)")
PAYOUT_REPLACEMENTS = Counter("far_payout_replacements", "Stuck payout transactions replaced with higher fees")
PAYOUT_CONFIRMATION_SECONDS = Histogram(
    "far_payout_confirmation_seconds",
    "From handing a payout transaction to the node to its confirmation",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
)
TREASURY_FAR = Gauge("far_payout_treasury_far", "$FAR held by the treasury")
TREASURY_GAS = Gauge("far_payout_treasury_gas", "Gas token held by the treasury (ETH units)")
PAYOUT_HALTED = Gauge(
    "far_payout_halted",
    "1 once `payouts serve` stopped paying on an error that does not pass by itself (its log says which); "
    "nothing is claimed or signed until it is restarted",
)
PAYOUT_BATCHES_ELSEWHERE = Gauge(
    "far_payout_batches_on_other_chains",
    "Unfinished batches signed for another chain or token than the payer's (a reset node, a new deployment): "
    "not followed, their rows claimed until an operator settles them",
)


def record_paid(total_far: Decimal, wallets: int, gas_used: int, gas_cost_wei: int, lag_s: float) -> None:
    PAYOUT_FAR_PAID.inc(float(total_far))
    PAYOUT_WALLETS_PAID.inc(wallets)
    PAYOUT_GAS_USED.inc(gas_used)
    PAYOUT_GAS_COST.inc(gas_cost_wei / 10**18)
    PAYOUT_CONFIRMATION_SECONDS.observe(lag_s)
