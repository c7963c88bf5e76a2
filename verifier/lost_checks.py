"""Sampled sessions whose check never reached the verifier, recorded unverified so their providers are paid.

A worker writes the usage record that marks its session sampled, then publishes the check (or a notice saying why
it has none). A worker that dies or is stopped between the two, or a Redis that refuses both, leaves a session
with neither a verdict nor a notice, and `payouts.payable` holds such a session's rows for good. Checks reach the
stream in the order their sessions end, and the verifier deletes each entry once handled, so the oldest entry still
in the stream bounds what is still to come: a sampled session that finished `lost_after_s` before it (before now,
when nothing waits) and has no verdict and no record will never get a check. It is recorded 'never-published', and
paid as an unsampled session is (never a row a mismatch names).
"""

import logging
import time

import asyncpg
import redis.asyncio as aioredis

from protocol import keys
from protocol.stream_ids import parse_entry_id

log = logging.getLogger(__name__)

WINDOW_S = 7 * 86400
"""How far back before the cutoff a sweep looks: each sweep reads a bounded range of the index, and a sweep every
few minutes sees every session pass through it."""

_RECORD_LOST = """
INSERT INTO far_unverified_sessions (request_id, model_id, cause, spans)
SELECT s.request_id, s.model_id, 'never-published', 0
  FROM far_mesh_sessions s
 WHERE s.spot_checked AND s.finished_at < to_timestamp($1) AND s.finished_at >= to_timestamp($1 - $2)
   AND NOT EXISTS (SELECT 1 FROM far_verifications v WHERE v.request_id = s.request_id)
   AND NOT EXISTS (SELECT 1 FROM far_unverified_sessions u WHERE u.request_id = s.request_id)
ON CONFLICT (request_id) DO NOTHING
RETURNING request_id
"""


async def oldest_waiting_s(redis: aioredis.Redis) -> float | None:
    """When the oldest check still in the stream was added (Unix seconds), or None when none waits."""
    first = await redis.xrange(keys.VERIFICATION_STREAM, count=1)
    return parse_entry_id(first[0][0].decode())[0] / 1000 if first else None


async def record_lost_checks(
    connection: asyncpg.Connection, redis: aioredis.Redis, lost_after_s: float, now: float | None = None
) -> list[str]:
    """Record every sampled session whose check can no longer come; returns their request ids."""
    waiting = await oldest_waiting_s(redis)
    current = time.time() if now is None else now
    cutoff = min(current, waiting if waiting is not None else current) - lost_after_s
    recorded = [row["request_id"] for row in await connection.fetch(_RECORD_LOST, cutoff, float(WINDOW_S))]
    for request_id in recorded:
        log.warning("sampled session recorded unverified request_id=%s cause=never-published", request_id)
    return recorded
