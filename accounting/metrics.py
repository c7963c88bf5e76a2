"""Prometheus metrics of the accounting consumer (served on ACCOUNTING_METRICS_PORT)."""

from prometheus_client import Counter, Gauge, Histogram

RECORDS_CONSUMED = Counter("far_accounting_records_consumed", "Usage-stream entries read and settled (acked)")
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
