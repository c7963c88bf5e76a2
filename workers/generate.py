"""The generate job: one request, from its arq job to the last token on its stream and one usage record.

A run may be the first for its request or a recovery after another worker died: it reads what the stream
already holds, re-prefills prompt + those tokens, and continues from the next index. A failed step is
recovered the same way inside one run (a fresh session on a new route), so the client-visible stream never
repeats or loses a token. All Petals calls run in the model's thread pool, and so do a session's tokens: the
pool thread that steps it chooses, decodes and writes each token (`workers.pipelined_writes`, each write
overlapping the next step), and hands the run back to the event loop only to open a session, fail over, retry a
write through a Redis outage, or end. Crossing between the two twice per token was most of the worker's CPU over
a direct Petals client (docs/performance.md).
"""

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mesh.route_choice import RouteUnsatisfiable
from mesh.session import StepResult, SwarmSession, uncovered_blocks
from protocol.backoff import Backoff
from protocol.error_codes import StreamErrorCode
from protocol.events import ChoiceEnd, ErrorBody, TokenEvent
from protocol.jobs import GenerateJob
from protocol.ownership import RequestOwner
from protocol.served_steps import ServedStep
from protocol.structured import SchemaRefused
from workers import budget_settlement, metrics
from workers.attribution import Attribution, served_step
from workers.constraint import ConstraintError, GrammarConstraint, grammar_tokenizer, is_free_text, job_grammar
from workers.detokenize import IncrementalDecoder
from workers.ending import Billing, Outcome, RunEnd, end_abandoned, ending_of
from workers.pipelined_writes import PipelinedTokenWrites
from workers.prompts import prompt_ids
from workers.route_policy import apply_route_policy
from workers.route_preferences import RunRouting, open_session, plan_routing, unsatisfiable, with_preferences
from workers.run_trace import NO_TRACE, RunTrace, queue_wait_s
from workers.sampling import NonFiniteLogits, Sampler, SamplingError
from workers.served_model import ServedModel
from workers.settings import WorkerSettings
from workers.spot_checks import RunTrust, begin_trust
from workers.stop_sequences import StopMatcher
from workers.stream import StreamSoFar, TokenStreamWriter, Written

logger = logging.getLogger(__name__)

NON_FINITE_FAILOVERS = 1
"""Fresh routes a choice may take after NaN or infinite logits: one sidesteps a bad server when the swarm has
another; a model that overflows on every route fails the request after that, not at the no-route timeout."""
_FAILOVER_PAUSE_S = 0.2
"""Breathing room between a failed step and the next fresh session, so a dead route is not hammered."""
_REDIS_OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


class Superseded(Exception):
    """Another run owns the request now (this worker stalled past its lease); this run must write nothing."""


class StateLost(Exception):
    """Redis lost stream entries this run wrote (a restart without persistence): the run must end the stream."""


def _check(written: Written) -> None:
    """Raise what a fenced write that did not happen means for the run."""
    if written is Written.SUPERSEDED:
        raise Superseded
    if written is Written.STATE_LOST:
        raise StateLost


@dataclass
class WorkerContext:
    """What every job of one worker process shares: the clients, Redis, the settings, the worker's id."""

    redis: aioredis.Redis
    """The home Redis (REDIS_URL): owners, budgets, balances, snapshots and trust."""
    settings: WorkerSettings
    served: dict[str, ServedModel]
    worker_id: str
    shards: dict[str, aioredis.Redis] = field(default_factory=dict)
    """model id -> the Redis holding its queue and streams, for each served model not on the home Redis."""

    def redis_for(self, model_id: str) -> aioredis.Redis:
        """Where `model_id`'s queue, token streams and usage records are (`protocol.redis_shards`)."""
        return self.shards.get(model_id, self.redis)

    async def end_abandoned(
        self, request_id: str, payload: object, error: ErrorBody, model_id: str | None = None
    ) -> bool:
        """End a request no run will finish (see `workers.ending.end_abandoned`), on the Redis of `model_id`'s queue
        (None: the model the payload names; a payload too broken to name one belongs to a queue of the home Redis
        unless the queue is said)."""
        if model_id is None:
            model_id = str(payload.get("model_id")) if isinstance(payload, dict) else ""
        prompt_tokens = 0
        if isinstance(payload, dict) and (served := self.served.get(str(payload.get("model_id")))) is not None:
            try:  # the ids a run prefilled (a chat's template included), so the prompt is billed as runs bill it
                prompt_tokens = len(prompt_ids(served, GenerateJob.model_validate(payload)))
            except ValidationError:
                prompt_tokens = len(served.encode(str(payload.get("prompt", ""))))
        return await end_abandoned(
            self.redis_for(model_id),
            request_id,
            payload,
            error,
            worker_id=self.worker_id,
            lease_ttl_s=self.settings.worker_lease_ttl_s,
            prompt_tokens=prompt_tokens,
            home=self.redis,
        )


@dataclass
class _Run:
    """The state of one run of one request."""

    job: GenerateJob
    served: ServedModel
    writer: TokenStreamWriter
    prompt_ids: list[int]
    generated: list[int]
    """The current choice's tokens."""
    started_at: datetime
    choice: int = 0
    """Which of the job's n choices the run generates now: they are generated one after another."""
    earlier: list[list[int]] = field(default_factory=list)
    """The tokens of the choices before the current one."""
    ends: list[ChoiceEnd] = field(default_factory=list)
    """How the choices before the current one ended."""
    attribution: Attribution = field(default_factory=Attribution)
    failovers: int = 0
    ttft_s: float | None = None
    """Enqueue to first token, when this run wrote the request's first token."""
    fence_broken: Written | None = None
    """Set by the lease renewer when it finds the run superseded or its stream lost."""
    trust: RunTrust = field(default_factory=RunTrust)
    """The route policy and, for a sampled session, its span recorder (`workers.spot_checks`)."""
    trace: RunTrace = NO_TRACE
    """The run's spans (`workers.run_trace`); recording nothing while tracing is off."""
    routing: RunRouting | None = None
    """The buyer's routing preferences, applied to every session of the run (`workers.route_preferences`)."""

    @property
    def total_generated(self) -> int:
        """Tokens generated over all choices: what is billed (the prompt once)."""
        return sum(map(len, self.earlier)) + len(self.generated)


async def generate(ctx: dict[str, Any], payload: dict[str, Any]) -> str:
    """The arq job function (`protocol.jobs.GENERATE_FUNCTION`); returns how the run ended (a `RunEnd`'s value:
    arq stores the result, and a plain string keeps it what it always was)."""
    worker: WorkerContext = ctx["worker"]
    request_id = str(ctx["job_id"])  # the gateway enqueues each request under its own id
    try:
        job = GenerateJob.model_validate(payload)
    except ValidationError as exc:
        problems = [(".".join(map(str, e["loc"])), e["type"]) for e in exc.errors()[:3]]  # never the values: a prompt
        logger.error("job rejected request_id=%s reason=invalid payload: %s", request_id, problems)
        message = f"the job payload is invalid ({exc.error_count()} errors)"
        error = ErrorBody(code=StreamErrorCode.INVALID_JOB, message=message)
        await worker.end_abandoned(request_id, payload, error, ctx.get("model_id"))
        return RunEnd.INVALID.value
    served = worker.served.get(job.model_id)
    if served is None:  # the queue is per model, so only a misrouted job lands here
        logger.error("job rejected request_id=%s reason=model %s not served here", job.request_id, job.model_id)
        message = f"{job.model_id} was queued to a worker that does not serve it; check WORKER_MODELS"
        error = ErrorBody(code=StreamErrorCode.MODEL_NOT_SERVED, message=message)
        await worker.end_abandoned(request_id, payload, error, ctx.get("model_id", job.model_id))
        return RunEnd.INVALID.value
    run_id = f"{worker.worker_id}:{ctx.get('job_try', 1)}:{uuid.uuid4().hex[:8]}"
    owner = RequestOwner(job.api_key_id, job.model_id) if job.api_key_id else None
    writer = TokenStreamWriter(
        worker.redis_for(job.model_id),
        job.request_id,
        run_id,
        lease_ttl_s=worker.settings.worker_lease_ttl_s,
        owner=owner,
        home=worker.redis,
    )
    job_try = int(ctx.get("job_try", 1))
    if job_try == 1:  # a retry's wait since enqueue would include its earlier runs
        metrics.QUEUE_WAIT.labels(job.model_id).observe(queue_wait_s(job))
    trace = RunTrace.claimed(job, job_try=job_try, worker_id=worker.worker_id)
    # Both before the first step, neither needing the other: their round trips overlap (first token, #32)
    trust, so_far = await asyncio.gather(
        begin_trust(worker.redis, job.request_id, served, worker.settings), writer.acquire()
    )
    ended = await run_request(
        job, served, writer, worker.settings, worker.worker_id, trust=trust, trace=trace, so_far=so_far
    )
    if ended not in (RunEnd.SUPERSEDED, RunEnd.ALREADY_FINISHED):  # this run wrote the usage record: check its spans
        await trust.publish(worker.redis, job.request_id, job.model_id)
    return ended.value


async def run_request(
    job: GenerateJob,
    served: ServedModel,
    writer: TokenStreamWriter,
    settings: WorkerSettings,
    worker_id: str,
    *,
    trust: RunTrust | None = None,
    trace: RunTrace = NO_TRACE,
    so_far: StreamSoFar | None = None,
) -> RunEnd:
    """Run the request to its end; `so_far` is what `writer.acquire()` returned when the caller took the lease."""
    so_far = so_far if so_far is not None else await writer.acquire()
    renewer = asyncio.create_task(_keep_lease(writer, settings.worker_lease_ttl_s))
    try:
        if so_far.final is not None:
            logger.info("job skipped request_id=%s reason=already finished", job.request_id)
            return RunEnd.ALREADY_FINISHED
        *earlier, generated = _by_choice(so_far)
        run = _Run(
            job=job,
            served=served,
            writer=writer,
            prompt_ids=prompt_ids(served, job),
            generated=generated,
            started_at=datetime.now(UTC),
            attribution=Attribution.earlier(so_far.served_steps),  # a dead run's work is paid by whoever ends it
            choice=len(earlier),
            earlier=earlier,
            trust=trust or RunTrust(),
            trace=trace,
            routing=await plan_routing(writer.home, job),
        )
        renewer.add_done_callback(lambda task: _note_broken_fence(run, task))
        metrics.JOBS_STARTED.labels(job.model_id).inc()
        try:
            ended = await _run_to_end(run, so_far.cancelled, settings, worker_id)
        except Superseded:
            ended = RunEnd.SUPERSEDED
        metrics.JOBS_FINISHED.labels(job.model_id, ended).inc()
        nodes = len(run.attribution.node_ids)
        trace.ended(str(ended), tokens=run.total_generated, nodes=nodes, failovers=run.failovers)
        logger.info(
            "job finished request_id=%s status=%s tokens=%d seconds=%.2f nodes=%d failovers=%d",
            job.request_id,
            ended,
            run.total_generated,
            (datetime.now(UTC) - run.started_at).total_seconds(),
            len(run.attribution.node_ids),
            run.failovers,
        )
        return ended
    finally:
        renewer.cancel()
        trace.close()


async def _run_to_end(run: _Run, cancelled: bool, settings: WorkerSettings, worker_id: str) -> RunEnd:
    """Generate (unless already cancelled) and write the ending; returns the status written."""
    try:
        outcome = Outcome("cancelled", "cancelled") if cancelled else await _generate_choices(run, settings)
    except StateLost:
        return await _finish(run, _state_lost(run), worker_id, settings, state_lost=True)
    return await _finish(run, outcome, worker_id, settings)


async def _keep_lease(writer: TokenStreamWriter, ttl_s: float) -> Written:
    """Renew the lease until cancelled; returns why the run must stop once it is superseded or its stream lost.

    Only the renewal's answer ends the run: an error while renewing (Redis away, a surprise) is retried, since
    the next renewal takes a lapsed lease back as long as the stream is as this run left it.

    Each token the run writes renews the lease in its own fenced script, so while tokens flow there is nothing to
    send: the renewer looks every TTL/6 and renews only when no token has renewed the lease for TTL/6. After each
    look the lease has more than 5/6 of its TTL left, so a look may come as late as with a renewal every TTL/3
    (2/3 of the TTL) before the lease lapses; a stalled step, which writes nothing, is renewed as before.
    """
    while True:
        await asyncio.sleep(ttl_s / 6)
        if writer.lease_renewed_within(ttl_s / 6):
            continue
        try:
            renewed = await writer.renew()
        except (RedisError, OSError) as exc:
            logger.warning("lease renewal failed request_id=%s error=%r", writer.request_id, exc)
            continue
        if renewed is not Written.WRITTEN:
            logger.warning("lease lost request_id=%s reason=%s", writer.request_id, renewed.name.lower())
            return renewed


def _note_broken_fence(run: _Run, renewer: "asyncio.Task[Written]") -> None:
    if not renewer.cancelled() and renewer.exception() is None:
        run.fence_broken = renewer.result()


async def _retrying_outages(settings: WorkerSettings, write: Callable[[], Awaitable[Written]]) -> Written:
    """`write()`, retried through a Redis outage of up to WORKER_REDIS_OUTAGE_S: when Redis is back, the
    fenced write itself tells whether the stream survived (a write whose reply was lost is recognised)."""
    backoff, give_up_at = Backoff(0.05, 1.0), time.monotonic() + settings.worker_redis_outage_s
    while True:
        try:
            return await write()
        except _REDIS_OUTAGE_ERRORS as exc:
            if time.monotonic() >= give_up_at:
                raise
            logger.warning("stream write failed, retrying in %.2fs error=%r", backoff.delay_s, exc)
            await backoff.sleep()


def _by_choice(so_far: StreamSoFar) -> list[list[int]]:
    """The stream's tokens, one list per choice up to the last one it holds (choices follow one another, so a
    choice that ended before its first token, at end of sequence, is an empty list)."""
    groups: list[list[int]] = [[]]
    for token_id, choice in zip(so_far.token_ids, so_far.choices or (0,) * len(so_far.token_ids), strict=True):
        groups.extend([] for _ in range(choice + 1 - len(groups)))
        groups[choice].append(token_id)
    return groups


async def _generate_choices(run: _Run, settings: WorkerSettings) -> Outcome:
    """The job's n choices, one after another, each in sessions of its own; the outcome of the last one (or of
    the first to fail or be cancelled, which ends the request).

    Petals cannot share one prefill between choices: a server sizes a session's attention cache from the batch
    of its first step and offers no way to copy it into another session (`hypo_ids` only reorders rows within
    one), so every choice prefills the prompt itself. One after another keeps every invariant of one choice
    (the fenced stream, recovery, attribution, the spot checks' tapes) as it is; the prompt is still billed once.
    """
    limit = min(run.job.max_tokens, run.served.max_positions - len(run.prompt_ids))
    run.ends = [  # choices an earlier run finished: one that filled its max_tokens ended for length
        ChoiceEnd(index=i, finish_reason="length" if len(ids) >= limit else "stop", tokens_generated=len(ids))
        for i, ids in enumerate(run.earlier)
    ]
    while True:
        outcome = await _generate_tokens(run, settings)
        if outcome.error is not None or outcome.status == "cancelled" or run.job.n == 1:
            return outcome
        reason = "length" if outcome.finish_reason == "length" else "stop"
        run.ends.append(ChoiceEnd(index=run.choice, finish_reason=reason, tokens_generated=len(run.generated)))
        if run.choice + 1 >= run.job.n:
            return outcome
        run.earlier.append(run.generated)
        run.generated = []
        run.choice += 1


def _choice_ends(run: _Run, outcome: Outcome) -> list[ChoiceEnd] | None:
    """The done event's `choices`: every choice's ending (None for one choice). Choices a cancellation cut short
    or never reached end "cancelled"."""
    if run.job.n == 1:
        return None
    return run.ends + [
        ChoiceEnd(index=i, finish_reason="cancelled", tokens_generated=len(run.generated) if i == run.choice else 0)
        for i in range(len(run.ends), run.job.n)
    ]


async def _generate_tokens(run: _Run, settings: WorkerSettings) -> Outcome:
    """The current choice's tokens, from where the stream left them to its end."""
    job, served = run.job, run.served
    room = served.max_positions - len(run.prompt_ids)
    if room <= 0:
        message = f"the prompt is {len(run.prompt_ids)} tokens; {job.model_id} holds at most {served.max_positions}"
        return Outcome.failed(ErrorBody(code=StreamErrorCode.PROMPT_TOO_LONG, message=message + ": shorten it"))
    max_tokens = min(job.max_tokens, room)
    try:  # before any swarm time: a grammar this worker cannot build ends the request unbilled
        constraint = None if is_free_text(job) else await served.run_blocking(_constraint_of, run)
        decoder, stops, sampler = _text_and_sampling(run, constraint)
    except (SchemaRefused, ConstraintError, SamplingError) as exc:
        message = f"the response_format or tools cannot be enforced here ({exc}); send the request without them"
        return Outcome.failed(ErrorBody(code=StreamErrorCode.INVALID_JOB, message=message))
    if run.generated and (run.generated[-1] in served.eos_token_ids or stops.stopped or sampler.grammar_complete):
        return Outcome("completed", "stop")  # an earlier run wrote the last token and died before the ending
    streaming = _Streaming(
        run=run,
        sampler=sampler,
        decoder=decoder,
        stops=stops,
        max_tokens=max_tokens,
        writes=PipelinedTokenWrites(
            settings.redis_shards.url_for(job.model_id), run.writer, timeout_s=settings.worker_lease_ttl_s
        ),
        feed=run.prompt_ids + run.generated,  # what the next step feeds in: everything the session lacks
    )
    try:
        while len(run.generated) < max_tokens:
            if run.fence_broken is not None:
                _check(run.fence_broken)
            if streaming.session is None:
                run.trace.session_opening(run.failovers)
                opened = await open_session(
                    served, run.routing, max_length=len(run.prompt_ids) + max_tokens, recorder=run.trust.recorder
                )
                if isinstance(opened, RouteUnsatisfiable):  # no allowed route exists: say so now, not at the timeout
                    return Outcome.failed(unsatisfiable(job, opened.blocks, opened.why))
                streaming.session = opened
                run.trace.session_opened()
                metrics.ACTIVE_SESSIONS.labels(job.model_id).inc()
            pause = await _in_pool(streaming)
            if pause.fence is not None:
                _check(pause.fence)
            if pause.outcome is not None:
                return pause.outcome
            if (unconfirmed := pause.unconfirmed) is not None:  # Redis failed the thread's write: retried here
                write = functools.partial(run.writer.append_token, unconfirmed.event, unconfirmed.step)
                appended = await _retrying_outages(settings, write)
                if appended is Written.CANCELLED:
                    return Outcome("cancelled", "cancelled")
                _check(appended)
                _token_written(streaming, unconfirmed.token_id, _Clocks.now())
                if unconfirmed.ending:
                    return Outcome("completed", "stop")
                continue
            failure = pause.failed
            if failure is None:
                continue
            if isinstance(failure, NonFiniteLogits) and streaming.non_finite_failovers >= NON_FINITE_FAILOVERS:
                message = (
                    f"sampling failed ({failure}) on {NON_FINITE_FAILOVERS + 1} routes through the swarm; "
                    "the tokens delivered are billed, send the request again"
                )
                return Outcome.failed(ErrorBody(code=StreamErrorCode.SAMPLING_ERROR, message=message))
            if isinstance(failure, NonFiniteLogits):  # the servers' numbers: another route may not have them
                streaming.non_finite_failovers += 1
            elif isinstance(failure, SamplingError):  # the request's own: no retry, no server to blame
                message = f"sampling failed ({failure})"
                return Outcome.failed(ErrorBody(code=StreamErrorCode.SAMPLING_ERROR, message=message))
            # Petals raises many types for a broken route; all mean "try a new one"
            run.trace.step_failed(failure)
            session, streaming.session = streaming.session, None
            assert session is not None
            await served.run_blocking(session.close)
            metrics.ACTIVE_SESSIONS.labels(job.model_id).dec()
            if isinstance(failure, RouteUnsatisfiable):  # the preferences allow no route: a new session finds none
                return Outcome.failed(unsatisfiable(job, failure.blocks, failure.why))
            now = time.monotonic()
            streaming.failing_since = streaming.failing_since or now
            if now - streaming.failing_since >= settings.worker_no_route_timeout_s:
                return _no_route(run, settings, failure)
            run.failovers += 1
            metrics.FAILOVERS.labels(job.model_id).inc()
            logger.warning("step failed request_id=%s failover=%d error=%r", job.request_id, run.failovers, failure)
            await _ban_unreachable_servers(run, job.request_id)
            streaming.feed = run.prompt_ids + run.generated
            await asyncio.sleep(_FAILOVER_PAUSE_S)
        return Outcome("completed", "length")
    finally:
        run.trace.session_closed()
        streaming.writes.close()
        if streaming.session is not None:
            metrics.ACTIVE_SESSIONS.labels(job.model_id).dec()
            await served.run_blocking(streaming.session.close)


_Stepped = tuple[StepResult, int, str]
"""A step's result, the token chosen from it and its text."""


@dataclass
class _Streaming:
    """One choice's token loop, shared by the event loop (`_generate_tokens`: sessions, failovers, retries) and the
    model's pool thread (`_stream_tokens`: the steps and the writes), which never run it at the same time."""

    run: _Run
    sampler: Sampler
    decoder: IncrementalDecoder
    stops: StopMatcher
    max_tokens: int
    writes: PipelinedTokenWrites
    feed: list[int]
    """What the next step feeds in."""
    session: SwarmSession | None = None
    ready: _Stepped | Exception | None = None
    """The next token's step, already taken while the last token was written (or how it failed)."""
    failing_since: float | None = None
    """When steps began to fail without one going through since (the no-route timeout counts from it)."""
    non_finite_failovers: int = 0
    """Fresh routes taken because a step's logits were NaN or infinite (at most NON_FINITE_FAILOVERS)."""
    last_token_at: float | None = None
    stop_requested: bool = False
    """The run was cancelled (the worker stops): the pool thread returns before its next step."""


@dataclass(frozen=True)
class _Unconfirmed:
    """A token the pool thread sent whose write met a Redis error: the event loop retries it (fenced, so a write
    that landed is recognised) and goes on as the thread would have."""

    event: TokenEvent
    step: ServedStep
    token_id: int
    ending: bool


@dataclass(frozen=True)
class _Pause:
    """Why the pool thread handed the loop back (nothing set: the run was cancelled)."""

    outcome: Outcome | None = None
    """The choice ended, every write answered."""
    fence: Written | None = None
    """A write found the run superseded or its stream lost."""
    failed: Exception | None = None
    """A step raised: the route broke, or sampling failed."""
    unconfirmed: _Unconfirmed | None = None


async def _in_pool(streaming: _Streaming) -> _Pause:
    """`_stream_tokens` in the model's pool. A run cancelled meanwhile (its worker stops) waits for the thread to
    return, which it does before its next step, so the session never closes under a running step."""
    running = asyncio.ensure_future(streaming.run.served.run_blocking(_stream_tokens, streaming))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        streaming.stop_requested = True
        with contextlib.suppress(Exception):
            await running
        raise


def _stream_tokens(streaming: _Streaming) -> _Pause:
    """The choice's tokens, stepped, chosen and written from the model's pool thread until the choice ends or
    something needs the event loop. Each token's write is sent at once and the next step taken while it travels;
    should the write say stop, that step's result is dropped unbilled."""
    run, sampler, stops = streaming.run, streaming.sampler, streaming.stops
    job, served, writes = run.job, run.served, streaming.writes
    while len(run.generated) < streaming.max_tokens:
        if run.fence_broken is not None:
            return _Pause(fence=run.fence_broken)
        if streaming.stop_requested:
            return _Pause()
        stepped = streaming.ready if streaming.ready is not None else _take_step(streaming, streaming.feed)
        streaming.ready = None
        if isinstance(stepped, Exception):
            return _Pause(failed=stepped)
        result, token_id, text = stepped
        streaming.failing_since = None
        served.note_routed()
        run.trace.stepped()
        run.attribution.record_step(result.spans, result.tokens)
        choice = sampler.last
        is_eos = token_id in served.eos_token_ids
        if is_eos and not stops.held:
            return _Pause(outcome=Outcome("completed", "stop"))
        closed = sampler.grammar_complete  # a closed JSON value is the whole reply
        last = is_eos or closed or len(run.generated) + 1 >= streaming.max_tokens
        text = stops.feed(text, final=last)  # the end releases all
        ending = is_eos or stops.stopped or closed
        event = TokenEvent(
            token=text,
            request_id=job.request_id,
            index=len(run.generated),
            token_id=token_id,
            tokens_generated=run.total_generated + 1,
            cost_far=job.cost_far(len(run.prompt_ids), run.total_generated + 1),
            choice=run.choice if job.n > 1 else None,
            **(choice.event_fields() if choice is not None else {}),
        )
        # the step's route goes beside the stream with its token: billed and creditable together, or neither
        step = served_step(result)
        try:
            writes.send(event, step)
            sent_at = _Clocks.now()
            if len(run.generated) + 1 < streaming.max_tokens and not ending:
                streaming.ready = _take_step(streaming, [token_id])  # while the write travels
            written = writes.result()
        except _REDIS_OUTAGE_ERRORS:
            return _Pause(unconfirmed=_Unconfirmed(event, step, token_id, ending))
        if written is Written.CANCELLED:
            return _Pause(outcome=Outcome("cancelled", "cancelled"))
        if written is not Written.WRITTEN:
            return _Pause(fence=written)
        _token_written(streaming, token_id, sent_at)
        if ending:
            return _Pause(outcome=Outcome("completed", "stop"))
    return _Pause(outcome=Outcome("completed", "length"))


def _take_step(streaming: _Streaming, feed: list[int]) -> _Stepped | Exception:
    """One step and its token (or what it raised: the caller decides what a failure means)."""
    run = streaming.run
    assert streaming.session is not None
    try:
        return _step(streaming.session, feed, run.job, streaming.sampler, streaming.decoder, run.served.eos_token_ids)
    except Exception as exc:
        return exc


@dataclass(frozen=True)
class _Clocks:
    """When a token reached its stream, on both clocks: its write's reply is read only after the next step, so the
    time is taken when it was sent."""

    wall: float
    monotonic: float

    @classmethod
    def now(cls) -> "_Clocks":
        return cls(time.time(), time.monotonic())


def _token_written(streaming: _Streaming, token_id: int, written_at: _Clocks) -> None:
    """The token is on the stream: the run counts it, and the next step feeds it."""
    run = streaming.run
    run.generated.append(token_id)
    _observe_token(run, streaming.last_token_at, written_at)
    streaming.last_token_at = written_at.monotonic
    streaming.feed = [token_id]


def _step(
    session: SwarmSession,
    pending: list[int],
    job: GenerateJob,
    sampler: Sampler,
    decoder: IncrementalDecoder,
    eos_token_ids: frozenset[int],
) -> tuple[StepResult, int, str]:
    """One step, the token chosen from it and its text, in one trip to the model's thread pool: sampling and
    decoding there keep the event loop, which serves every job of the worker, free for Redis writes."""
    result = session.step(pending)
    token_id = sampler.choose(result.logits)
    return result, token_id, "" if token_id in eos_token_ids else decoder.push(token_id)


def _constraint_of(run: _Run) -> GrammarConstraint | None:
    """The constraint of the job's tools or response_format (None for free text), built in the model's pool: the
    tokenizer's first index takes about a second on a 49k vocabulary."""
    grammar = job_grammar(run.job)
    if grammar is None:
        return None
    served = run.served
    tokenizer = grammar_tokenizer(
        served.tokenizer, vocab_size=int(served.model.config.vocab_size), eos_token_ids=served.eos_token_ids
    )
    return GrammarConstraint(tokenizer, grammar)


def _text_and_sampling(
    run: _Run, constraint: GrammarConstraint | None = None
) -> tuple[IncrementalDecoder, StopMatcher, Sampler]:
    """The run's decoder, stop matcher and sampler, brought to where the tokens already on the stream left them."""
    job = run.job
    decoder, stops = IncrementalDecoder(run.served.decode), StopMatcher(job.stop)
    for token_id in run.generated:
        stops.feed(decoder.push(token_id))
    sampler = Sampler(
        job,
        temperature=job.temperature,
        top_p=job.top_p,
        seed_key=job.request_id,
        prompt_ids=run.prompt_ids,
        decode=run.served.decode,
        constraint=constraint,
        choice=run.choice,
    )
    sampler.replay(run.generated)
    return decoder, stops, sampler


def _observe_token(run: _Run, previous_at: float | None, written_at: _Clocks) -> None:
    model_id = run.job.model_id
    metrics.TOKENS_GENERATED.labels(model_id).inc()
    if run.total_generated == 1:
        run.ttft_s = max(0.0, written_at.wall - run.job.enqueued_at)
        metrics.TIME_TO_FIRST_TOKEN.labels(model_id).observe(run.ttft_s)
    elif previous_at is not None:  # None for a recovering run's first token
        metrics.INTER_TOKEN_LATENCY.labels(model_id).observe(written_at.monotonic - previous_at)


def _no_route(run: _Run, settings: WorkerSettings, exc: Exception) -> Outcome:
    missing = uncovered_blocks(run.served.model)
    run.served.note_no_route(every_block_announced=not missing)
    where = f"blocks {_ranges(missing)}" if missing else "a working route"
    message = (
        f"no server holds {where} of {run.job.model_id} (gave up after {settings.worker_no_route_timeout_s:g} s; "
        f"last error: {type(exc).__name__}); retry when the swarm has recovered"
    )
    return Outcome.failed(ErrorBody(code=StreamErrorCode.NO_ROUTE, message=message))


def _ranges(blocks: list[int]) -> str:
    """[2, 3, 4, 7] -> "2..4, 7"."""
    parts: list[str] = []
    start = prev = blocks[0]
    for block in [*blocks[1:], None]:
        if block is not None and block == prev + 1:
            prev = block
            continue
        parts.append(f"{start}..{prev}" if prev != start else str(start))
        if block is not None:
            start = prev = block
    return ", ".join(parts)


def _state_lost(run: _Run) -> Outcome:
    message = (
        f"Redis lost this request's stream while it ran; the {run.total_generated} tokens generated are billed. "
        "Send the request again with a new request_id"
    )
    return Outcome.failed(ErrorBody(code=StreamErrorCode.STREAM_LOST, message=message))


async def _finish(
    run: _Run, outcome: Outcome, worker_id: str, settings: WorkerSettings, *, state_lost: bool = False
) -> RunEnd:
    """Write the ending and the usage record (atomically, once per request); returns the status written."""
    billing = Billing(
        prompt_tokens=len(run.prompt_ids),
        tokens_generated=run.total_generated,
        started_at=run.started_at,
        attribution=run.attribution,
        ttft_s=run.ttft_s,
        failovers=run.failovers,
        route_policy=with_preferences(run.trust.route_policy, run.job),
        spot_checked=run.trust.recorder is not None,
        choices=_choice_ends(run, outcome),
    )
    event, usage = ending_of(run.job, outcome, billing, worker_id)
    if (trace_parent := run.trace.traceparent()) is not None:  # the ledger's span joins this run's trace
        usage = usage.model_copy(update={"trace_parent": trace_parent})
    run.trace.finish_started()
    write = functools.partial(run.writer.finish, event, usage, state_lost=state_lost)
    finished = await _retrying_outages(settings, write)
    run.trace.finish_done(finished.name.lower())
    if finished is Written.CANCELLED:
        return RunEnd.ALREADY_FINISHED  # another run's ending is on the stream, with its usage record
    if finished is Written.STATE_LOST:
        return await _finish(run, _state_lost(run), worker_id, settings, state_lost=True)
    _check(finished)
    await budget_settlement.settle_reservation(run.writer.home, run.job, usage.total_cost_far)
    return RunEnd(outcome.status)


async def _ban_unreachable_servers(run: _Run, request_id: str) -> None:
    """Petals does not ban a server it failed to dial, and the DHT announces a dead one for minutes: without
    this, every new route can go through the same dead server until the no-route timeout. A ban can free a
    replica the route policy kept out while the banned server stood in for it, so the policy is applied again."""
    served = run.served
    try:
        banned = await served.run_blocking(served.client.refresh_routes)
        if banned:
            logger.info("banned unreachable servers request_id=%s peers=%s", request_id, ",".join(banned))
            run.trust.route_policy = await apply_route_policy(run.writer.home, served)
    except Exception as exc:  # the next step's failure will say more; a failed refresh must not end the job
        logger.warning("route refresh failed request_id=%s error=%r", request_id, exc)
