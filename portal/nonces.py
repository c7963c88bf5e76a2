"""Server nonces for messages the portal asks a wallet to sign: short-lived, and each accepted once.

Stored in the ledger (`far_portal_nonces`), so any portal replica can accept a message another replica
issued. `consume` deletes the nonce in the same statement that checks it, so of two concurrent uses of one
signed message exactly one succeeds.
"""

import secrets
from datetime import timedelta
from typing import Literal

import asyncpg

Purpose = Literal["sign-in", "register", "transfer", "withdraw"]
MAX_PENDING = 10_000
"""Unexpired nonces at most: anyone may ask for a message to sign, so the table's size is bounded."""


class NonceRejected(ValueError):
    """The nonce was never issued for this purpose, was already used, or has expired."""


class TooManyPending(RuntimeError):
    """MAX_PENDING messages await a signature; new ones are refused until some expire or are used."""


async def issue(pool: asyncpg.Pool, purpose: Purpose, ttl: timedelta) -> str:
    nonce = secrets.token_hex(16)
    max_pending = MAX_PENDING
    async with pool.acquire() as connection, connection.transaction():
        # One issuer at a time: counted and inserted apart, requests sent at once would each find room
        await connection.execute("SELECT pg_advisory_xact_lock(hashtextextended('far_portal_nonces', 0))")
        await connection.execute("DELETE FROM far_portal_nonces WHERE expires_at < now()")
        pending = await connection.fetchval(  # bounded: counts at most max_pending index entries
            "SELECT count(*) FROM (SELECT 1 FROM far_portal_nonces WHERE expires_at >= now() LIMIT $1) p", max_pending
        )
        if pending >= max_pending:
            raise TooManyPending(f"{pending} messages already await a signature; try again in a few minutes")
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
