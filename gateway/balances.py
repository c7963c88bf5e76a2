"""Admission against a wallet's prepaid balance (GATEWAY_REQUIRE_PREPAID_BALANCE): hold the request's most it
can cost, or refuse it with 402 `insufficient_balance`.

`protocol.balances` holds the account's layout and the worker's settle; this is the gateway's half, built like
`gateway.budget_admission`. The balance is the journal's (deposits credited minus sessions charged, schema/0020 and
0022) minus every open hold: one Lua script checks and holds, so requests racing for the last of a balance on any
number of replicas cannot together spend more than it. An account Redis does not hold is rebuilt from the journal
first, one in use every `RECONCILE_S`, and one that refuses a request is rebuilt at once and asked again, so a
deposit credited since counts at the next request. The hold names its wallet under the request id, so the worker
settles it at the actual cost whichever way the request ends; one nobody settles lapses.
"""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import asyncpg
import redis.asyncio as aioredis

from gateway.api_keys import LEDGER_UNREACHABLE, KeyStoreUnavailable
from gateway.budget_admission import REBUILD
from gateway.errors import ApiError
from protocol import balances, budgets, keys

HOLD: Final = (
    """
-- KEYS: account, holds, expiry, the request's hold. ARGV: now_ms, request_id, amount, hold lapses at (ms),
-- account ttl s, rebuild when older than (ms), wallet, hold ttl s.
-- Returns {1} held, {-1} account missing or due a rebuild from the ledger, {0, available}.
"""
    + budgets.EXPIRE_LAPSED
    + """
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  return {1}  -- this request id holds already (a retry of a submission Redis cut short): never twice
end
local rebuilt = tonumber(redis.call('HGET', KEYS[1], 'rebuilt') or '-1')
if rebuilt < 0 or rebuilt < tonumber(ARGV[1]) - tonumber(ARGV[6]) then
  return {-1}
end
local available = tonumber(redis.call('HGET', KEYS[1], 'credited') or '0')
  - tonumber(redis.call('HGET', KEYS[1], 'charged') or '0') - tonumber(redis.call('HGET', KEYS[1], 'held') or '0')
local amount = tonumber(ARGV[3])
if amount > available then
  return {0, available}
end
redis.call('HINCRBY', KEYS[1], 'held', amount)
redis.call('HSET', KEYS[2], ARGV[2], amount)
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
for i = 1, 3 do
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[5]))
end
redis.call('SET', KEYS[4], ARGV[7], 'EX', tonumber(ARGV[8]))
return {1}
"""
)

RELEASE: Final = """
-- KEYS: account, holds, expiry, the request's hold. ARGV: request_id. A hold whose request will never run.
local amount = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if amount > 0 then
  redis.call('HINCRBY', KEYS[1], 'held', -amount)
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[4])
return amount
"""

_LEDGER_BALANCE = """
SELECT coalesce(-sum(amount_far) FILTER (WHERE amount_far < 0), 0) AS credited,
       coalesce(sum(amount_far) FILTER (WHERE amount_far > 0), 0) AS charged, count(*) AS lines
FROM far_journal_lines WHERE account = $1
"""


async def ledger_balance(pool: asyncpg.Pool, wallet: str, timeout_s: float) -> tuple[Decimal, Decimal, int]:
    """(credited, charged, lines) of `wallet`'s buyer account in the journal: its balance is credited - charged.
    `KeyStoreUnavailable` (503) when PostgreSQL does not answer."""
    try:
        row = await pool.fetchrow(_LEDGER_BALANCE, buyer_account(wallet), timeout=timeout_s)
    except LEDGER_UNREACHABLE as exc:
        raise KeyStoreUnavailable(f"PostgreSQL did not answer: {type(exc).__name__}") from exc
    return row["credited"], row["charged"], row["lines"]


class InsufficientBalance(ApiError):
    """The request's most it could cost is more than the wallet's prepaid balance has available."""

    status = 402
    code = "insufficient_balance"


def buyer_account(wallet: str) -> str:
    """The journal account of `wallet`'s prepaid balance (`accounting.journal.buyer_account`, schema/0020)."""
    return f"buyer:{wallet}"


class Balances:
    """Holds and releases against wallets' prepaid balances; the worker settles (`workers.budget_settlement`)."""

    def __init__(self, redis: aioredis.Redis, pool: asyncpg.Pool, *, timeout_s: float, hold_ttl_s: float) -> None:
        self._redis = redis
        self.pool = pool
        self._timeout_s = timeout_s
        self._hold_ttl_s = hold_ttl_s
        self._hold = redis.register_script(HOLD)
        self._rebuild = redis.register_script(REBUILD)
        self._release = redis.register_script(RELEASE)

    async def hold(self, wallet: str, request_id: str, max_cost_far: Decimal) -> None:
        """Hold `max_cost_far` of `wallet`'s balance for `request_id`; `InsufficientBalance` (402) when it is more
        than the balance has available, even after a fresh look at the journal."""
        now = datetime.now(UTC)
        names = [*balances.account_keys(wallet), keys.balance_hold(request_id)]
        args: list[Any] = [
            int(now.timestamp() * 1000),
            request_id,
            budgets.to_nano(max_cost_far),
            int((now + timedelta(seconds=self._hold_ttl_s)).timestamp() * 1000),
            budgets.ACCOUNT_TTL_S,
            budgets.RECONCILE_S * 1000,
            wallet,
            int(self._hold_ttl_s) + 1,
        ]
        result = await self._hold(keys=names, args=args)
        if int(result[0]) != 1:  # missing, due a rebuild, or refused: read the journal (a deposit may be new)
            await self.rebuild(wallet, now, force=int(result[0]) == 0)
            result = await self._hold(keys=names, args=args)
        if int(result[0]) == 1:
            return
        available = budgets.from_nano(max(0, int(result[1])))
        raise InsufficientBalance(
            f"this request may cost up to {max_cost_far:f} FAR (its prompt and max_tokens at their prices), but the "
            f"prepaid balance of {wallet} has {available:f} FAR available; deposit $FAR or lower max_tokens",
            field="max_tokens",
            details=[{"balance_far": format(available, "f"), "max_cost_far": f"{max_cost_far:f}"}],
        )

    async def release(self, wallet: str, request_id: str) -> None:
        """Give back the hold of a request that will never run (refused or not enqueued)."""
        await self._release(keys=[*balances.account_keys(wallet), keys.balance_hold(request_id)], args=[request_id])

    async def rebuild(self, wallet: str, now: datetime, *, force: bool = False) -> None:
        """Load `wallet`'s credits and charges from the journal into Redis (each figure the larger of the two),
        unless another replica just did; `force`: even then."""
        credited, charged, _ = await ledger_balance(self.pool, wallet, self._timeout_s)
        now_ms = int(now.timestamp() * 1000)
        pairs: list[Any] = [
            balances.CREDITED,
            balances.to_nano_down(credited),
            balances.CHARGED,
            budgets.to_nano(charged),
        ]
        args = [budgets.ACCOUNT_TTL_S, now_ms, 0 if force else budgets.RECONCILE_S * 1000, *pairs]
        await self._rebuild(keys=balances.account_keys(wallet)[:2], args=args)


async def held_far(redis: aioredis.Redis, wallet: str) -> Decimal:
    """What `wallet`'s open requests hold of its prepaid balance (zero without holds)."""
    held = await redis.hget(keys.balance_account(wallet), "held")  # type: ignore[misc]
    return budgets.from_nano(int(held or 0))
