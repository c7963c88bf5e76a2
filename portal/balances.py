"""A buyer's prepaid balance, read from the journal (schema/0020 and 0022) with plain SQL: the portal may not
import accounting, so the few statements it needs live here.

A buyer's account is `buyer:<wallet>`; a positive line is a debit, so its balance is minus the sum of its lines:
deposits credit it (negative lines), charges and withdrawals debit it (positive lines). What is held for requests
in flight is the gateway's Redis account (`protocol.balances`, GATEWAY_REQUIRE_PREPAID_BALANCE): one HGET, when it
exists.
"""

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import asyncpg
import redis.asyncio as aioredis

from portal.earnings import far_text
from protocol import budgets, keys

HISTORY_PAGE: Final = 50
"""Entries per page of a buyer's history (newest first; `before` pages on)."""

_TOTALS = """
SELECT coalesce(-sum(l.amount_far) FILTER (WHERE e.kind = 'deposit'), 0) AS deposited_far,
       coalesce(sum(l.amount_far) FILTER (WHERE e.kind = 'charge'), 0) AS charged_far,
       coalesce(-sum(l.amount_far), 0) AS balance_far,
       count(*) FILTER (WHERE e.kind = 'deposit') AS deposits,
       count(*) FILTER (WHERE e.kind = 'charge') AS charges,
       coalesce(sum(l.amount_far) FILTER (WHERE e.kind = 'withdrawal'), 0) AS withdrawn_far
  FROM far_journal_lines l
  JOIN far_journal_entries e ON e.id = l.entry_id
 WHERE l.account = $1
"""

# One page of the account's lines, newest first, with the chain's record of a deposit and the session of a charge.
_HISTORY = """
SELECT e.id AS entry_id, e.kind, e.reference, e.posted_at, -l.amount_far AS amount_far,
       d.chain_id, d.tx_hash, d.log_index, d.block_number,
       s.model_id, s.api_key_id
  FROM far_journal_lines l
  JOIN far_journal_entries e ON e.id = l.entry_id
  LEFT JOIN far_chain_deposits d ON d.entry_id = e.id
  LEFT JOIN far_mesh_sessions s ON e.kind = 'charge' AND s.request_id = e.reference
 WHERE l.account = $1 AND ($2::bigint IS NULL OR e.id < $2)
 ORDER BY e.id DESC
 LIMIT $3
"""


def buyer_account(wallet: str) -> str:
    """`buyer:<wallet>` (the wallet EIP-55, as the watcher and the charges write it)."""
    return f"buyer:{wallet}"


def signed_far(value: Decimal) -> str:
    """An amount as the buyer sees it: +10 for a deposit, -0.003 for a charge."""
    text = far_text(abs(value))
    return text if value == 0 else ("+" if value > 0 else "-") + text


@dataclass(frozen=True)
class DepositHow:
    """What a buyer needs to deposit: the contract, the token and the chain (portal settings)."""

    contract: str | None
    token: str | None
    chain_id: int


def deposit_instructions(how: DepositHow, amount_far: Decimal) -> dict[str, Any]:
    units = int(amount_far * 10**18)
    amount = far_text(amount_far)
    env = f"CHAIN_ID={how.chain_id} DEPOSIT_CONTRACT_ADDRESS={how.contract or '<unset>'}"
    return {
        "configured": how.contract is not None,
        "chain_id": how.chain_id,
        "contract": how.contract,
        "token": how.token,
        "amount_far": amount,
        "amount_units": str(units),
        "command": f"{env} CHAIN_RPC_URL=<your node> far-mesh deposits make --amount {amount} "
        "--key-file <your key file>",
        "wallet_steps": [
            f"approve({how.contract or '<deposit contract>'}, {units}) on the $FAR token {how.token or ''}".rstrip(),
            f"deposit({units}) on the deposit contract {how.contract or ''}".rstrip(),
        ],
    }


async def held_far(redis: aioredis.Redis, wallet: str) -> Decimal | None:
    """The open holds of the gateway's account of `wallet` (nano-FAR in Redis), or None when it holds none."""
    held: str | None = await redis.hget(keys.balance_account(wallet), "held")  # type: ignore[misc]
    if held is None:
        return None
    return max(Decimal(int(held)), Decimal(0)) * budgets.NANO_FAR


def _history_row(row: asyncpg.Record) -> dict[str, Any]:
    out: dict[str, Any] = {
        "entry_id": row["entry_id"],
        "kind": row["kind"],
        "posted_at": row["posted_at"].isoformat(),
        "amount_far": signed_far(row["amount_far"]),
    }
    if row["kind"] == "deposit" and row["tx_hash"] is not None:
        out |= {
            "chain_id": row["chain_id"],
            "tx_hash": row["tx_hash"],
            "log_index": row["log_index"],
            "block_number": row["block_number"],
        }
    elif row["kind"] == "charge":
        out |= {"request_id": row["reference"], "model_id": row["model_id"], "api_key_id": row["api_key_id"]}
    else:
        out["reference"] = row["reference"]
    return out


async def buyer_balance(
    db: asyncpg.Pool | asyncpg.Connection,
    redis: aioredis.Redis,
    wallet: str,
    *,
    before: int | None = None,
    limit: int = HISTORY_PAGE,
) -> dict[str, Any]:
    """The balance document: totals, what is held now, and one page of deposits and charges (newest first)."""
    account = buyer_account(wallet)
    totals = await db.fetchrow(_TOTALS, account)
    assert totals is not None
    rows = await db.fetch(_HISTORY, account, before, limit + 1)
    held = await held_far(redis, wallet)
    balance: Decimal = totals["balance_far"]
    history = [_history_row(r) for r in rows[:limit]]
    return {
        "wallet": wallet,
        "balance_far": far_text(balance) if balance >= 0 else "-" + far_text(-balance),
        "held_far": far_text(held) if held is not None else "0",
        "available_far": signed_far(balance - (held or 0)).removeprefix("+"),
        "deposited_far": far_text(totals["deposited_far"]),
        "charged_far": far_text(totals["charged_far"]),
        "deposits": totals["deposits"],
        "charges": totals["charges"],
        "withdrawn_far": far_text(totals["withdrawn_far"]),
        "history": history,
        "next_before": history[-1]["entry_id"] if len(rows) > limit else None,
    }
