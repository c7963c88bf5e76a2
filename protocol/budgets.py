"""Per-key budgets in Redis: the gateway reserves a request's most it can cost, the worker settles what it did cost.

Every replica and worker shares one account per API key (a Redis hash) holding the spend settled so far, in
total and per period, and the sum of open reservations. Reserving and settling are Lua scripts, so concurrent
requests can never together pass a limit: admission is atomic. Lua numbers are doubles, so amounts in Redis are
whole nano-FAR (1e-9), rounded up: admission errs on the side of the buyer's limit, never past it. The ledger
(NUMERIC(38,18)) stays the truth: an account missing from Redis is rebuilt from the ledger before use, and a
reservation whose request never settled (its gateway and worker both died) expires on its own.
"""

from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Final

from protocol import keys

NANO_FAR: Final = Decimal("1e-9")
MAX_BUDGET_FAR: Final = Decimal(9_000_000)
"""Budgets above this would not be exact in Lua's doubles (2**53 nano-FAR)."""
RESERVATION_TTL_S: Final = 3 * 3600
"""How long an unsettled reservation holds budget: longer than any request may stream (GATEWAY_STREAM_DEADLINE_S)."""
RECONCILE_S: Final = 300
"""How often an account in use is rebuilt from the ledger, so a settle that never happened (a worker that died
between its ending and its settle, Redis unreachable then) is corrected within minutes."""
ACCOUNT_TTL_S: Final = 7 * 24 * 3600
"""An idle account is dropped from Redis and rebuilt from the ledger at its next request."""


def to_nano(amount_far: Decimal) -> int:
    """Whole nano-FAR, rounded up."""
    return int((amount_far / NANO_FAR).to_integral_value(rounding=ROUND_CEILING))


def from_nano(amount_nano: int) -> Decimal:
    return Decimal(amount_nano) * NANO_FAR


EXPIRE_LAPSED: Final = """
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])
for _, request_id in ipairs(lapsed) do
  local amount = tonumber(redis.call('HGET', KEYS[2], request_id) or '0')
  redis.call('HINCRBY', KEYS[1], 'held', -amount)
  redis.call('HDEL', KEYS[2], request_id)
  redis.call('ZREM', KEYS[3], request_id)
end
"""
"""Lua: release reservations that lapsed before ARGV[1] (unix ms). KEYS: account, reservations, expiry."""

SETTLE_ONCE_RELEASING_HOLD: Final = """
if redis.call('SET', KEYS[4], '1', 'NX', 'EX', tonumber(ARGV[4])) == false then
  return 0
end
local held = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
if held > 0 then
  redis.call('HINCRBY', KEYS[1], 'held', -held)
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
end
"""
"""Lua: return 0 unless this is the first settle of request ARGV[2] (marker KEYS[4] kept ARGV[4] s), then give
back what it held. KEYS: account, holds, expiry, settled marker. Budgets and prepaid balances settle alike."""

SETTLE: Final = (
    """
-- KEYS: account, reservations, expiry, settled marker. ARGV: now_ms, request_id, actual nano-FAR, marker ttl s,
-- account ttl s, then the period fields the spend counts in. Returns 1 when settled now, 0 when it already was.
"""
    + EXPIRE_LAPSED
    + SETTLE_ONCE_RELEASING_HOLD
    + """
if redis.call('HEXISTS', KEYS[1], 'rebuilt') == 1 then
  redis.call('HINCRBY', KEYS[1], 'spent', tonumber(ARGV[3]))
  for i = 6, #ARGV do
    redis.call('HINCRBY', KEYS[1], ARGV[i], tonumber(ARGV[3]))
  end
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
end
return 1
"""
)
"""Lua: settle a request at its actual cost. An account not rebuilt from the ledger is left alone: its rebuild
will read this request's cost from the ledger instead."""

PERIODS: Final = ("day", "week", "month")


def period_starts(at: datetime) -> dict[str, datetime]:
    """The UTC start of the day, ISO week and calendar month that `at` falls in."""
    day = at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return {"day": day, "week": day - timedelta(days=day.weekday()), "month": day.replace(day=1)}


def period_fields(at: datetime) -> dict[str, str]:
    """The account's hash field holding the spend of each period `at` falls in."""
    return {period: f"spent:{period}:{start.date().isoformat()}" for period, start in period_starts(at).items()}


def settle_args(request_id: str, actual_far: Decimal, at: datetime) -> list[str | int]:
    """ARGV of `SETTLE` for a request that ended at `at` having cost `actual_far`."""
    now_ms = int(at.timestamp() * 1000)
    return [now_ms, request_id, to_nano(actual_far), RESERVATION_TTL_S, ACCOUNT_TTL_S, *period_fields(at).values()]


def settle_keys(api_key_id: str, request_id: str) -> list[str]:
    return [
        keys.budget_account(api_key_id),
        keys.budget_reservations(api_key_id),
        keys.budget_reservation_expiry(api_key_id),
        keys.budget_settled(request_id),
    ]
