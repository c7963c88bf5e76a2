"""Which sessions are verified, and handing what must be rechecked to the verifier.

A session is sampled when an HMAC of its request id, keyed by WORKER_VERIFY_SAMPLING_SECRET, falls below
WORKER_VERIFY_FRACTION, or when some server of the model has not been sampled for
1/WORKER_VERIFY_MIN_PER_NODE_HOUR of an hour: a node that serves little is still checked, however small the
fraction. Request ids are the client's choice, so a public hash of them would let a buyer who is also a provider
pick ids that are never checked (or flood the verifier with ids that always are); keyed by a secret, every id is
sampled with the configured probability whoever chose it, and the same in every run of the request. A sampled
session records what each server span was sent and returned (`mesh.session.SpanRecorder`) and, once its usage
record is written, publishes it (`workers.check_store`, bounded in bytes): the generation path pays for copying
hidden states of sampled sessions only, never for a recomputation.

A node counts as checked only when a published check holds a span of its work: a due node the run's route does
not use stays due (its claim lapses after `CLAIM_MAX_S` at most), so the next sample may catch it.
"""

import asyncio
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from mesh.session import SpanRecorder
from protocol import keys
from protocol.verification import NotVerified, SpotCheck
from workers import metrics
from workers.check_store import publish_check, publish_notice, store_full
from workers.route_policy import DEFAULT_POLICY, apply_route_policy
from workers.served_model import ServedModel
from workers.settings import WorkerSettings

logger = logging.getLogger(__name__)

CLAIM_MAX_S = 300.0
"""Longest a due node stays claimed by a run that sampled for it (shorter when its interval is): a run that
routed elsewhere, or died, leaves the node due again after this, so one node off every route costs at most one
sampled session per claim, not every session."""

Reason = Literal["fraction", "node-due"]

_process_key: bytes | None = None


def sampling_key(settings: WorkerSettings) -> bytes:
    """WORKER_VERIFY_SAMPLING_SECRET's bytes; unset, a random key drawn once per process (with a warning): no
    client can predict it either, but workers then disagree on which ids are sampled, so a recovering run on
    another worker may decide differently."""
    global _process_key
    secret = settings.worker_verify_sampling_secret
    if secret is not None:
        return secret.get_secret_value().encode()
    if _process_key is None:
        _process_key = secrets.token_bytes(32)
        logger.warning(
            "WORKER_VERIFY_SAMPLING_SECRET is unset: this worker samples with a random key of its own; "
            "set the same secret on every worker so that they agree"
        )
    return _process_key


def sampled_by_fraction(request_id: str, fraction: float, key: bytes) -> bool:
    """Whether `request_id` falls in the sampled `fraction` under `key` (the same answer in every run of the
    request; unpredictable, so unchoosable, without the key)."""
    digest = hmac.new(key, request_id.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def known_peers(served: ServedModel) -> set[str]:
    """Every server the model's client currently routes over."""
    manager = served.model.transformer.h.sequence_manager
    with manager.lock_changes:
        spans = manager.state.sequence_info.spans_containing_block
        return {span.peer_id.to_base58() for block in spans for span in block}


def _older(seen: Any, than: float) -> bool:
    return seen is None or float(seen) < than


async def nodes_due(redis: aioredis.Redis, peers: set[str], per_hour: int, now: float) -> list[str]:
    """The peers no published check has held for the last hour/`per_hour` and that no run claimed lately; they
    are claimed now, so that concurrent runs do not all sample for the same node. Only publishing a check that
    holds a node's span marks it sampled (`workers.check_store`): a claimed node the route does not use is due
    again once its claim lapses."""
    if not peers or per_hour <= 0:
        return []
    ordered = sorted(peers)
    interval = 3600 / per_hour
    claim_s = min(CLAIM_MAX_S, interval)

    def due_of(last: list[Any], claimed: list[Any]) -> list[str]:
        return [
            peer
            for peer, seen, claim in zip(ordered, last, claimed, strict=True)
            if _older(seen, now - interval) and _older(claim, now - claim_s)
        ]

    # Every run asks, and almost always no node is due: one round trip says so, before the three of a claim.
    async with redis.pipeline(transaction=False) as look:
        look.hmget(keys.VERIFIED_NODES, ordered)
        look.hmget(keys.VERIFICATION_CLAIMS, ordered)
        if not due_of(*await look.execute()):
            return []
    async with redis.pipeline(transaction=True) as pipe:
        try:
            await pipe.watch(keys.VERIFICATION_CLAIMS)
            last: list[Any] = await pipe.hmget(keys.VERIFIED_NODES, ordered)  # type: ignore[misc]
            claimed: list[Any] = await pipe.hmget(keys.VERIFICATION_CLAIMS, ordered)  # type: ignore[misc]
            due = due_of(last, claimed)
            if due:
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.hset(keys.VERIFICATION_CLAIMS, mapping={peer: repr(now) for peer in due})
                await pipe.execute()
        except WatchError:  # another run claimed at the same moment: it samples for them
            return []
    return due


_failures: Counter[str] = Counter()
_failures_lock = threading.Lock()


def watch_failures(served: ServedModel) -> None:
    """Count the steps that fail on each server of the model (Petals reports each to its sequence manager);
    `flush_failures` hands the counts to the verifier, which adds them to the nodes' reputations."""
    manager = served.model.transformer.h.sequence_manager
    if getattr(manager, "_far_mesh_counts_failures", False):
        return
    report = manager.on_request_failure

    def counting(peer_id: Any) -> Any:
        if peer_id is not None:
            with _failures_lock:
                _failures[peer_id.to_base58()] += 1
        return report(peer_id)

    manager.on_request_failure = counting
    manager._far_mesh_counts_failures = True


async def flush_failures(redis: aioredis.Redis) -> None:
    """Add the failures counted since the last flush to `keys.FAILED_STEPS`."""
    with _failures_lock:
        counts = dict(_failures)
        _failures.clear()
    if counts:
        async with redis.pipeline(transaction=False) as pipe:
            for peer, failed in counts.items():
                pipe.hincrby(keys.FAILED_STEPS, peer, failed)
            await pipe.execute()


@dataclass
class RunTrust:
    """One run's part in verification: its route policy, and the recorder when the session is sampled."""

    route_policy: str = DEFAULT_POLICY
    recorder: SpanRecorder | None = None
    reason: Reason | None = None
    max_bytes: int = 0
    """WORKER_VERIFY_MAX_BYTES: the most the checks waiting for the verifier may hold."""

    async def publish(self, redis: aioredis.Redis, request_id: str, model_id: str) -> None:
        """Hand the recorded spans to the verifier (after the usage record is written) and mark their nodes
        sampled. A check that would pass the byte budget, or that Redis refused, is dropped and counted, and a
        small notice goes instead: the usage record already says the session was sampled, so without a verdict
        or a notice its providers would never be paid. Never fails the run."""
        if self.recorder is None or self.reason is None:
            return
        spans = self.recorder.spans()
        if not spans:
            metrics.SPOT_CHECKS_DROPPED.labels(model_id, "nothing-recorded").inc()
            await self._notify(
                redis, NotVerified(request_id=request_id, model_id=model_id, cause="nothing-recorded", spans=0)
            )
            return
        check = SpotCheck(request_id=request_id, model_id=model_id, reason=self.reason, spans=spans)
        try:
            published = await publish_check(redis, check, self.max_bytes, time.time())
        except (RedisError, OSError) as exc:  # verification is sampled anyway: losing one sample bills nobody wrong
            metrics.SPOT_CHECKS_DROPPED.labels(model_id, "unpublished").inc()
            logger.warning("spot check not published request_id=%s error=%r", request_id, exc)
            await self._notify(
                redis, NotVerified(request_id=request_id, model_id=model_id, cause="unpublished", spans=len(spans))
            )
            return
        if not published:
            metrics.SPOT_CHECKS_DROPPED.labels(model_id, "over-budget").inc()
            logger.warning(
                "spot check dropped request_id=%s reason=over-budget max_bytes=%d", request_id, self.max_bytes
            )
            await self._notify(
                redis, NotVerified(request_id=request_id, model_id=model_id, cause="over-budget", spans=len(spans))
            )
            return
        logger.info("spot check published request_id=%s reason=%s spans=%d", request_id, self.reason, len(spans))

    @staticmethod
    async def _notify(redis: aioredis.Redis, notice: NotVerified) -> None:
        """Publish `notice`; a notice Redis refuses too leaves the session held for a verdict (logged)."""
        try:
            await publish_notice(redis, notice)
        except (RedisError, OSError) as exc:
            logger.error(
                "not-verified notice not published request_id=%s cause=%s error=%r: the session's providers stay "
                "unpaid until it is recorded",
                notice.request_id,
                notice.cause,
                exc,
            )
            return
        logger.info("not-verified notice published request_id=%s cause=%s", notice.request_id, notice.cause)


async def begin_trust(
    redis: aioredis.Redis, request_id: str, served: ServedModel, settings: WorkerSettings
) -> RunTrust:
    """Apply the route policy and decide whether this run's session is sampled; never fails the run. The two stand
    apart: a route policy that cannot be applied (the swarm not re-read in time) must not leave the run unchecked.
    Neither needs the other, so their round trips overlap (they are on the way to the first token: #32)."""
    trust = RunTrust(max_bytes=settings.worker_verify_max_bytes)
    await asyncio.gather(
        _apply_route_policy(redis, request_id, served, trust),
        _decide_sampling(redis, request_id, served, settings, trust),
    )
    return trust


async def _apply_route_policy(redis: aioredis.Redis, request_id: str, served: ServedModel, trust: RunTrust) -> None:
    try:
        watch_failures(served)
        await flush_failures(redis)
        trust.route_policy = await apply_route_policy(redis, served)
    except Exception as exc:  # Redis away, the swarm not re-read, or a client without the routing internals
        logger.warning("route policy not applied request_id=%s error=%r", request_id, exc)


async def _decide_sampling(
    redis: aioredis.Redis, request_id: str, served: ServedModel, settings: WorkerSettings, trust: RunTrust
) -> None:
    try:
        reason = await _sampling_reason(redis, request_id, served, settings, trust.max_bytes)
    except Exception as exc:  # Redis away: the run goes on unchecked
        logger.warning("trust state unreadable request_id=%s error=%r", request_id, exc)
        return
    if reason is not None:
        trust.recorder, trust.reason = SpanRecorder(), reason


async def _sampling_reason(
    redis: aioredis.Redis, request_id: str, served: ServedModel, settings: WorkerSettings, max_bytes: int
) -> Reason | None:
    """Why this run's session is sampled, or None: not sampled, or the checks' store is full."""
    reason: Reason | None = None
    if sampled_by_fraction(request_id, settings.worker_verify_fraction, sampling_key(settings)):
        reason = "fraction"
    elif await nodes_due(redis, known_peers(served), settings.worker_verify_min_per_node_hour, time.time()):
        reason = "node-due"
    if reason is not None and await store_full(redis, max_bytes):
        metrics.SPOT_CHECKS_DROPPED.labels(served.model_id, "store-full").inc()
        logger.warning("spot check dropped request_id=%s reason=store-full", request_id)
        return None
    return reason
