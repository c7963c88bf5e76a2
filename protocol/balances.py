"""Prepaid balances in Redis: the gateway holds a request's most it can cost against its wallet's balance, the
worker settles what it did cost (GATEWAY_REQUIRE_PREPAID_BALANCE, docs/budgets.md "Prepaid balances").

The layout follows the key budgets' (`protocol.budgets`): one account per wallet (a Redis hash) shared by every
gateway replica and worker, holding what the journal credited the buyer (`credited`: deposits), what was charged
or settled (`charged`) and the sum of open holds (`held`); available = credited - charged - held. Holding and
settling are Lua scripts, so concurrent requests can never together spend more than the balance. Both figures
only grow, so a rebuild from the ledger keeps the larger of Redis's and the ledger's of each, as a budget
rebuild does: the ledger lags the settles. Amounts are whole nano-FAR: credits rounded down, costs up, so
admission errs on the buyer's side of the balance, never past it. A hold nobody settles lapses on its own.
"""

from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Final

from protocol import budgets, keys

CREDITED: Final = "credited"
CHARGED: Final = "charged"


def to_nano_down(amount_far: Decimal) -> int:
    """Whole nano-FAR, rounded down (what the buyer was credited: never more than the ledger says)."""
    return int((amount_far / budgets.NANO_FAR).to_integral_value(rounding=ROUND_FLOOR))


SETTLE: Final = (
    """
-- KEYS: account, holds, expiry, settled marker, the request's hold. ARGV: now_ms, request_id, actual nano-FAR,
-- marker ttl s, account ttl s. Returns 1 when settled now, 0 when it already was.
"""
    + budgets.EXPIRE_LAPSED
    + budgets.SETTLE_ONCE_RELEASING_HOLD
    + """
redis.call('DEL', KEYS[5])
if redis.call('HEXISTS', KEYS[1], 'rebuilt') == 1 then
  redis.call('HINCRBY', KEYS[1], 'charged', tonumber(ARGV[3]))
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
end
return 1
"""
)
"""Lua: settle a request's hold at its actual cost. An account not rebuilt from the ledger is left alone: its
rebuild will read this request's charge from the ledger instead."""


def account_keys(wallet: str) -> list[str]:
    return [keys.balance_account(wallet), keys.balance_holds(wallet), keys.balance_hold_expiry(wallet)]


def settle_keys(wallet: str, request_id: str) -> list[str]:
    return [*account_keys(wallet), keys.balance_settled(request_id), keys.balance_hold(request_id)]


def settle_args(request_id: str, actual_far: Decimal, at: datetime) -> list[str | int]:
    """ARGV of `SETTLE` for a request that ended at `at` having cost `actual_far`."""
    now_ms = int(at.timestamp() * 1000)
    return [now_ms, request_id, budgets.to_nano(actual_far), budgets.RESERVATION_TTL_S, budgets.ACCOUNT_TTL_S]


WITHDRAW: Final = (
    """
-- KEYS: account, holds, expiry. ARGV: now_ms, amount nano-FAR (rounded up), the journal's credited (rounded down)
-- and charged (rounded up) nano-FAR of the wallet, account ttl s. Returns {1, available} when the amount was taken
-- from what is available, {0, available} when it is more.
"""
    + budgets.EXPIRE_LAPSED
    + """
local held = tonumber(redis.call('HGET', KEYS[1], 'held') or '0')
local charged = tonumber(ARGV[4])
local rebuilt = redis.call('HEXISTS', KEYS[1], 'rebuilt') == 1
if rebuilt then
  charged = math.max(charged, tonumber(redis.call('HGET', KEYS[1], 'charged') or '0'))
end
local available = tonumber(ARGV[3]) - charged - held
local amount = tonumber(ARGV[2])
if amount > available then
  return {0, available}
end
if rebuilt then
  redis.call('HINCRBY', KEYS[1], 'charged', amount)
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
end
return {1, available}
"""
)
"""Lua: take a withdrawal out of a wallet's prepaid balance against every hold in flight (the portal, before it
journals the withdrawal). Available is the journal's credits minus the larger of its charges and Redis's (settles
accounting has not written yet) minus open holds, so a withdrawal can never take what admission has promised a
request, and a request admitted after it sees the balance without it: a rebuilt account counts it as charged, as
the journal's rebuild will."""

UNDO_WITHDRAW: Final = """
-- KEYS: account. ARGV: amount nano-FAR. A withdrawal WITHDRAW took whose journal entry was not written after all.
if redis.call('HEXISTS', KEYS[1], 'rebuilt') == 1 then
  redis.call('HINCRBY', KEYS[1], 'charged', -tonumber(ARGV[1]))
end
return 1
"""
