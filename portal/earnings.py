"""A wallet's nodes and what they earned, read from the daily rollup (`far_node_daily_earnings`, schema/0010).

Every query here costs O(nodes x days), never O(contribution rows): the rollup is maintained by the ledger in
the same transaction as the rows it sums. A node counts as the wallet's once it is registered to it; nodes
that only announce the wallet are listed apart, with the earnings held for them until they are registered.
"""

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from protocol.money import plain_text

# One pass over the rollup rows of the wallet's nodes: totals, per day and per model of the registered ones,
# and the held (unpaid) total of the announcing ones, as grouping sets of a single statement.
_GROUPED = """
SELECT d.node_id = ANY ($1::text[]) AS registered, d.day, d.model_id,
       GROUPING(d.day) = 1 AND GROUPING(d.model_id) = 1 AS total,
       coalesce(sum(d.sessions_served), 0)::bigint AS sessions_served,
       coalesce(sum(d.tokens_contributed), 0)::bigint AS tokens_contributed,
       sum(d.earned_far) AS earned_far, sum(d.paid_far) AS paid_far,
       sum(d.in_payment_far) AS in_payment_far, sum(d.unpaid_far) AS unpaid_far,
       max(d.last_contribution_at) AS last_contribution_at
  FROM far_node_daily_earnings d
 WHERE d.node_id = ANY ($1::text[]) OR d.node_id = ANY ($2::text[])
 GROUP BY GROUPING SETS ((1), (1, d.day), (1, d.model_id))
 ORDER BY d.day, d.model_id
"""
_WALLET_NODE_IDS = """
SELECT node_id, true AS registered FROM far_node_registrations WHERE wallet = $1
UNION ALL
SELECT n.node_id, false FROM far_nodes n
 WHERE n.wallet = $1 AND NOT EXISTS (SELECT 1 FROM far_node_registrations r WHERE r.node_id = n.node_id)
ORDER BY 1
"""
_NODES = """
SELECT n.node_id, n.public_name, n.wallet AS announced_wallet, n.state, n.throughput, n.last_seen_at,
       n.gpu_model, n.vram_gb, r.wallet AS registered_wallet, r.registered_at,
       coalesce((SELECT json_agg(json_build_object('model_id', m.model_id, 'start_block', m.start_block,
                                                   'end_block', m.end_block, 'state', m.state,
                                                   'quantization', m.quantization) ORDER BY m.model_id)
                   FROM far_node_models m WHERE m.node_id = n.node_id), '[]')::text AS models,
       e.tokens_contributed, e.earned_far, e.unpaid_far,
       rep.reputation, rep.verified_ok, rep.verified_mismatches, rep.banned
  FROM far_nodes n
  LEFT JOIN far_node_registrations r ON r.node_id = n.node_id
  LEFT JOIN far_node_reputation rep ON rep.node_id = n.node_id
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
    return "0" if value is None else plain_text(value)


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


def _empty_totals() -> dict[str, Any]:
    return {"sessions_served": 0, "tokens_contributed": 0, **dict.fromkeys(_MONEY, "0"), "last_contribution_at": None}


async def node_ids_earnings(
    connection: asyncpg.Connection | asyncpg.Pool,
    node_ids: list[str],
    *,
    since: date,
    held_ids: list[str] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    """Totals, per day since `since` and per model of `node_ids`; the unpaid total of `held_ids` (rollup only)."""
    totals, by_day, by_model, held = _empty_totals(), [], [], "0"
    for row in await connection.fetch(_GROUPED, node_ids, held_ids or []):
        if not row["registered"]:
            if row["total"]:
                held = far_text(row["unpaid_far"])
            continue
        values = _money(row, *_MONEY)
        del values["registered"], values["total"]
        if row["total"]:
            last = values.pop("last_contribution_at")
            totals = {k: v for k, v in values.items() if k not in ("day", "model_id")}
            totals["last_contribution_at"] = last.isoformat() if last is not None else None
        elif row["day"] is not None:
            if row["day"] >= since:
                by_day.append(
                    {k: v for k, v in values.items() if k not in ("model_id", "last_contribution_at")}
                    | {"day": row["day"].isoformat()}
                )
        else:
            by_model.append({k: v for k, v in values.items() if k not in ("day", "last_contribution_at")})
    return {"totals": totals, "by_day": by_day, "by_model": by_model, "held_far": held}


async def wallet_earnings(connection: asyncpg.Connection | asyncpg.Pool, wallet: str, *, days: int) -> dict[str, Any]:
    """Two statements whatever the wallet's size: its node ids, then one grouped pass over their rollup rows."""
    ids = await connection.fetch(_WALLET_NODE_IDS, wallet)
    registered = [r["node_id"] for r in ids if r["registered"]]
    announcing = [r["node_id"] for r in ids if not r["registered"]]
    since = datetime.now(UTC).date() - timedelta(days=days - 1)
    earnings = await node_ids_earnings(connection, registered, since=since, held_ids=announcing)
    held = earnings.pop("held_far")
    return {
        "wallet": wallet,
        "days": days,
        "nodes": registered,
        **earnings,
        "held_unregistered_far": held,
        "held_nodes": announcing,
    }


async def node_earnings(connection: asyncpg.Connection | asyncpg.Pool, node_id: str, *, days: int) -> dict[str, Any]:
    """One node's public earnings (what `far-mesh node` prints), with its registered wallet if any."""
    since = datetime.now(UTC).date() - timedelta(days=days - 1)
    registered = await connection.fetchval("SELECT far_registered_wallet($1)", node_id)
    earnings = await node_ids_earnings(connection, [node_id], since=since)
    del earnings["held_far"]
    return {"node_id": node_id, "registered_wallet": registered, "days": days, **earnings}


async def payout_history(connection: asyncpg.Connection | asyncpg.Pool, wallet: str) -> list[dict[str, Any]]:
    """Payment batches that paid the wallet, newest first, with its amount in each.

    Read from the recipients each batch recorded when it was claimed (`far_payout_payments`), not from the nodes
    the wallet holds today: after a node changes hands, its earlier batches stay in the history of the wallet
    they paid.
    """
    rows = await connection.fetch(
        """
        SELECT b.id AS batch_id, b.status, b.payer, b.transaction_ref, b.failure_reason, b.created_at,
               b.completed_at, p.amount_far, p.row_count AS contributions
          FROM far_payout_payments p
          JOIN far_payment_batches b ON b.id = p.batch_id
         WHERE p.wallet = $1 AND b.purpose = 'earnings'
         ORDER BY b.id DESC LIMIT 200
        """,
        wallet,
    )
    return [_money(r, "amount_far") for r in rows]
