"""Settling a budgeted request's reservation at what it actually cost, once its ending is on the stream.

The worker settles because it is the one process that always sees a request end, whether or not a client is
still connected: a run that finishes, and a job ended without running (`workers.ending.end_abandoned`) alike.
Settling is once per request id (`protocol.keys.budget_settled`), so a second ending counts nothing. A settle
that fails (Redis away) is only logged: the reservation lapses on its own (`protocol.budgets.RESERVATION_TTL_S`),
and the ledger, which the account is rebuilt from, has the cost anyway. A request the gateway admitted against
its wallet's prepaid balance (GATEWAY_REQUIRE_PREPAID_BALANCE) has its hold settled the same way, once per
request id, found by request id alone (`protocol.keys.balance_hold`), so every ending path settles it.
"""

import logging
from datetime import UTC, datetime
from decimal import Decimal

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from protocol import balances, budgets, keys
from protocol.jobs import GenerateJob
from protocol.ownership import RequestOwner

log = logging.getLogger(__name__)


async def settle_reservation(redis: aioredis.Redis, job: GenerateJob, actual_far: Decimal) -> bool:
    """Settle `job`'s reservation at `actual_far`, and its hold on its wallet's prepaid balance if it has one;
    False when there was no budget reservation to settle or it failed."""
    await settle_balance(redis, job.request_id, actual_far)
    if not job.budgeted or job.api_key_id is None:
        return False
    return await _settle(redis, job.api_key_id, job.request_id, actual_far)


async def settle_owned_reservation(redis: aioredis.Redis, request_id: str, actual_far: Decimal) -> bool:
    """Settle `request_id`'s reservation at `actual_far` when its job cannot say whose it is (an invalid payload):
    the key is the request's owner, which the gateway wrote before it reserved. False when there was nothing to
    settle or it failed; a key without a budget has no reservation, and settling it changes nothing."""
    await settle_balance(redis, request_id, actual_far)
    try:
        owner = await redis.get(keys.request_owner(request_id))
    except (RedisError, OSError) as exc:
        log.warning("budget not settled request_id=%s error=%r; its reservation will lapse", request_id, exc)
        return False
    if owner is None:
        return False
    return await _settle(redis, RequestOwner.decode(owner).api_key_id, request_id, actual_far)


async def settle_balance(redis: aioredis.Redis, request_id: str, actual_far: Decimal) -> bool:
    """Settle `request_id`'s hold on its wallet's prepaid balance at `actual_far` (`protocol.balances`), once per
    request id; False when it held none (GATEWAY_REQUIRE_PREPAID_BALANCE off), was settled before, or Redis failed
    (the hold then lapses, and the ledger's charge reaches the account at its next rebuild)."""
    try:
        wallet = await redis.get(keys.balance_hold(request_id))
        if wallet is None:
            return False
        wallet = wallet.decode() if isinstance(wallet, bytes) else str(wallet)
        args = [str(arg) for arg in balances.settle_args(request_id, actual_far, datetime.now(UTC))]
        settled = await redis.eval(  # type: ignore[misc]
            balances.SETTLE, 5, *balances.settle_keys(wallet, request_id), *args
        )
    except (RedisError, OSError) as exc:
        log.warning("balance not settled request_id=%s error=%r; its hold will lapse", request_id, exc)
        return False
    return bool(settled)


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
