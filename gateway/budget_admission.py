"""Admission against a key's budget: reserve the request's most it can cost, or refuse it with 402.

`protocol.budgets` holds the account's layout and the worker's settle; this is the gateway's half. A request's
maximum cost is max_tokens at the completion price plus a bound on its prompt tokens at the prompt price
(`gateway.submission.max_cost_far`); reserving it is one Lua script that checks the total and the period limit
against spend settled so far plus every open reservation, so concurrent requests racing for the last of a
budget cannot together pass it. An account Redis does not hold (first use, eviction, a restart) is rebuilt from
the ledger first, and an account in use is rebuilt again every `RECONCILE_S`, so spend Redis missed (a settle
that never happened) is corrected from the ledger; a request refused or never enqueued gives its reservation
back at once. A rebuild never lowers known spend: the ledger lags the settles (accounting writes in batches),
so its figure is taken only where it is higher than what Redis already counts.
"""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import asyncpg
import redis.asyncio as aioredis

from gateway.api_keys import LEDGER_UNREACHABLE, ApiKey, KeyStoreUnavailable
from gateway.errors import ApiError, Forbidden, Unauthorized
from protocol import budgets, keys

RESERVE: Final = (
    """
-- KEYS: account, reservations, expiry. ARGV: now_ms, request_id, amount, total limit (-1: none), period field,
-- period limit (-1: none), reservation lapses at (ms), account ttl s, rebuild when older than (ms).
-- Returns {1} reserved, {-1} account missing or due a rebuild from the ledger, {0, remaining, 'total'|'period'}.
"""
    + budgets.EXPIRE_LAPSED
    + """
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  return {1}  -- this request id holds already (a retry of a submission Redis cut short): never twice
end
local rebuilt = tonumber(redis.call('HGET', KEYS[1], 'rebuilt') or '-1')
if rebuilt < 0 or rebuilt < tonumber(ARGV[1]) - tonumber(ARGV[9]) then
  return {-1}
end
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local held = tonumber(redis.call('HGET', KEYS[1], 'held') or '0')
local amount = tonumber(ARGV[3])
local total_limit = tonumber(ARGV[4])
if total_limit >= 0 and spent + held + amount > total_limit then
  return {0, total_limit - spent - held, 'total'}
end
local period_limit = tonumber(ARGV[6])
if period_limit >= 0 then
  local in_period = tonumber(redis.call('HGET', KEYS[1], ARGV[5]) or '0')
  if in_period + held + amount > period_limit then
    return {0, period_limit - in_period - held, 'period'}
  end
end
redis.call('HINCRBY', KEYS[1], 'held', amount)
redis.call('HSET', KEYS[2], ARGV[2], amount)
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[2])
for _, key in ipairs(KEYS) do
  redis.call('EXPIRE', key, tonumber(ARGV[8]))
end
return {1}
"""
)

REBUILD: Final = """
-- KEYS: account, reservations. ARGV: account ttl s, now_ms, rebuild when older than (ms), then field, value pairs
-- of the ledger's spend. Another replica's fresh rebuild is kept. Each spend field becomes the larger of Redis's
-- and the ledger's figure: the ledger adds spend Redis missed, and never erases spend settled in Redis that
-- accounting has not written yet.
local rebuilt = tonumber(redis.call('HGET', KEYS[1], 'rebuilt') or '-1')
if rebuilt >= 0 and rebuilt >= tonumber(ARGV[2]) - tonumber(ARGV[3]) then
  return 0
end
local held = 0
for _, amount in ipairs(redis.call('HVALS', KEYS[2])) do
  held = held + tonumber(amount)
end
redis.call('HSET', KEYS[1], 'held', held, 'rebuilt', ARGV[2])
for i = 4, #ARGV, 2 do
  local known = redis.call('HGET', KEYS[1], ARGV[i])
  if not known or tonumber(ARGV[i + 1]) > tonumber(known) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""

RELEASE: Final = """
-- KEYS: account, reservations, expiry. ARGV: request_id. A reservation whose request will never run.
local amount = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if amount > 0 then
  redis.call('HINCRBY', KEYS[1], 'held', -amount)
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return amount
"""

_LEDGER_SPEND = """
SELECT coalesce(sum(total_cost_far), 0) AS spent,
       coalesce(sum(total_cost_far) FILTER (WHERE started_at >= $2), 0) AS day,
       coalesce(sum(total_cost_far) FILTER (WHERE started_at >= $3), 0) AS week,
       coalesce(sum(total_cost_far) FILTER (WHERE started_at >= $4), 0) AS month
FROM far_mesh_sessions WHERE api_key_id = $1
"""


RESERVATION_MARGIN_S: Final = 300.0
"""A reservation outlives the stream deadline by this much (queueing, the worker's ending), then lapses."""


class BudgetExceeded(ApiError):
    """The request's most it could cost does not fit in what remains of the key's budget."""

    status = 402
    code = "budget_exceeded"


class KeyExpired(Unauthorized):
    code = "key_expired"


class ModelNotAllowed(Forbidden):
    code = "model_not_allowed"


def check_not_expired(key: ApiKey, now: datetime | None = None) -> None:
    """Refuse (401) a key past its expiry."""
    expires_at = key.limits.expires_at
    if expires_at is not None and expires_at <= (now or datetime.now(UTC)):
        raise KeyExpired(f"this API key expired at {expires_at.isoformat()}; ask for a new one")


def check_key_limits(key: ApiKey, model_id: str, now: datetime | None = None) -> None:
    """Refuse a key past its expiry (401: a batch's lines run after its key was checked) or a model outside its
    allowed list (403)."""
    check_not_expired(key, now)
    limits = key.limits
    if limits.allowed_models is not None and model_id not in limits.allowed_models:
        raise ModelNotAllowed(
            f"this API key may use only {', '.join(limits.allowed_models)}, not {model_id}", field="model"
        )


def _keys(api_key_id: str) -> list[str]:
    return [
        keys.budget_account(api_key_id),
        keys.budget_reservations(api_key_id),
        keys.budget_reservation_expiry(api_key_id),
    ]


class Budgets:
    """Reserves and releases against keys' budgets; the worker settles (`workers.budget_settlement`)."""

    def __init__(
        self, redis: aioredis.Redis, pool: asyncpg.Pool, *, timeout_s: float, reservation_ttl_s: float
    ) -> None:
        self._redis = redis
        self.pool = pool
        self._timeout_s = timeout_s
        self._reservation_ttl_s = reservation_ttl_s
        self._reserve = redis.register_script(RESERVE)
        self._rebuild = redis.register_script(REBUILD)
        self._release = redis.register_script(RELEASE)

    async def reserve(self, key: ApiKey, request_id: str, max_cost_far: Decimal) -> None:
        """Hold `max_cost_far` of `key`'s budget for `request_id`; `BudgetExceeded` (402) when it does not fit."""
        limits = key.limits
        now = datetime.now(UTC)
        fields = budgets.period_fields(now)
        args: list[Any] = [
            int(now.timestamp() * 1000),
            request_id,
            budgets.to_nano(max_cost_far),
            _nano_or_none(limits.max_budget_far),
            fields.get(limits.budget_period or "day"),
            _nano_or_none(limits.period_budget_far),
            int((now + timedelta(seconds=self._reservation_ttl_s)).timestamp() * 1000),
            budgets.ACCOUNT_TTL_S,
            budgets.RECONCILE_S * 1000,
        ]
        result = await self._reserve(keys=_keys(key.key_id), args=args)
        if int(result[0]) == -1:
            await self.rebuild(key.key_id, now)
            result = await self._reserve(keys=_keys(key.key_id), args=args)
        if int(result[0]) == 1:
            return
        remaining = budgets.from_nano(max(0, int(result[1])))
        which = result[2].decode() if isinstance(result[2], bytes) else str(result[2])
        limit = (
            f"total budget of {limits.max_budget_far:f} FAR"
            if which == "total"
            else f"budget of {limits.period_budget_far:f} FAR per {limits.budget_period}"
        )
        raise BudgetExceeded(
            f"this request may cost up to {max_cost_far:f} FAR (its prompt and max_tokens at their prices), "
            f"but {remaining:f} FAR remain of this API key's {limit}; lower max_tokens or raise the budget",
            field="max_tokens",
            details=[{"remaining_far": format(remaining, "f"), "limit": which, "max_cost_far": f"{max_cost_far:f}"}],
        )

    async def release(self, api_key_id: str, request_id: str) -> None:
        """Give back the reservation of a request that will never run (refused or not enqueued)."""
        await self._release(keys=_keys(api_key_id), args=[request_id])

    async def rebuild(self, api_key_id: str, now: datetime) -> None:
        """Load `api_key_id`'s spend from the ledger into Redis, unless another replica just did."""
        starts = budgets.period_starts(now)
        try:
            row = await self.pool.fetchrow(
                _LEDGER_SPEND, api_key_id, starts["day"], starts["week"], starts["month"], timeout=self._timeout_s
            )
        except LEDGER_UNREACHABLE as exc:
            raise KeyStoreUnavailable(f"PostgreSQL did not answer: {type(exc).__name__}") from exc
        fields = budgets.period_fields(now)
        pairs: list[Any] = ["spent", budgets.to_nano(row["spent"])]
        for period in budgets.PERIODS:
            pairs += [fields[period], budgets.to_nano(row[period])]
        now_ms = int(now.timestamp() * 1000)
        args = [budgets.ACCOUNT_TTL_S, now_ms, budgets.RECONCILE_S * 1000, *pairs]
        await self._rebuild(keys=_keys(api_key_id)[:2], args=args)


def _nano_or_none(amount_far: Decimal | None) -> int:
    return -1 if amount_far is None else budgets.to_nano(amount_far)
