"""The verifier process: reads spot checks from their stream, recomputes each span, writes verdicts and bans.

One consumer group, so replicas share the work; an entry is acknowledged only after its verdicts are committed
(a verifier that dies mid-check leaves it pending, and the next start claims it back), and deleted with its
acknowledgement, its bytes subtracted from what the checks waiting hold (`workers.check_store` bounds that).
Recomputation runs in a thread so the loop keeps beating; bans and reputations are copied to Redis, where workers
read them.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg
import redis.asyncio as aioredis
import torch
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from probes import Heartbeat, serve_health_and_metrics
from protocol import keys
from protocol.backoff import Backoff
from protocol.verification import (
    VERIFICATION_BYTES_FIELD,
    NotVerified,
    RecordedSpan,
    SpotCheck,
    UnverifiedCause,
    read_entry,
    readable_request_id,
)
from schema.transient import TRANSIENT_LEDGER_ERRORS
from streams import ConsumerGroup, Entry
from verifier import metrics
from verifier.lost_checks import record_lost_checks
from verifier.recompute import BlockRunner, SpanVerdict, verify_span
from verifier.settings import VerifierSettings
from verifier.unverifiable import RecordingUnusable
from verifier.verdicts import (
    BanPolicy,
    Recorded,
    add_failed_steps,
    apply_pending_slashes,
    current_bans,
    probation_scores,
    record_unverified,
    record_verdicts,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_UNKNOWN_MODEL = "unknown"
"""The model label of a malformed entry's metrics: its model id could not be read."""
_BEAT_WHILE_WORKING_S = 5.0
_CLAIM_IDLE_MS = 120_000
"""A pending check idle this long belongs to a verifier that died; the next start takes it over."""

# KEYS: stream, bytes held. ARGV: group, entry id, the entry's bytes. Subtracts only what it deletes, so an entry
# finished twice (claimed back from a verifier that was only slow) is subtracted once.
_FINISH = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if redis.call('XDEL', KEYS[1], ARGV[2]) == 1 then redis.call('DECRBY', KEYS[2], ARGV[3]) end
return 1
"""


@dataclass
class Recomputed:
    """One spot check's outcome: the verdicts, each span's place in the message, and the spans the worker
    recorded in a way that cannot be used (with why)."""

    verdicts: list[SpanVerdict] = field(default_factory=list)
    span_indices: list[int] = field(default_factory=list)
    unusable: list[tuple[RecordedSpan, RecordingUnusable]] = field(default_factory=list)


class Verifier:
    """Holds the model blocks (loaded on first use) and turns spot checks into recorded verdicts."""

    def __init__(self, settings: VerifierSettings, redis: aioredis.Redis, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self.redis = redis
        self.pool = pool
        self.policy = BanPolicy(
            after=settings.verifier_ban_after,
            window_s=settings.verifier_ban_window_s,
            cooldown_s=settings.verifier_ban_s,
        )
        self._runners: dict[str, BlockRunner] = {}
        self.heartbeat = Heartbeat(settings.verifier_liveness_s)
        self._next_lost_sweep = 0.0

    def runner_for(self, model_id: str) -> BlockRunner | None:
        if model_id not in self._runners:
            spec = next((m for m in self.settings.catalog.models if m.model_id == model_id), None)
            if spec is None:
                return None
            self._runners[model_id] = BlockRunner.load(spec.weights_source)
            log.info("model loaded model_id=%s blocks=%d", model_id, self._runners[model_id].num_blocks)
        return self._runners[model_id]

    def recompute(self, check: SpotCheck) -> Recomputed | None:
        """Every span's verdict, in the message's order (blocking: run it in a thread); None for an unknown model.
        A span whose reply cannot be verified gets a mismatch with its cause; one whose recording the worker got
        wrong gets no verdict (`RecordingUnusable`), and the others are still judged."""
        runner = self.runner_for(check.model_id)
        if runner is None:
            return None
        done = Recomputed()
        for index, span in enumerate(check.spans):
            try:
                done.verdicts.append(verify_span(runner, span))
            except RecordingUnusable as exc:
                done.unusable.append((span, exc))
            else:
                done.span_indices.append(index)
        return done

    async def handle(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        """Verify one entry and record it; a span whose reply cannot be verified is a verdict against its server,
        never a drop. What cannot be judged for a reason that is not the servers' (a worker's notice that it
        dropped the check, a malformed entry whose request id can still be read, an unknown model, spans the worker
        recorded wrong) is logged, counted, acknowledged and recorded as not verified (`record_unverified`), so
        that the session is paid as an unsampled one is instead of being held forever."""
        try:
            entry = read_entry(fields)
        except ValueError as exc:
            log.error(
                "spot check dropped entry=%s request_id=%s reason=malformed: %s",
                entry_id.decode(),
                readable_request_id(fields),
                str(exc)[:200],
            )
            await self._set_aside(entry_id, fields)
            return
        if isinstance(entry, NotVerified):  # the worker dropped the check: nothing to judge, nobody to blame
            metrics.SPANS_UNUSABLE.labels(entry.model_id, entry.cause).inc(entry.spans)
            await self._record_unverified(entry.request_id, entry.model_id, entry.cause, entry.spans)
            await self._finish(entry_id, fields)
            return
        check = entry
        started = time.monotonic()
        recomputed = await self._beating(asyncio.to_thread(self.recompute, check))
        if recomputed is None:
            log.error(
                "spot check dropped request_id=%s reason=model %s not in catalog", check.request_id, check.model_id
            )
            metrics.SPANS_UNUSABLE.labels(check.model_id, "unknown-model").inc(len(check.spans))
            await self._record_unverified(check.request_id, check.model_id, "unknown-model", len(check.spans))
            await self._finish(entry_id, fields)
            return
        for span, unusable in recomputed.unusable:  # the worker's record, not the server's doing: nobody is blamed
            metrics.SPANS_UNUSABLE.labels(check.model_id, unusable.cause).inc()
            log.error(
                "span not verified request_id=%s node_id=%s blocks=%d-%d reason=worker recording: %s",
                check.request_id,
                span.peer_id,
                span.start_block,
                span.end_block,
                unusable,
            )
        verdicts = recomputed.verdicts
        metrics.VERIFY_SECONDS.observe(time.monotonic() - started)
        async with self.pool.acquire() as connection:
            recorded = await record_verdicts(
                connection, check.request_id, check.model_id, verdicts, self.policy, recomputed.span_indices
            )
            if recomputed.unusable:  # judged in part, or not at all: say so, apart from the verdicts
                await record_unverified(
                    connection, check.request_id, check.model_id, "recording-unusable", len(recomputed.unusable)
                )
        await self._publish_trust(recorded)
        await self._finish(entry_id, fields)
        for verdict in verdicts:
            metrics.SPANS_VERIFIED.labels(check.model_id, "ok" if verdict.ok else "mismatch").inc()
            metrics.TOKENS_VERIFIED.labels(check.model_id).inc(verdict.tokens)
        metrics.SLASHED_ROWS.inc(recorded.slashed)
        bad = [v for v in verdicts if not v.ok]
        log.info(
            "session verified request_id=%s spans=%d mismatches=%d slashed=%d seconds=%.3f%s",
            check.request_id,
            len(verdicts),
            len(bad),
            recorded.slashed,
            time.monotonic() - started,
            "".join(
                f" mismatch={v.peer_id}:{v.start_block}-{v.end_block}@step{v.first_bad_step}"
                f"(cause={v.cause} err={v.max_error:.3g})"
                for v in bad
            ),
        )

    async def _handle_or_set_aside(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        """`handle` the entry; one that fails for a reason other than an outage fails the same way each time (the
        stream is anyone's to write): it is recorded as malformed and acknowledged, never left to stop the verifier
        at every start, as a step number past int4 or JSON nested past the parser's depth once did."""
        try:
            await self.handle(entry_id, fields)
        except _OUTAGES:
            raise
        except Exception:
            log.exception("spot check dropped entry=%s reason=it cannot be handled", entry_id.decode())
            await self._set_aside(entry_id, fields)

    async def _set_aside(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        """Acknowledge an entry that cannot be judged, recording its session (when its request id can still be read)
        as not verified for `malformed`, so that it is paid as an unsampled one rather than held forever."""
        request_id = readable_request_id(fields)
        if request_id is not None:
            metrics.SPANS_UNUSABLE.labels(_UNKNOWN_MODEL, "malformed").inc()
            await self._record_unverified(request_id, None, "malformed", 0)
        await self._finish(entry_id, fields)

    async def _record_unverified(
        self, request_id: str, model_id: str | None, cause: UnverifiedCause, spans: int
    ) -> None:
        async with self.pool.acquire() as connection:
            await record_unverified(connection, request_id, model_id, cause, spans)
        log.warning("session not verified request_id=%s cause=%s spans=%d", request_id, cause, spans)

    async def _beating(self, work: Awaitable[T]) -> T:
        """Await `work`, beating the heartbeat meanwhile: a long recomputation, or the first load of a model's
        weights, is the loop doing its job, not a stuck loop."""
        task = asyncio.ensure_future(work)
        while not task.done():
            await asyncio.wait({task}, timeout=_BEAT_WHILE_WORKING_S)
            self.heartbeat.beat()
        return task.result()

    async def _publish_trust(self, recorded: Recorded) -> None:
        if recorded.reputation:
            reputation = {node: str(score) for node, score in recorded.reputation.items()}
            await self.redis.hset(keys.NODE_REPUTATION, mapping=reputation)  # type: ignore[misc]
            for node, score in recorded.reputation.items():
                metrics.NODE_REPUTATION.labels(node).set(float(score))  # a gauge for dashboards, never money
        if recorded.banned:
            await self.redis.zadd(
                keys.BANNED_NODES, {node: until.timestamp() for node, until in recorded.banned.items()}
            )
            metrics.BANS.inc(len(recorded.banned))
            for node, until in recorded.banned.items():
                log.warning("node banned node_id=%s until=%s", node, until.isoformat())
        await self.redis.zremrangebyscore(keys.BANNED_NODES, "-inf", time.time())

    async def refresh_from_ledger(self) -> None:
        """The loop's periodic work: fold the workers' failed steps in, apply pending slashes, copy the ledger's
        bans and new peers' probation scores to Redis, and (each LOST_SWEEP_INTERVAL_S) record the sampled sessions
        whose check can no longer come (`verifier.lost_checks`). Bans follow wallets and new peer ids appear without any
        verdict of their own, so only the ledger knows that a fresh peer id of a banned wallet is banned, or that
        a peer never checked is on probation; the workers read Redis."""
        await self._fold_failed_steps()
        async with self.pool.acquire() as connection:
            if slashed := await apply_pending_slashes(connection):
                metrics.SLASHED_ROWS.inc(slashed)
                log.info("pending slashes applied rows=%d", slashed)
            bans = await current_bans(connection)
            probation = await probation_scores(connection)
            if time.monotonic() >= self._next_lost_sweep:
                if lost := await record_lost_checks(connection, self.redis, self.settings.verifier_lost_check_after_s):
                    metrics.SESSIONS_NEVER_PUBLISHED.inc(len(lost))
                self._next_lost_sweep = time.monotonic() + LOST_SWEEP_INTERVAL_S
        if bans:
            await self.redis.zadd(keys.BANNED_NODES, {node: until.timestamp() for node, until in bans.items()})
        if probation:
            scores = {node: str(score) for node, score in probation.items()}
            await self.redis.hset(keys.NODE_REPUTATION, mapping=scores)  # type: ignore[misc]

    async def _fold_failed_steps(self) -> None:
        """Move the workers' failed-step counts from Redis into `far_nodes` (taken and cleared atomically)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(keys.FAILED_STEPS)
            pipe.delete(keys.FAILED_STEPS)
            taken, _ = await pipe.execute()
        if taken:
            counts = {node.decode(): int(failed) for node, failed in taken.items()}
            async with self.pool.acquire() as connection:
                await add_failed_steps(connection, counts)
            log.info("failed steps recorded nodes=%d steps=%d", len(counts), sum(counts.values()))

    async def _finish(self, entry_id: bytes, fields: Mapping[bytes, bytes]) -> None:
        """Acknowledge and delete the entry, subtracting its bytes from what the checks waiting hold: a verified
        check leaves room for the next (an entry from before byte counting, or a malformed one, counts 0)."""
        try:
            size = max(0, int(fields.get(VERIFICATION_BYTES_FIELD.encode(), b"0")))
        except ValueError:
            size = 0
        size = min(size, sum(len(value) for value in fields.values()))  # a claim, bounded by what the entry holds
        finish = self.redis.register_script(_FINISH)
        names = [keys.VERIFICATION_STREAM, keys.VERIFICATION_STREAM_BYTES]
        await finish(keys=names, args=[keys.VERIFICATION_CONSUMER_GROUP, entry_id, size])

    async def _join(self, group: ConsumerGroup, stop: asyncio.Event) -> list[Entry] | None:
        """Join the consumer group (creating it) and claim what a dead verifier left pending; None once `stop` is set
        first. A Redis restarting while the verifier starts is waited out, as in the loop: a verifier (re)started
        during an outage once exited instead (the chaos soak, issue #29)."""
        outage = Backoff(_OUTAGE_FIRST_DELAY_S, _OUTAGE_MAX_DELAY_S)
        while not stop.is_set():
            try:
                await group.join()
                _, claimed = await group.claim(_CLAIM_IDLE_MS, count=1000)
                return claimed
            except _OUTAGES as exc:
                log.warning("Redis unavailable at start; retrying in %.1f s error=%r", outage.delay_s, exc)
                await outage.sleep()
        return None

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; the entry in hand is finished first."""
        consumer = self.settings.verifier_consumer_name
        group = ConsumerGroup(self.redis, keys.VERIFICATION_STREAM, keys.VERIFICATION_CONSUMER_GROUP, consumer)
        backlog = await self._join(group, stop)
        if backlog is None:
            return
        next_pending_slash = next_claim = 0.0
        # A read waits for new checks at most until the next refresh is due, so a short interval is kept.
        read_block_ms = max(1, min(1000, int(self.settings.verifier_refresh_interval_s * 1000)))
        log.info("verifier started consumer=%s models=%d", consumer, len(self.settings.catalog.models))
        outage = Backoff(_OUTAGE_FIRST_DELAY_S, _OUTAGE_MAX_DELAY_S)
        while not stop.is_set():
            self.heartbeat.beat()
            try:
                if time.monotonic() >= next_pending_slash:
                    await self.refresh_from_ledger()
                    next_pending_slash = time.monotonic() + self.settings.verifier_refresh_interval_s
                if not backlog and time.monotonic() >= next_claim:
                    # what a verifier that died left pending (its consumer name is gone with it), not only at start:
                    # stranded, those entries would also hold back the sweep for checks that never came
                    _, backlog = await group.claim(_CLAIM_IDLE_MS, count=self.settings.verifier_batch)
                    next_claim = time.monotonic() + _CLAIM_IDLE_MS / 2000
                if not backlog:
                    backlog = await group.read(count=self.settings.verifier_batch, block_ms=read_block_ms)
                while backlog and not stop.is_set():
                    entry_id, fields = backlog[0]  # taken off only once handled: an outage retries it
                    if fields:  # an entry trimmed away while pending comes back without fields
                        await self._handle_or_set_aside(entry_id, fields)
                    else:
                        await self._finish(entry_id, fields)
                    backlog.pop(0)
                    self.heartbeat.beat()
            except _OUTAGES as exc:
                log.warning("ledger or Redis unavailable; retrying in %.1f s error=%r", outage.delay_s, exc)
                await outage.sleep()
                continue
            outage.reset()


_OUTAGES: tuple[type[Exception], ...] = (
    OSError,  # refused or reset: PostgreSQL or Redis restarting
    *TRANSIENT_LEDGER_ERRORS,  # lost, shutting down or starting up, or a connection left mid-operation
    RedisConnectionError,
    RedisTimeoutError,
)
"""Errors that pass once PostgreSQL or Redis is back: the verifier waits them out (the entry in hand is kept and
retried), as accounting does, instead of exiting."""
LOST_SWEEP_INTERVAL_S = 60.0
"""How often the sweep for sessions whose check can no longer come runs: it reads a week of sampled sessions."""
_OUTAGE_FIRST_DELAY_S = 0.5
_OUTAGE_MAX_DELAY_S = 5.0


async def serve(settings: VerifierSettings, stop: asyncio.Event | None = None) -> None:
    """Run the verifier until `stop` (or forever); `far-mesh verifier`'s body."""
    torch.set_num_threads(settings.verifier_threads)
    stop = stop or asyncio.Event()
    redis = aioredis.Redis.from_url(str(settings.redis_url))
    # min_size 0: the pool connects on first use, inside the loop that waits out an outage; one connecting here
    # raised when PostgreSQL restarted while the verifier started, and it exited (the chaos soak, issue #29)
    pool = await asyncpg.create_pool(settings.postgres_url, min_size=0, max_size=2)
    verifier = Verifier(settings, redis, pool)
    server = (
        serve_health_and_metrics(
            verifier.heartbeat.problems, settings.verifier_metrics_port, thread_name="verifier-health"
        )
        if settings.verifier_metrics_port
        else None
    )
    try:
        await verifier.run(stop)
    finally:
        if server is not None:
            server.shutdown()
        await pool.close()
        await redis.aclose()
        log.info("verifier stopped")
