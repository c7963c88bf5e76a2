"""Prometheus metrics of the accounting consumer (served on ACCOUNTING_METRICS_PORT)."""

from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal

from prometheus_client import Counter, Gauge, Histogram

from protocol.swarm import SwarmSnapshot

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
FAR_BILLED = Counter(
    "far_accounting_far_billed",
    "$FAR billed by the sessions written to the ledger, counted after commit (a float: the ledger has the exact sum)",
    ["model_id"],
)
SWARM_COVERAGE = Gauge(
    "far_accounting_swarm_coverage",
    "Fraction of a model's blocks held by at least one online node, from its latest swarm snapshot "
    "(0 when no worker published a fresh one: the gateway refuses the model's requests then)",
    ["model_id"],
)


def record_billed(billed_far: Mapping[str, Decimal]) -> None:
    """Count a committed batch's $FAR by model; Decimal becomes float here, at the metric, and nowhere else."""
    for model_id, amount in billed_far.items():
        FAR_BILLED.labels(model_id).inc(float(amount))


def record_coverage(snapshots: Iterable[SwarmSnapshot], now: datetime) -> None:
    """Each snapshot's model: the fraction of its blocks some online node holds (0 for a stale snapshot)."""
    for snapshot in snapshots:
        coverage = snapshot.block_coverage
        covered = sum(1 for holders in coverage if holders) / len(coverage) if snapshot.is_fresh(now) else 0.0
        SWARM_COVERAGE.labels(snapshot.model_id).set(covered)


# Deposits (`far-mesh deposits watch`, served on DEPOSIT_METRICS_PORT); the exact amounts are in
# far_chain_deposits and the journal.
DEPOSIT_LAST_BLOCK = Gauge(
    "far_deposit_last_block", "Newest block the deposit watcher scanned and committed (confirmation-deep)"
)
DEPOSITS_CREDITED = Counter("far_deposit_credited", "Deposits credited to buyers' balances")
DEPOSIT_FAR_CREDITED = Counter("far_deposit_far_credited", "$FAR credited to buyers' balances by deposits")
DEPOSIT_REORGS = Counter(
    "far_deposit_reorgs",
    "Reorganisations that reached below the watcher's checkpoint (deeper than DEPOSIT_CONFIRMATIONS): "
    "it scanned again from an older block",
)
DEPOSITS_MOVED = Counter(
    "far_deposit_moved",
    "Deposit logs found again at another block after such a reorganisation: credited before, not credited again",
)

# The books (`far-mesh ledger serve`, served on LEDGER_METRICS_PORT): the outcome of the last
# reconciliation (accounting.reconcile), which an alert watches.
LEDGER_RECONCILED = Gauge(
    "far_ledger_reconciled", "1 when the last reconciliation of the books passed every check, 0 when one failed"
)
LEDGER_FAILED_CHECKS = Gauge("far_ledger_reconcile_failed_checks", "Checks the last reconciliation failed")
LEDGER_LAST_RUN = Gauge(
    "far_ledger_reconcile_last_run_timestamp_seconds", "When the last reconciliation completed (unix time)"
)
LEDGER_RECONCILE_ERRORS = Counter(
    "far_ledger_reconcile_errors", "Reconciliations that could not run to the end (the ledger or the node unreachable)"
)
