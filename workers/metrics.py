"""The worker's Prometheus metrics, served over HTTP on WORKER_METRICS_PORT."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()
"""A registry of our own, so tests that build several workers in one process never collide on names."""

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

JOBS_STARTED = Counter("far_mesh_worker_jobs_started", "Generate jobs started", ["model_id"], registry=REGISTRY)
JOBS_FINISHED = Counter(
    "far_mesh_worker_jobs_finished",
    "Generate jobs finished, by how they ended (completed, cancelled, failed, superseded)",
    ["model_id", "status"],
    registry=REGISTRY,
)
TOKENS_GENERATED = Counter(
    "far_mesh_worker_tokens_generated", "Tokens written to token streams", ["model_id"], registry=REGISTRY
)
TIME_TO_FIRST_TOKEN = Histogram(
    "far_mesh_worker_time_to_first_token_seconds",
    "From the job's enqueue to its first token on the stream",
    ["model_id"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
INTER_TOKEN_LATENCY = Histogram(
    "far_mesh_worker_inter_token_latency_seconds",
    "Between consecutive tokens of one job",
    ["model_id"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
FAILOVERS = Counter(
    "far_mesh_worker_failovers", "Fresh sessions opened after a failed step", ["model_id"], registry=REGISTRY
)
ACTIVE_SESSIONS = Gauge(
    "far_mesh_worker_active_sessions", "Inference sessions open right now", ["model_id"], registry=REGISTRY
)
QUEUE_DEPTH = Gauge(
    "far_mesh_worker_queue_depth", "Jobs waiting in the model's queue, as last sampled", ["model_id"], registry=REGISTRY
)
QUEUE_WAIT = Histogram(
    "far_mesh_worker_queue_wait_seconds",
    "From the gateway's enqueue to a worker claiming the job (first tries only: a retry's wait includes its runs)",
    ["model_id"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
SPOT_CHECKS_DROPPED = Counter(
    "far_mesh_worker_spot_checks_dropped",
    "Sampled sessions whose spot check never reached the verifier, by cause: store-full (not recorded: the checks "
    "waiting in Redis were at WORKER_VERIFY_MAX_BYTES), over-budget (recorded, but would have passed it), "
    "unpublished (Redis refused the write), nothing-recorded (sampled, but no span was recorded); all but store-full "
    "send a not-verified notice instead",
    ["model_id", "cause"],
    registry=REGISTRY,
)
