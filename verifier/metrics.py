"""The verifier's Prometheus metrics, served at `/metrics` beside `/healthz` (`probes`)."""

from prometheus_client import Counter, Gauge, Histogram

SPANS_VERIFIED = Counter("far_verifier_spans_total", "Server spans recomputed", ["model_id", "verdict"])
SLASHED_ROWS = Counter("far_verifier_slashed_contributions_total", "Contribution rows slashed")
BANS = Counter("far_verifier_bans_total", "Nodes banned from routing")
NODE_REPUTATION = Gauge(
    "far_verifier_node_reputation", "Reputation in [0, 1] of each node the verifier has judged", ["node_id"]
)
VERIFY_SECONDS = Histogram("far_verifier_check_seconds", "Recompute time of one sampled session")
TOKENS_VERIFIED = Counter("far_verifier_tokens_total", "Positions recomputed (tokens x spans)", ["model_id"])
SPANS_UNUSABLE = Counter(
    "far_verifier_spans_unusable_total",
    "Spans not judged through no fault of their servers: the worker's own part of the recording (inputs, blocks, "
    "width) cannot be used, or the session is recorded as not verified (a worker's notice: over-budget, "
    "unpublished, nothing-recorded; unknown-model; malformed, counted once per entry)",
    ["model_id", "cause"],
)
SESSIONS_NEVER_PUBLISHED = Counter(
    "far_verifier_sessions_never_published_total",
    "Sampled sessions whose check never reached the stream, recorded unverified by the verifier's sweep",
)
