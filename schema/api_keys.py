"""How the ledger keeps API keys (`far_api_keys`, schema/0002): only the secret's SHA-256 is stored, and a key is
revoked one way whoever revokes it (the gateway's `far-mesh keys revoke`, the portal's revoke button).

The key's format is protocol/api_keys.py's.
"""

import hashlib
from datetime import datetime

import asyncpg


def secret_hash(secret: str) -> bytes:
    """What `far_api_keys.secret_hash` holds for `secret`: its SHA-256, compared in constant time by the gateway."""
    return hashlib.sha256(secret.encode("ascii")).digest()


async def revoke(
    connection: asyncpg.Connection | asyncpg.Pool, key_id: str, *, wallet: str | None = None
) -> datetime | None:
    """Revoke `key_id` (only if it is `wallet`'s, when given): when it was revoked, the first time if it already
    was, so revoking twice (a double click, a retried command) changes nothing and is not an error. None when
    there is no such key."""
    revoked_at = await connection.fetchval(
        "UPDATE far_api_keys SET revoked_at = coalesce(revoked_at, now()) "
        "WHERE key_id = $1 AND ($2::text IS NULL OR wallet = $2) RETURNING revoked_at",
        key_id,
        wallet,
    )
    assert revoked_at is None or isinstance(revoked_at, datetime)
    return revoked_at
