"""Settling a budgeted request's reservation at what it actually cost, once its ending is on the stream.

The worker settles because it is the one process that always sees a request end, whether or not a client is
still connected: a run that finishes, and a job ended without running (`workers.ending.end_abandoned`) alike.
Settling is once per request id (`protocol.keys.budget_settled`), so a second ending counts nothing. A settle
that fails (Redis away) is only logged: the reservation lapses on its own (`protocol.budgets.RESERVATION_TTL_S`),
and the ledger, which the account is rebuilt from, has the cost anyway.
"""

import logging
from datetime import UTC, datetime
from decimal import Decimal

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from protocol import budgets, keys
from protocol.jobs import GenerateJob
from protocol.ownership import RequestOwner

log = logging.getLogger(__name__)


async def settle_reservation(redis: aioredis.Redis, job: GenerateJob, actual_far: Decimal) -> bool:
    """Settle `job`'s reservation at `actual_far`; False when there was nothing to settle or it failed."""
    if not job.budgeted or job.api_key_id is None:
        return False
    return await _settle(redis, job.api_key_id, job.request_id, actual_far)


async def settle_owned_reservation(redis: aioredis.Redis, request_id: str, actual_far: Decimal) -> bool:
    """Settle `request_id`'s reservation at `actual_far` when its job cannot say whose it is (an invalid payload):
    the key is the request's owner, which the gateway wrote before it reserved. False when there was nothing to
    settle or it failed; a key without a budget has no reservation, and settling it changes nothing."""
    try:
        owner = await redis.get(keys.request_owner(request_id))
    except (RedisError, OSError) as exc:
        log.warning("budget not settled request_id=%s error=%r; its reservation will lapse", request_id, exc)
        return False
    if owner is None:
        return False
    return await _settle(redis, RequestOwner.decode(owner).api_key_id, request_id, actual_far)


async def _settle(redis: aioredis.Redis, api_key_id: str, request_id: str, actual_far: Decimal) -> bool:
    try:
        args = [str(arg) for arg in budgets.settle_args(request_id, actual_far, datetime.now(UTC))]
        settled = await redis.eval(  # type: ignore[misc]
            budgets.SETTLE, 4, *budgets.settle_keys(api_key_id, request_id), *args
        )
    except (RedisError, OSError) as exc:
        log.warning("budget not settled request_id=%s error=%r; its reservation will lapse", request_id, exc)
        return False
    return bool(settled)
