"""A wallet's nodes and what they earned, read from the daily rollup (`far_node_daily_earnings`, schema/0010).

Every query here costs O(nodes x days), never O(contribution rows): the rollup is maintained by the ledger in
the same transaction as the rows it sums. A node counts as the wallet's once it is registered to it; nodes
that only announce the wallet are listed apart, with the earnings held for them until they are registered.
"""

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

_TOTALS = """
SELECT coalesce(sum(sessions_served), 0)::bigint AS sessions_served,
       coalesce(sum(tokens_contributed), 0)::bigint AS tokens_contributed,
       coalesce(sum(earned_far), 0) AS earned_far,
       coalesce(sum(paid_far), 0) AS paid_far,
       coalesce(sum(in_payment_far), 0) AS in_payment_far,
       coalesce(sum(unpaid_far), 0) AS unpaid_far,
       max(last_contribution_at) AS last_contribution_at
  FROM far_node_daily_earnings WHERE node_id = ANY ($1::text[])
"""
_BY_DAY = """
SELECT day, coalesce(sum(tokens_contributed), 0)::bigint AS tokens_contributed, sum(earned_far) AS earned_far,
       sum(paid_far) AS paid_far, sum(in_payment_far) AS in_payment_far, sum(unpaid_far) AS unpaid_far
  FROM far_node_daily_earnings WHERE node_id = ANY ($1::text[]) AND day >= $2
 GROUP BY day ORDER BY day
"""
_BY_MODEL = """
SELECT model_id, coalesce(sum(tokens_contributed), 0)::bigint AS tokens_contributed, sum(earned_far) AS earned_far,
       sum(paid_far) AS paid_far, sum(in_payment_far) AS in_payment_far, sum(unpaid_far) AS unpaid_far
  FROM far_node_daily_earnings WHERE node_id = ANY ($1::text[])
 GROUP BY model_id ORDER BY model_id
"""
_NODES = """
SELECT n.node_id, n.public_name, n.wallet AS announced_wallet, n.state, n.throughput, n.last_seen_at,
       n.gpu_model, n.vram_gb, r.wallet AS registered_wallet, r.registered_at,
       coalesce((SELECT json_agg(json_build_object('model_id', m.model_id, 'start_block', m.start_block,
                                                   'end_block', m.end_block, 'state', m.state,
                                                   'quantization', m.quantization) ORDER BY m.model_id)
                   FROM far_node_models m WHERE m.node_id = n.node_id), '[]')::text AS models,
       e.tokens_contributed, e.earned_far, e.unpaid_far
  FROM far_nodes n
  LEFT JOIN far_node_registrations r ON r.node_id = n.node_id
  LEFT JOIN LATERAL (SELECT coalesce(sum(d.tokens_contributed), 0)::bigint AS tokens_contributed,
                            coalesce(sum(d.earned_far), 0) AS earned_far, coalesce(sum(d.unpaid_far), 0) AS unpaid_far
                       FROM far_node_daily_earnings d WHERE d.node_id = n.node_id) e ON true
 WHERE r.wallet = $1 OR (r.wallet IS NULL AND n.wallet = $1)
 ORDER BY r.wallet IS NULL, n.node_id
"""


@dataclass(frozen=True)
class WalletNodes:
    registered: list[str]
    """Peer ids registered to the wallet: their earnings are the wallet's."""
    announcing: list[str]
    """Peer ids that announce the wallet but are not registered: their earnings are held."""
    rows: list[dict[str, Any]]


def far_text(value: Decimal | None) -> str:
    """A $FAR amount as plain decimal text without trailing zeros or exponent: 0.003, 0, 12.5."""
    if value is None or value == 0:
        return "0"
    return format(value.normalize(), "f")


def _money(row: asyncpg.Record | dict[str, Any], *names: str) -> dict[str, Any]:
    out = dict(row)
    for name in names:
        out[name] = far_text(out.get(name))
    return out


async def wallet_nodes(connection: asyncpg.Connection | asyncpg.Pool, wallet: str) -> WalletNodes:
    import json

    rows = []
    for record in await connection.fetch(_NODES, wallet):
        row = _money(record, "earned_far", "unpaid_far")
        row["models"] = json.loads(row["models"])
        row["registered"] = row["registered_wallet"] is not None
        rows.append(row)
    return WalletNodes(
        registered=[r["node_id"] for r in rows if r["registered"]],
        announcing=[r["node_id"] for r in rows if not r["registered"]],
        rows=rows,
    )


_MONEY = ("earned_far", "paid_far", "in_payment_far", "unpaid_far")


async def node_ids_earnings(
    connection: asyncpg.Connection | asyncpg.Pool, node_ids: list[str], *, since: date
) -> dict[str, Any]:
    """Totals, per day since `since`, and per model, of the given nodes (rollup only)."""
    totals = await connection.fetchrow(_TOTALS, node_ids)
    by_day = await connection.fetch(_BY_DAY, node_ids, since)
    by_model = await connection.fetch(_BY_MODEL, node_ids)
    summary = _money(totals, *_MONEY)
    last = summary["last_contribution_at"]
    summary["last_contribution_at"] = last.isoformat() if last is not None else None
    return {
        "totals": summary,
        "by_day": [_money(r, *_MONEY) | {"day": r["day"].isoformat()} for r in by_day],
        "by_model": [_money(r, *_MONEY) for r in by_model],
    }


async def wallet_earnings(connection: asyncpg.Connection | asyncpg.Pool, wallet: str, *, days: int) -> dict[str, Any]:
    nodes = await wallet_nodes(connection, wallet)
    since = datetime.now().date() - timedelta(days=days - 1)
    earnings = await node_ids_earnings(connection, nodes.registered, since=since)
    held = await connection.fetchval(
        "SELECT coalesce(sum(unpaid_far), 0) FROM far_node_daily_earnings WHERE node_id = ANY ($1::text[])",
        nodes.announcing,
    )
    return {
        "wallet": wallet,
        "days": days,
        "nodes": nodes.registered,
        **earnings,
        "held_unregistered_far": far_text(held),
        "held_nodes": nodes.announcing,
    }


async def node_earnings(connection: asyncpg.Connection | asyncpg.Pool, node_id: str, *, days: int) -> dict[str, Any]:
    """One node's public earnings (what `far-mesh node` prints), with its registered wallet if any."""
    since = datetime.now().date() - timedelta(days=days - 1)
    registered = await connection.fetchval("SELECT far_registered_wallet($1)", node_id)
    return {
        "node_id": node_id,
        "registered_wallet": registered,
        "days": days,
        **await node_ids_earnings(connection, [node_id], since=since),
    }


async def payout_history(connection: asyncpg.Connection | asyncpg.Pool, wallet: str) -> list[dict[str, Any]]:
    """Payment batches that carried the wallet's registered nodes' rows, newest first, with its share of each."""
    rows = await connection.fetch(
        """
        SELECT b.id AS batch_id, b.status, b.payer, b.transaction_ref, b.failure_reason, b.created_at,
               b.completed_at, sum(c.payment_far) AS amount_far, count(*) AS contributions
          FROM far_node_registrations r
          JOIN far_session_contributions c ON c.node_id = r.node_id AND c.payment_batch_id IS NOT NULL
          JOIN far_payment_batches b ON b.id = c.payment_batch_id
         WHERE r.wallet = $1
         GROUP BY b.id ORDER BY b.id DESC LIMIT 200
        """,
        wallet,
    )
    return [_money(r, "amount_far") for r in rows]
