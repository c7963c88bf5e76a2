"""Server nonces for messages the portal asks a wallet to sign: short-lived, and each accepted once.

Stored in the ledger (`far_portal_nonces`), so any portal replica can accept a message another replica
issued. `consume` deletes the nonce in the same statement that checks it, so of two concurrent uses of one
signed message exactly one succeeds.
"""

import secrets
from datetime import timedelta
from typing import Literal

import asyncpg

Purpose = Literal["sign-in", "register", "transfer"]


class NonceRejected(ValueError):
    """The nonce was never issued for this purpose, was already used, or has expired."""


async def issue(pool: asyncpg.Pool, purpose: Purpose, ttl: timedelta) -> str:
    nonce = secrets.token_hex(16)
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("DELETE FROM far_portal_nonces WHERE expires_at < now()")
        await connection.execute(
            "INSERT INTO far_portal_nonces (nonce, purpose, expires_at) VALUES ($1, $2, now() + $3)",
            nonce,
            purpose,
            ttl,
        )
    return nonce


async def consume(connection: asyncpg.Connection | asyncpg.Pool, nonce: str, purpose: Purpose) -> None:
    """Use `nonce` up; `NonceRejected` if it cannot be used (unknown, used, expired or for another purpose)."""
    used = await connection.fetchval(
        "DELETE FROM far_portal_nonces WHERE nonce = $1 RETURNING (purpose = $2 AND expires_at > now())",
        nonce,
        purpose,
    )
    if used is None:
        raise NonceRejected("the nonce is unknown or was already used; ask for a new message")
    if not used:
        raise NonceRejected("the nonce has expired or was issued for something else; ask for a new message")
