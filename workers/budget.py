"""Settling a budgeted request's reservation at what it actually cost, once its ending is on the stream.

The worker settles because it is the one process that always sees a request end, whether or not a client is
still connected. A settle that fails (Redis away) is only logged: the reservation lapses on its own
(`protocol.budgets.RESERVATION_TTL_S`), and the ledger, which the account is rebuilt from, has the cost anyway.
"""

import logging
from datetime import UTC, datetime
from decimal import Decimal

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from protocol import budgets
from protocol.jobs import GenerateJob

log = logging.getLogger(__name__)


async def settle_reservation(redis: aioredis.Redis, job: GenerateJob, actual_far: Decimal) -> bool:
    """Settle `job`'s reservation at `actual_far`; False when there was nothing to settle or it failed."""
    if not job.budgeted or job.api_key_id is None:
        return False
    try:
        args = [str(arg) for arg in budgets.settle_args(job.request_id, actual_far, datetime.now(UTC))]
        settled = await redis.eval(  # type: ignore[misc]
            budgets.SETTLE, 4, *budgets.settle_keys(job.api_key_id, job.request_id), *args
        )
    except (RedisError, OSError) as exc:
        log.warning("budget not settled request_id=%s error=%r; its reservation will lapse", job.request_id, exc)
        return False
    return bool(settled)
