"""What the gateway knows of each model's swarm: the workers' latest snapshots, and nothing it made up.

A snapshot older than `SNAPSHOT_MAX_AGE_S` describes a swarm nobody is watching, so it counts as no snapshot.
"""

import logging
from datetime import UTC, datetime

import redis.asyncio as aioredis
from pydantic import ValidationError

from protocol import keys
from protocol.swarm import SwarmSnapshot

log = logging.getLogger(__name__)


async def fresh_snapshots(redis: aioredis.Redis) -> dict[str, SwarmSnapshot]:
    """Every model's snapshot that is fresh now, by model id; malformed ones are logged and skipped."""
    raw = await redis.hgetall(keys.SWARM_SNAPSHOTS)  # type: ignore[misc]
    now = datetime.now(UTC)
    snapshots: dict[str, SwarmSnapshot] = {}
    for model_id, text in raw.items():
        try:
            snapshot = SwarmSnapshot.model_validate_json(text)
        except ValidationError as exc:
            log.warning("ignoring malformed swarm snapshot model_id=%s errors=%d", model_id, exc.error_count())
            continue
        if snapshot.is_fresh(now):
            snapshots[snapshot.model_id] = snapshot
    return snapshots


async def fresh_snapshot(redis: aioredis.Redis, model_id: str) -> SwarmSnapshot | None:
    """`model_id`'s snapshot if it is fresh and well-formed, else None."""
    text = await redis.hget(keys.SWARM_SNAPSHOTS, model_id)  # type: ignore[misc]
    if text is None:
        return None
    try:
        snapshot = SwarmSnapshot.model_validate_json(text)
    except ValidationError:
        return None
    return snapshot if snapshot.is_fresh(datetime.now(UTC)) else None
