"""A buyer's API keys: created, listed and revoked for the signed-in wallet, in the gateway's own key table.

The format is protocol/api_keys.py's (`fmk_<key_id>_<secret>`, shown once), the storage and revocation
schema/api_keys.py's (only the secret's SHA-256 stored), both shared with the gateway. The gateway verifies
keys; this module only writes rows it will accept, and only for the wallet that signed in: a key id of another
wallet is refused.
"""

from datetime import date
from typing import Any

import asyncpg

from portal.earnings import far_text
from portal.errors import BadInput, Forbidden, NotFound
from protocol.api_keys import MAX_LABEL_CHARS, format_key, new_key
from schema.api_keys import revoke, secret_hash

MAX_ACTIVE_KEYS = 50
"""A wallet's active keys, at most: creating keys is free, so the number is bounded."""


async def create_key(pool: asyncpg.Pool, wallet: str, label: str) -> dict[str, Any]:
    """A new key for `wallet`; the count and the insert hold the wallet's lock, so requests sent at once cannot
    together pass MAX_ACTIVE_KEYS."""
    if len(label) > MAX_LABEL_CHARS:
        raise BadInput(f"label is {len(label)} characters; at most {MAX_LABEL_CHARS}", field="label")
    key_id, secret = new_key()
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(hashtextextended('far_api_keys:' || $1, 0))", wallet)
        active = await connection.fetchval(
            "SELECT count(*) FROM far_api_keys WHERE wallet = $1 AND revoked_at IS NULL", wallet
        )
        if active >= MAX_ACTIVE_KEYS:
            raise BadInput(f"{wallet} has {active} active keys; revoke one first", field="label")
        created_at = await connection.fetchval(
            "INSERT INTO far_api_keys (key_id, secret_hash, wallet, label) VALUES ($1, $2, $3, $4)"
            " RETURNING created_at",
            key_id,
            secret_hash(secret),
            wallet,
            label,
        )
    return {
        "key_id": key_id,
        "label": label,
        "wallet": wallet,
        "created_at": created_at.isoformat(),
        "api_key": format_key(key_id, secret),
    }


async def list_keys(connection: asyncpg.Connection | asyncpg.Pool, wallet: str) -> list[dict[str, Any]]:
    rows = await connection.fetch(
        "SELECT k.key_id, k.label, k.created_at, k.revoked_at, "
        "       coalesce(s.spent_far, 0) AS spent_far, coalesce(s.sessions, 0) AS sessions "
        "  FROM far_api_keys k "
        "  LEFT JOIN LATERAL (SELECT sum(total_cost_far) AS spent_far, count(*) AS sessions "
        "                       FROM far_mesh_sessions WHERE api_key_id = k.key_id) s ON true "
        " WHERE k.wallet = $1 ORDER BY k.revoked_at IS NOT NULL, k.created_at DESC",
        wallet,
    )
    return [
        {
            "key_id": r["key_id"],
            "label": r["label"],
            "created_at": r["created_at"].isoformat(),
            "revoked_at": r["revoked_at"].isoformat() if r["revoked_at"] else None,
            "active": r["revoked_at"] is None,
            "spent_far": far_text(r["spent_far"]),
            "sessions": r["sessions"],
        }
        for r in rows
    ]


async def _owned(connection: asyncpg.Connection | asyncpg.Pool, wallet: str, key_id: str) -> asyncpg.Record:
    row = await connection.fetchrow("SELECT wallet, revoked_at FROM far_api_keys WHERE key_id = $1", key_id)
    if row is None:
        raise NotFound(f"no API key has id {key_id!r}", field="key_id")
    if row["wallet"] != wallet:
        raise Forbidden(f"API key {key_id} belongs to another wallet", field="key_id")
    return row


async def revoke_key(connection: asyncpg.Connection | asyncpg.Pool, wallet: str, key_id: str) -> dict[str, Any]:
    await _owned(connection, wallet, key_id)
    revoked_at = await revoke(connection, key_id, wallet=wallet)
    assert revoked_at is not None  # owned: the row exists
    return {"key_id": key_id, "revoked_at": revoked_at.isoformat()}


async def key_spend(
    connection: asyncpg.Connection | asyncpg.Pool, wallet: str, key_id: str, *, since: date
) -> dict[str, Any]:
    """What a key spent per UTC day and model since `since` (its sessions' costs)."""
    await _owned(connection, wallet, key_id)
    rows = await connection.fetch(
        "SELECT (finished_at AT TIME ZONE 'UTC')::date AS day, model_id, count(*) AS sessions, "
        "       sum(tokens_generated)::bigint AS tokens_generated, sum(total_cost_far) AS spent_far "
        "  FROM far_mesh_sessions WHERE api_key_id = $1 AND finished_at >= $2::date "
        " GROUP BY 1, 2 ORDER BY 1, 2",
        key_id,
        since,
    )
    return {
        "key_id": key_id,
        "since": since.isoformat(),
        "by_day_and_model": [
            {
                "day": r["day"].isoformat(),
                "model_id": r["model_id"],
                "sessions": r["sessions"],
                "tokens_generated": r["tokens_generated"],
                "spent_far": far_text(r["spent_far"]),
            }
            for r in rows
        ],
    }
