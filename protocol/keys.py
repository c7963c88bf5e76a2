"""Every Redis key and stream name the processes share, and nothing else.

Nobody builds a key with an f-string outside this module: a renamed key is a one-line change here, and the
Kubernetes manifests' autoscalers are tested against these names.
"""

from typing import Final

ARQ_QUEUE_PREFIX: Final = "arq:queue:"
"""Each model has its own arq queue, so a worker only takes jobs for the models it holds a client for."""

ARQ_IN_PROGRESS_PREFIX: Final = "arq:in-progress:"
"""arq's mark on a job a worker has taken (arq.constants.in_progress_key_prefix, checked equal by
tests/test_protocol_words.py): the worker's claim sets it and its stream writes keep it as long as the lease."""

ARQ_JOB_PREFIX: Final = "arq:job:"
"""arq's copy of a queued job (arq.constants.job_key_prefix, checked equal by tests/test_protocol_words.py)."""

ARQ_RESULT_PREFIX: Final = "arq:result:"
"""arq's result of a job that ran (arq.constants.result_key_prefix, checked equal by tests/test_protocol_words.py)."""

QUEUE_WAKE_PREFIX: Final = "queue:wake:"
"""Pub/sub channel per model, published on after each enqueue: idle workers take the job at once, so their
own polling of the queue (for retries and jobs of workers that died) can stay slow and cheap."""

TOKEN_STREAM_PREFIX: Final = "gen:"
TOKEN_STREAM_TTL_S: Final = 3600
"""How long a finished request's token stream stays readable for reconnecting clients."""

SERVED_STEPS_PREFIX: Final = "gen-steps:"
"""Per request: a list of its billed steps' routes (`protocol.served_steps`), pushed with each token in the same
script and deleted with the ending, so a run that takes a dead run's request over credits the dead run's work."""

USAGE_STREAM: Final = "usage"
"""One entry per finished session (a `UsageRecord`), consumed by accounting."""

USAGE_DEAD_LETTERS: Final = "usage:dead"
"""Usage entries accounting could not parse or store, each with the reason."""

USAGE_DEAD_LETTER_IDS: Final = "usage:dead:ids"
"""Sorted set of the usage-stream entry ids already dead-lettered, so a redelivered entry is dead-lettered once."""

USAGE_CONSUMER_GROUP: Final = "accounting"

SWARM_SNAPSHOTS: Final = "swarm:snapshots"
"""Hash: model_id -> latest `SwarmSnapshot` JSON, written by workers, read by the gateway and accounting."""

JOB_LEASE_PREFIX: Final = "lease:"
"""Short-lived key a live worker keeps renewing while it runs a job; its expiry marks the job orphaned."""

CANCEL_PREFIX: Final = "cancel:"
"""Set by the gateway (explicit cancel or client gone); a worker checks it with every token it writes."""

REQUEST_OWNER_PREFIX: Final = "owner:"
"""Which API key (and model) a request id belongs to, so a repeated POST attaches only for its owner."""
REQUEST_OWNER_TTL_S: Final = TOKEN_STREAM_TTL_S + 60
"""Every write to a token stream sets the owner key to this TTL after the stream's own: ownership outlives the
stream it guards, so a finished stream can never be attached to by another key."""

RATE_LIMIT_PREFIX: Final = "ratelimit:"
ACTIVE_STREAMS_PREFIX: Final = "streams:"
ACTIVE_REQUESTS_PREFIX: Final = "inflight:"
"""Sorted set per model: request ids some gateway is relaying, scored by when their lease expires."""

BUDGET_PREFIX: Final = "far:budget:"
"""Per API key: its budget account, open reservations and their expiry (`protocol.budgets`)."""
BUDGET_SETTLED_PREFIX: Final = "far:budget-settled:"
"""Per request: set once its spend is settled against its key's budget."""
BALANCE_PREFIX: Final = "far:balance:"
"""Per wallet: its prepaid balance account, open holds and their expiry (`protocol.balances`)."""
BALANCE_HOLD_PREFIX: Final = "far:balance-hold:"
"""Per request: the wallet whose balance holds its maximum cost, so its ending settles by request id alone."""
BALANCE_SETTLED_PREFIX: Final = "far:balance-settled:"
"""Per request: set once its cost is settled against its wallet's balance."""

RELAY_WAKE_PREFIX: Final = "relay:wake:"
"""A gateway reader's private stream, included in every XREAD it blocks on, so a new client can wake it."""
RELAY_WAKE_FIELD: Final = "w"
"""The one field of a wake-stream entry; only the entry's arrival matters, not its value."""

VERIFICATION_STREAM: Final = "verify:checks"
"""One entry per sampled session (a `protocol.verification.SpotCheck`), consumed by the verifier."""

VERIFICATION_CONSUMER_GROUP: Final = "verifier"

VERIFICATION_STREAM_BYTES: Final = "verify:checks:bytes"
"""Bytes of spot checks held in `VERIFICATION_STREAM`: added by the worker's XADD, subtracted by the verifier's
XDEL, so the stream is bounded in bytes (WORKER_VERIFY_MAX_BYTES), not in entries of any size."""

VERIFIED_NODES: Final = "verify:last-sampled"
"""Hash: node id -> unix seconds a published spot check last held a span of its work, so every node is checked
a minimum number of times an hour however small the sampled fraction."""

VERIFICATION_CLAIMS: Final = "verify:claimed"
"""Hash: node id -> unix seconds a run last sampled its session because the node was due, so concurrent runs do
not all sample for the same node; a claim lapses after a few minutes (the node stays due until a check holds
its work)."""

BANNED_NODES: Final = "trust:banned"
"""Sorted set: node id -> unix seconds its ban ends. Written by the verifier after repeated mismatches; workers
keep these peers out of their routes until then."""

FAILED_STEPS: Final = "trust:failed-steps"
"""Hash: node id -> steps that failed on it since the verifier last folded the counts into `far_nodes`."""

NODE_REPUTATION: Final = "trust:reputation"
"""Hash: node id -> reputation in [0, 1] (verified-ok against mismatches), written by the verifier; workers
prefer the reputable among servers that hold the same blocks."""

PEER_MEASUREMENTS_PREFIX: Final = "route:peers:"
"""Hash per model: peer id -> what a worker last measured of that server (`protocol.peer_measurements`: round
trip, throughput), written by every worker each snapshot interval and read back to rank routes by a buyer's
`provider.sort`; the key expires `PEER_MEASUREMENTS_TTL_S` after its last write."""
PEER_MEASUREMENTS_TTL_S: Final = 120
"""A model no worker measured for two minutes has no measurements: routes then rank by the client's own pings."""

LIVE_PRICES: Final = "prices:live"
"""Hash: model_id -> its current `protocol.live_prices.LivePrice` JSON, written by the pricer (accounting), read
by the gateway at admission and by the routes that quote prices."""

PRICE_HISTORY_PREFIX: Final = "prices:history:"
"""Per model: a list of its latest price steps (`protocol.live_prices.PricePoint` JSON), newest first, capped; the
whole history is `far_model_prices` in the ledger."""

PRICER_LOCK: Final = "prices:lock"
"""Held for one pricing interval by the accounting replica that recomputes the prices, so replicas never step a
multiplier twice in one interval."""

BATCH_FILE_PREFIX: Final = "batch:file:"
"""Hash per uploaded or produced file of the Batch API (`gateway.batch_store`): its metadata and its JSONL text."""
BATCH_FILES_OF_PREFIX: Final = "batch:files-of:"
"""Sorted set per API key: its files' ids, scored by creation time, so a buyer lists only its own."""
BATCH_PREFIX: Final = "batch:"
"""Hash per batch: its OpenAI-shaped state, the cancel request and its lines' results (`gateway.batch_store`)."""
BATCH_LINES_PREFIX: Final = "batch:lines:"
"""List per batch: each line's job, fixed (prices included) when the batch was admitted."""
BATCHES_OF_PREFIX: Final = "batch:of:"
"""Sorted set per API key: its batches' ids, scored by creation time."""
BATCHES_ACTIVE: Final = "batch:active"
"""Set of the batches the runner still feeds or collects (in_progress, cancelling)."""
BATCH_RUNNER_LOCK: Final = "batch:runner"
"""Held (and renewed) by the one gateway replica that runs batches, so a line is dispatched by one runner."""

PORTAL_MESSAGES_PREFIX: Final = "portal:messages:"
"""Fixed-window counters of the messages to sign the portal hands out, so no client can fill its nonce table."""

PORTAL_SIGNED_OUT_PREFIX: Final = "portal:signed-out:"
"""A portal session signed out before its cookie expires: the cookie is refused from then on."""


def queue_for(model_id: str) -> str:
    """The arq queue that holds generate jobs for `model_id`."""
    return ARQ_QUEUE_PREFIX + model_id


def job_in_progress(job_id: str) -> str:
    """arq's in-progress mark of the job `job_id` (a generate job's id is its request id)."""
    return ARQ_IN_PROGRESS_PREFIX + job_id


def arq_job(job_id: str) -> str:
    """arq's copy of the queued job `job_id`, which a worker reads when it takes the job."""
    return ARQ_JOB_PREFIX + job_id


def arq_result(job_id: str) -> str:
    """arq's result of the job `job_id`, kept after it ran (the worker's `keep_result`)."""
    return ARQ_RESULT_PREFIX + job_id


def job_traces(request_id: str) -> list[str]:
    """Every key that exists once `request_id`'s job was queued, until long after it ran: arq's queued job, its
    in-progress mark and result, and the request's token stream (the job's id is its request id)."""
    return [
        arq_job(request_id),
        job_in_progress(request_id),
        arq_result(request_id),
        token_stream(request_id),
    ]


def queue_wake(model_id: str) -> str:
    """The channel that tells `model_id`'s workers a job was just queued."""
    return QUEUE_WAKE_PREFIX + model_id


def token_stream(request_id: str) -> str:
    """The Redis Stream that carries one request's token, done and error events."""
    return TOKEN_STREAM_PREFIX + request_id


def served_steps(request_id: str) -> str:
    """The routes of `request_id`'s steps whose tokens are on its stream, one `ServedStep` per token."""
    return SERVED_STEPS_PREFIX + request_id


def peer_measurements(model_id: str) -> str:
    """What workers measured of each server of `model_id` (round trip, throughput), for ranking routes."""
    return PEER_MEASUREMENTS_PREFIX + model_id


def price_history(model_id: str) -> str:
    """The latest steps of `model_id`'s price, newest first, for /models."""
    return PRICE_HISTORY_PREFIX + model_id


def job_lease(request_id: str) -> str:
    """The lease a worker renews while it generates `request_id`."""
    return JOB_LEASE_PREFIX + request_id


def cancel_flag(request_id: str) -> str:
    """Exists once `request_id` must stop; its worker writes a cancelled done event within one token step."""
    return CANCEL_PREFIX + request_id


def request_owner(request_id: str) -> str:
    """Who submitted `request_id` (`protocol.ownership.RequestOwner`); expires after the token stream."""
    return REQUEST_OWNER_PREFIX + request_id


def rate_limit(api_key_id: str) -> str:
    """The sliding-window counter of one API key's requests."""
    return RATE_LIMIT_PREFIX + api_key_id


def active_streams(api_key_id: str) -> str:
    """The request ids one API key is streaming right now: a sorted set scored by lease expiry (unix ms)."""
    return ACTIVE_STREAMS_PREFIX + api_key_id


def active_requests(model_id: str) -> str:
    """The request ids of `model_id` streaming to a client right now, on any gateway replica."""
    return ACTIVE_REQUESTS_PREFIX + model_id


def relay_wake(reader_id: str) -> str:
    """The wake stream of one gateway relay reader (`reader_id` is unique per process and reader)."""
    return RELAY_WAKE_PREFIX + reader_id


def portal_messages_by_client(network: str) -> str:
    """How many messages to sign the portal issued to one client network (an IPv4 address, an IPv6 /64) in the
    current window (`portal.message_limits`)."""
    return PORTAL_MESSAGES_PREFIX + "client:" + network


def portal_messages_for_address(address: str, network: str) -> str:
    """How many messages to sign naming `address` the portal issued to one client network in the current window."""
    return PORTAL_MESSAGES_PREFIX + "address:" + address + ":" + network


def portal_signed_out(session_digest: str) -> str:
    """Exists while a signed-out portal session's cookie could still be presented (`portal.sign_out`)."""
    return PORTAL_SIGNED_OUT_PREFIX + session_digest


def budget_account(api_key_id: str) -> str:
    """Hash: `spent` (nano-FAR settled, all time), `spent:<period>`, `held` (open reservations), `rebuilt` (unix ms
    of the last rebuild from the ledger)."""
    return BUDGET_PREFIX + api_key_id


def budget_reservations(api_key_id: str) -> str:
    """Hash request_id -> nano-FAR reserved, for the reservations still open."""
    return BUDGET_PREFIX + api_key_id + ":held"


def budget_reservation_expiry(api_key_id: str) -> str:
    """Sorted set request_id -> unix ms when its reservation lapses."""
    return BUDGET_PREFIX + api_key_id + ":expiry"


def budget_settled(request_id: str) -> str:
    """Set once a request's spend is settled, so a second ending (a recovery, a retry) never counts twice."""
    return BUDGET_SETTLED_PREFIX + request_id


def balance_account(wallet: str) -> str:
    """Hash: `credited` (nano-FAR the journal credited the buyer, rounded down), `charged` (nano-FAR settled or
    charged, rounded up), `held` (open holds), `rebuilt` (unix ms of the last rebuild from the ledger)."""
    return BALANCE_PREFIX + wallet


def balance_holds(wallet: str) -> str:
    """Hash request_id -> nano-FAR held, for the holds still open."""
    return BALANCE_PREFIX + wallet + ":held"


def balance_hold_expiry(wallet: str) -> str:
    """Sorted set request_id -> unix ms when its hold lapses."""
    return BALANCE_PREFIX + wallet + ":expiry"


def balance_hold(request_id: str) -> str:
    """The wallet whose balance holds `request_id`'s maximum cost, while the hold may be open."""
    return BALANCE_HOLD_PREFIX + request_id


def balance_settled(request_id: str) -> str:
    """Set once a request's cost is settled against its wallet's balance: a second ending counts nothing."""
    return BALANCE_SETTLED_PREFIX + request_id


def batch_file(file_id: str) -> str:
    """A Batch API file: `meta` (its OpenAI file object) and `content` (its JSONL)."""
    return BATCH_FILE_PREFIX + file_id


def batch_files_of(api_key_id: str) -> str:
    """The ids of the files `api_key_id` uploaded or its batches produced."""
    return BATCH_FILES_OF_PREFIX + api_key_id


def batch(batch_id: str) -> str:
    """A batch's hash: its state, its cancel request, and one result field per finished line."""
    return BATCH_PREFIX + batch_id


def batch_lines(batch_id: str) -> str:
    """A batch's admitted lines, in input order."""
    return BATCH_LINES_PREFIX + batch_id


def batches_of(api_key_id: str) -> str:
    """The ids of `api_key_id`'s batches."""
    return BATCHES_OF_PREFIX + api_key_id
