"""Why a request's token stream ended with an error: the `code` of every `ErrorEvent` (`protocol.events`).

One definition for every writer (the worker's run, its queue's give-up hooks, the gateway's deadline) and every
reader (the OpenAI routes, the SDKs, the OpenAPI document's enum). The gateway's HTTP error codes are its own
vocabulary (`gateway/errors.py`) except `stream_deadline`, which is both: an SSE error event on a stream, and
a 504 on the non-streaming routes.
"""

from enum import StrEnum


class StreamErrorCode(StrEnum):
    """The codes an error event carries; a `str`, so it is written to JSON and Redis as its value."""

    NO_ROUTE = "no_route"
    """No working route through the swarm for the model's blocks within WORKER_NO_ROUTE_TIMEOUT_S."""
    ROUTE_UNSATISFIABLE = "route_unsatisfiable"
    """The request's routing preferences (`provider`: only, ignore, min_reputation, allow_fallbacks) leave some
    blocks without an allowed server; the message names them. Nothing is billed unless tokens were delivered."""
    MODEL_NOT_SERVED = "model_not_served"
    """The job reached a worker that does not serve its model (a misrouted queue)."""
    PROMPT_TOO_LONG = "prompt_too_long"
    """The prompt leaves no room for a token within the model's context."""
    SAMPLING_ERROR = "sampling_error"
    """The request's own sampling numbers could not be sampled from; no retry helps."""
    STREAM_LOST = "stream_lost"
    """Redis lost stream entries while the request ran; what was written is billed."""
    INVALID_JOB = "invalid_job"
    """The job's payload did not validate; nothing to run or bill."""
    JOB_TIMEOUT = "job_timeout"
    """The run passed WORKER_JOB_TIMEOUT_S."""
    RETRIES_EXHAUSTED = "retries_exhausted"
    """Its workers stopped WORKER_JOB_MAX_TRIES times while running it."""
    JOB_EXPIRED = "job_expired"
    """The job waited in the queue until its payload expired."""
    WORKER_ERROR = "worker_error"
    """The worker failed in a way none of the codes above names."""
    STREAM_DEADLINE = "stream_deadline"
    """Written by the gateway, not on Redis: the stream outlived GATEWAY_STREAM_DEADLINE_S."""
