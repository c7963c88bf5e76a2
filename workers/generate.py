"""The generate job: one request, from its arq job to the last token on its stream and one usage record.

A run may be the first for its request or a recovery after another worker died: it reads what the stream
already holds, re-prefills prompt + those tokens, and continues from the next index. A failed step is
recovered the same way inside one run (a fresh session on a new route), so the client-visible stream never
repeats or loses a token. All Petals calls run in the model's thread pool; the event loop only writes Redis.
"""

import asyncio
import contextlib
import logging
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import redis.asyncio as aioredis
import torch
from pydantic import ValidationError

from mesh.session import StepResult, SwarmSession, uncovered_blocks
from protocol.events import ErrorBody, TokenEvent
from protocol.jobs import GenerateJob
from protocol.money import cost_of
from workers import metrics
from workers.attribution import Attribution
from workers.detokenize import IncrementalDecoder
from workers.ending import Billing, Outcome, end_abandoned, ending_of
from workers.sampling import choose_next_token
from workers.served_model import ServedModel
from workers.settings import WorkerSettings
from workers.stream import Appended, TokenStreamWriter

logger = logging.getLogger(__name__)

_FAILOVER_PAUSE_S = 0.2
"""Breathing room between a failed step and the next fresh session, so a dead route is not hammered."""


class LeaseLost(Exception):
    """Another run owns the request now (this worker stalled past its lease); this run must write nothing."""


@dataclass
class WorkerContext:
    """What every job of one worker process shares: the clients, Redis, the settings, the worker's id."""

    redis: aioredis.Redis
    settings: WorkerSettings
    served: dict[str, ServedModel]
    worker_id: str

    async def end_abandoned(self, request_id: str, payload: object, error: ErrorBody) -> bool:
        """End a request no run will finish (see `workers.ending.end_abandoned`)."""
        prompt_tokens = 0
        if isinstance(payload, dict) and (served := self.served.get(str(payload.get("model_id")))) is not None:
            prompt_tokens = len(served.encode(str(payload.get("prompt", ""))))
        return await end_abandoned(
            self.redis,
            request_id,
            payload,
            error,
            worker_id=self.worker_id,
            lease_ttl_s=self.settings.far_mesh_lease_ttl_s,
            prompt_tokens=prompt_tokens,
        )


@dataclass
class _Run:
    """The state of one run of one request."""

    job: GenerateJob
    served: ServedModel
    writer: TokenStreamWriter
    prompt_ids: list[int]
    generated: list[int]
    started_at: datetime
    attribution: Attribution = field(default_factory=Attribution)
    failovers: int = 0
    ttft_s: float | None = None
    """Enqueue to first token, when this run wrote the request's first token."""
    lease_lost: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def cost_far(self) -> Decimal:
        return cost_of(len(self.generated), self.job.price_per_token_far)


async def generate(ctx: dict[str, Any], payload: dict[str, Any]) -> str:
    """The arq job function (`protocol.jobs.GENERATE_FUNCTION`); returns how the request ended."""
    worker: WorkerContext = ctx["worker"]
    request_id = str(ctx["job_id"])  # the gateway enqueues each request under its own id
    try:
        job = GenerateJob.model_validate(payload)
    except ValidationError as exc:
        logger.error("job rejected request_id=%s reason=invalid payload: %s", request_id, exc.errors()[:3])
        error = ErrorBody(code="invalid_job", message=f"the job payload is invalid ({exc.error_count()} errors)")
        await worker.end_abandoned(request_id, payload, error)
        return "invalid"
    served = worker.served.get(job.model_id)
    if served is None:  # the queue is per model, so only a misrouted job lands here
        logger.error("job rejected request_id=%s reason=model %s not served here", job.request_id, job.model_id)
        message = f"{job.model_id} was queued to a worker that does not serve it; check FAR_MESH_WORKER_MODELS"
        await worker.end_abandoned(request_id, payload, ErrorBody(code="model_not_served", message=message))
        return "invalid"
    owner = f"{worker.worker_id}:{ctx.get('job_try', 1)}:{uuid.uuid4().hex[:8]}"
    writer = TokenStreamWriter(worker.redis, job.request_id, owner, lease_ttl_s=worker.settings.far_mesh_lease_ttl_s)
    return await run_request(job, served, writer, worker.settings, worker.worker_id)


async def run_request(
    job: GenerateJob, served: ServedModel, writer: TokenStreamWriter, settings: WorkerSettings, worker_id: str
) -> str:
    so_far = await writer.acquire()
    renewer = asyncio.create_task(_keep_lease(writer, settings.far_mesh_lease_ttl_s))
    try:
        if so_far.final is not None:
            logger.info("job skipped request_id=%s reason=already finished", job.request_id)
            return "superseded"
        run = _Run(
            job=job,
            served=served,
            writer=writer,
            prompt_ids=served.encode(job.prompt),
            generated=list(so_far.token_ids),
            started_at=datetime.now(UTC),
        )
        renewer.add_done_callback(lambda _: run.lease_lost.set())
        metrics.JOBS_STARTED.labels(job.model_id).inc()
        try:
            outcome = Outcome("cancelled", "cancelled") if so_far.cancelled else await _generate_tokens(run, settings)
            ended = await _finish(run, outcome, worker_id)
        except LeaseLost:
            ended = "superseded"
        metrics.JOBS_FINISHED.labels(job.model_id, ended).inc()
        logger.info(
            "job finished request_id=%s status=%s tokens=%d seconds=%.2f nodes=%d failovers=%d",
            job.request_id,
            ended,
            len(run.generated),
            (datetime.now(UTC) - run.started_at).total_seconds(),
            len(run.attribution.node_ids),
            run.failovers,
        )
        return ended
    finally:
        renewer.cancel()


async def _keep_lease(writer: TokenStreamWriter, ttl_s: float) -> None:
    """Renew the lease until cancelled; returns (ending the run's ownership) once another run holds it."""
    while True:
        await asyncio.sleep(ttl_s / 3)
        try:
            if not await writer.renew():
                logger.warning("lease lost request_id=%s", writer.request_id)
                return
        except (aioredis.ConnectionError, aioredis.TimeoutError) as exc:
            logger.warning("lease renewal failed request_id=%s error=%s", writer.request_id, exc)


async def _generate_tokens(run: _Run, settings: WorkerSettings) -> Outcome:
    job, served = run.job, run.served
    room = served.max_positions - len(run.prompt_ids)
    if room <= 0:
        message = f"the prompt is {len(run.prompt_ids)} tokens; {job.model_id} holds at most {served.max_positions}"
        return Outcome("failed", "error", ErrorBody(code="prompt_too_long", message=message + ": shorten it"))
    max_tokens = min(job.max_tokens, room)
    decoder = IncrementalDecoder(served.decode)
    for token_id in run.generated:
        decoder.push(token_id)
    generator = served.new_generator(seed=zlib.crc32(f"{job.request_id}:{len(run.generated)}".encode()))
    pending = run.prompt_ids + run.generated  # what the next step feeds in: everything the session lacks
    session: SwarmSession | None = None
    next_step: asyncio.Future[tuple[StepResult, int, str]] | None = None
    failing_since: float | None = None
    last_token_at: float | None = None

    def start_step(feed: list[int]) -> asyncio.Future[tuple[StepResult, int, str]]:
        assert session is not None
        return asyncio.ensure_future(
            served.run_blocking(_step, session, feed, job, generator, decoder, served.eos_token_ids)
        )

    try:
        while len(run.generated) < max_tokens:
            if run.lease_lost.is_set():
                raise LeaseLost
            if session is None:
                session = served.open_session(max_length=len(run.prompt_ids) + max_tokens)
                metrics.ACTIVE_SESSIONS.labels(job.model_id).inc()
            try:
                result, token_id, text = await (next_step or start_step(pending))
            except Exception as exc:  # Petals raises many types for a broken route; all mean "try a new one"
                next_step = None
                await served.run_blocking(session.close)
                metrics.ACTIVE_SESSIONS.labels(job.model_id).dec()
                session = None
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since >= settings.far_mesh_no_route_timeout_s:
                    return _no_route(run, settings, exc)
                run.failovers += 1
                metrics.FAILOVERS.labels(job.model_id).inc()
                logger.warning("step failed request_id=%s failover=%d error=%r", job.request_id, run.failovers, exc)
                await _ban_unreachable_servers(served, job.request_id)
                pending = run.prompt_ids + run.generated
                await asyncio.sleep(_FAILOVER_PAUSE_S)
                continue
            next_step = None
            failing_since = None
            run.attribution.record_step(result.spans, result.tokens)
            if token_id in served.eos_token_ids:
                return Outcome("completed", "stop")
            event = TokenEvent(
                token=text,
                request_id=job.request_id,
                index=len(run.generated),
                token_id=token_id,
                tokens_generated=len(run.generated) + 1,
                cost_far=cost_of(len(run.generated) + 1, job.price_per_token_far),
            )
            if len(run.generated) + 1 < max_tokens:
                # The next step runs while this token is written: the Redis round trip leaves the critical path.
                # Should the write say stop, that step's result is dropped unbilled.
                next_step = start_step([token_id])
            appended = await run.writer.append_token(event)
            if appended is Appended.CANCELLED:
                return Outcome("cancelled", "cancelled")
            if appended is Appended.LEASE_LOST:
                raise LeaseLost
            run.generated.append(token_id)
            _observe_token(run, last_token_at)
            last_token_at = time.monotonic()
            pending = [token_id]
        return Outcome("completed", "length")
    finally:
        if next_step is not None:  # the session must not close under a step still running in the pool
            with contextlib.suppress(Exception):
                await next_step
        if session is not None:
            metrics.ACTIVE_SESSIONS.labels(job.model_id).dec()
            await served.run_blocking(session.close)


def _step(
    session: SwarmSession,
    pending: list[int],
    job: GenerateJob,
    generator: torch.Generator,
    decoder: IncrementalDecoder,
    eos_token_ids: frozenset[int],
) -> tuple[StepResult, int, str]:
    """One step, the token chosen from it and its text, in one trip to the model's thread pool: sampling and
    decoding there keep the event loop, which serves every job of the worker, free for Redis writes."""
    result = session.step(pending)
    token_id = choose_next_token(result.logits, temperature=job.temperature, top_p=job.top_p, generator=generator)
    return result, token_id, "" if token_id in eos_token_ids else decoder.push(token_id)


def _observe_token(run: _Run, previous_at: float | None) -> None:
    model_id = run.job.model_id
    metrics.TOKENS_GENERATED.labels(model_id).inc()
    if len(run.generated) == 1:
        run.ttft_s = max(0.0, time.time() - run.job.enqueued_at)
        metrics.TIME_TO_FIRST_TOKEN.labels(model_id).observe(run.ttft_s)
    elif previous_at is not None:  # None for a recovering run's first token
        metrics.INTER_TOKEN_LATENCY.labels(model_id).observe(time.monotonic() - previous_at)


def _no_route(run: _Run, settings: WorkerSettings, exc: Exception) -> Outcome:
    missing = uncovered_blocks(run.served.model)
    where = f"blocks {_ranges(missing)}" if missing else "a working route"
    message = (
        f"no server holds {where} of {run.job.model_id} (gave up after {settings.far_mesh_no_route_timeout_s:g} s; "
        f"last error: {type(exc).__name__}); retry when the swarm has recovered"
    )
    return Outcome("failed", "error", ErrorBody(code="no_route", message=message))


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


async def _finish(run: _Run, outcome: Outcome, worker_id: str) -> str:
    """Write the ending and the usage record (atomically, once per request); returns the status written."""
    billing = Billing(
        prompt_tokens=len(run.prompt_ids),
        tokens_generated=len(run.generated),
        started_at=run.started_at,
        attribution=run.attribution,
        ttft_s=run.ttft_s,
        failovers=run.failovers,
    )
    if not await run.writer.finish(*ending_of(run.job, outcome, billing, worker_id)):
        raise LeaseLost
    return outcome.status


async def _ban_unreachable_servers(served: ServedModel, request_id: str) -> None:
    """Petals does not ban a server it failed to dial, and the DHT announces a dead one for minutes: without
    this, every new route can go through the same dead server until the no-route timeout."""
    try:
        banned = await served.run_blocking(served.client.refresh_routes)
    except Exception as exc:  # the next step's failure will say more; a failed refresh must not end the job
        logger.warning("route refresh failed request_id=%s error=%r", request_id, exc)
        return
    if banned:
        logger.info("banned unreachable servers request_id=%s peers=%s", request_id, ",".join(banned))
