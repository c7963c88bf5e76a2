"""Which sessions are verified, and handing what must be rechecked to the verifier.

A session is sampled when its request id hashes below FAR_MESH_VERIFY_FRACTION (deterministic, so a recovering
run of the same request decides the same), or when some server of the model has not been sampled for
1/FAR_MESH_VERIFY_MIN_PER_NODE_HOUR of an hour: a node that serves little is still checked, however small the
fraction. A sampled session records what each server span was sent and returned (`mesh.session.SpanRecorder`)
and, once its usage record is written, publishes it to `keys.VERIFICATION_STREAM` in one XADD: the
generation path pays for copying hidden states of sampled sessions only, never for a recomputation.
"""

import logging
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from mesh.session import SpanRecorder
from protocol import keys
from protocol.verification import SpotCheck
from workers.route_policy import DEFAULT_POLICY, apply_route_policy
from workers.served_model import ServedModel
from workers.settings import WorkerSettings

logger = logging.getLogger(__name__)

VERIFICATION_STREAM_MAXLEN = 10_000
"""Spot checks kept for a verifier that is behind (approximate trim); older ones are dropped unverified."""

Reason = Literal["fraction", "node-due"]


def sampled_by_fraction(request_id: str, fraction: float) -> bool:
    """Whether `request_id` falls in the sampled `fraction` (the same answer in every run of the request)."""
    return zlib.crc32(request_id.encode()) / 2**32 < fraction


def known_peers(served: ServedModel) -> set[str]:
    """Every server the model's client currently routes over."""
    manager = served.model.transformer.h.sequence_manager
    with manager.lock_changes:
        spans = manager.state.sequence_info.spans_containing_block
        return {span.peer_id.to_base58() for block in spans for span in block}


async def nodes_due(redis: aioredis.Redis, peers: set[str], per_hour: int, now: float) -> list[str]:
    """The peers not sampled in the last hour/`per_hour`; claimed (marked sampled now) so that concurrent runs
    do not all sample for the same node."""
    if not peers or per_hour <= 0:
        return []
    ordered = sorted(peers)
    last: list[Any] = await redis.hmget(keys.VERIFIED_NODES, ordered)  # type: ignore[misc]
    due = [
        peer for peer, seen in zip(ordered, last, strict=True) if seen is None or float(seen) < now - 3600 / per_hour
    ]
    if due:
        await redis.hset(keys.VERIFIED_NODES, mapping={peer: str(now) for peer in due})  # type: ignore[misc]
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

    async def publish(self, redis: aioredis.Redis, request_id: str, model_id: str) -> None:
        """Hand the recorded spans to the verifier (after the usage record is written); never fails the run."""
        if self.recorder is None or self.reason is None:
            return
        spans = self.recorder.spans()
        if not spans:
            return
        check = SpotCheck(request_id=request_id, model_id=model_id, reason=self.reason, spans=spans)
        try:
            fields: dict[Any, Any] = check.to_stream_fields()
            await redis.xadd(keys.VERIFICATION_STREAM, fields, maxlen=VERIFICATION_STREAM_MAXLEN, approximate=True)
            now = str(time.time())
            await redis.hset(keys.VERIFIED_NODES, mapping={span.peer_id: now for span in spans})  # type: ignore[misc]
        except (RedisError, OSError) as exc:  # verification is sampled anyway: losing one sample bills nobody wrong
            logger.warning("spot check not published request_id=%s error=%r", request_id, exc)
            return
        logger.info("spot check published request_id=%s reason=%s spans=%d", request_id, self.reason, len(spans))


async def begin_trust(
    redis: aioredis.Redis, request_id: str, served: ServedModel, settings: WorkerSettings
) -> RunTrust:
    """Apply the route policy and decide whether this run's session is sampled; never fails the run."""
    trust = RunTrust()
    try:
        watch_failures(served)
        await flush_failures(redis)
        trust.route_policy = await apply_route_policy(redis, served)
        reason: Reason | None = None
        if sampled_by_fraction(request_id, settings.far_mesh_verify_fraction):
            reason = "fraction"
        elif await nodes_due(redis, known_peers(served), settings.far_mesh_verify_min_per_node_hour, time.time()):
            reason = "node-due"
    except Exception as exc:  # Redis away, or a client without the routing internals: the run goes on unchecked
        logger.warning("trust state unreadable request_id=%s error=%r", request_id, exc)
        return trust
    if reason is not None:
        trust.recorder, trust.reason = SpanRecorder(), reason
    return trust
