"""Prometheus metrics of the accounting consumer (served on ACCOUNTING_METRICS_PORT)."""

from decimal import Decimal

from prometheus_client import Counter, Gauge, Histogram

RECORDS_CONSUMED = Counter("far_accounting_records_consumed", "Usage-stream entries read and stored (acked)")
SESSIONS_WRITTEN = Counter("far_accounting_sessions_written", "Session rows inserted into the ledger")
CONTRIBUTIONS_WRITTEN = Counter("far_accounting_contributions_written", "Contribution rows inserted into the ledger")
DUPLICATES_IGNORED = Counter("far_accounting_duplicates_ignored", "Usage records whose request id was already stored")
DEAD_LETTERS = Counter("far_accounting_dead_letters", "Usage entries moved to the dead-letter stream", ["reason"])
LEDGER_RETRIES = Counter("far_accounting_ledger_retries", "Batch writes retried because PostgreSQL was unavailable")
BATCH_SIZE = Histogram(
    "far_accounting_batch_size", "Usage records per batch", buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000)
)
COMMIT_SECONDS = Histogram(
    "far_accounting_commit_seconds",
    "Time to write and commit one batch",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CONSUMER_LAG = Gauge("far_accounting_consumer_lag", "Usage entries not yet delivered to the consumer group")
PENDING = Gauge("far_accounting_pending", "Usage entries delivered but not yet acknowledged")
NODES_SEEN = Gauge("far_accounting_registry_nodes", "Nodes in the latest swarm snapshots")

# Payouts (`far-mesh payouts serve`, served on FAR_MESH_PAYOUT_METRICS_PORT). Amounts here are for dashboards
# only (Prometheus values are floats); the ledger's exact figures are in far_payment_batches.
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


def record_paid(total_far: Decimal, wallets: int, gas_used: int, gas_cost_wei: int, lag_s: float) -> None:
    PAYOUT_FAR_PAID.inc(float(total_far))
    PAYOUT_WALLETS_PAID.inc(wallets)
    PAYOUT_GAS_USED.inc(gas_used)
    PAYOUT_GAS_COST.inc(gas_cost_wei / 10**18)
    PAYOUT_CONFIRMATION_SECONDS.observe(lag_s)
