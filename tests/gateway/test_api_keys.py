"""API keys in the real ledger database: stored hashed, verified in constant time, cached briefly."""

import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway.api_keys import KeyStore, KeyStoreUnavailable, UnknownKey, create_key, revoke_key
from protocol.api_keys import parse_key
from tests.fixtures.gateway import WALLET


@pytest.fixture
async def pool(migrated_postgres_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(migrated_postgres_dsn, min_size=0, max_size=2)
    yield pool
    await pool.close()


async def test_only_a_hash_of_the_secret_is_stored(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as connection:
        issued = await create_key(connection, WALLET, "alice")
        row = await connection.fetchrow("SELECT * FROM far_api_keys WHERE key_id = $1", issued.key.key_id)
    parsed = parse_key(issued.secret_key)
    assert parsed is not None and parsed[0] == issued.key.key_id
    assert parsed[1].encode() not in bytes(row["secret_hash"]) and len(row["secret_hash"]) == 32
    assert (row["wallet"], row["label"], row["revoked_at"]) == (WALLET, "alice", None)


async def test_a_revocation_takes_effect_once_the_cached_lookup_expires(pool: asyncpg.Pool) -> None:
    cached, uncached = KeyStore(pool, cache_s=600, timeout_s=5), KeyStore(pool, cache_s=0, timeout_s=5)
    async with pool.acquire() as connection:
        issued = await create_key(connection, WALLET)
        assert await cached.verify(issued.secret_key) == issued.key
        await revoke_key(connection, issued.key.key_id)
    assert await cached.verify(issued.secret_key) == issued.key  # still within its cache window
    assert await uncached.verify(issued.secret_key) is None


async def test_revoking_twice_keeps_the_first_time_and_an_unknown_id_is_refused(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as connection:
        issued = await create_key(connection, WALLET)
        first = await revoke_key(connection, issued.key.key_id)
        assert await revoke_key(connection, issued.key.key_id) == first
        with pytest.raises(UnknownKey):
            await revoke_key(connection, "0123456789abcdef")


async def test_a_wrong_secret_fails_even_when_the_key_id_is_cached(pool: asyncpg.Pool) -> None:
    store = KeyStore(pool, cache_s=600, timeout_s=5)
    async with pool.acquire() as connection:
        issued = await create_key(connection, WALLET)
    assert await store.verify(issued.secret_key) == issued.key
    forged = issued.secret_key[:-1] + ("A" if issued.secret_key[-1] != "A" else "B")
    assert await store.verify(forged) is None
    assert await store.verify("not a key") is None


async def test_a_lookup_the_ledger_does_not_answer_in_time_is_unavailable_rather_than_waiting(
    pool: asyncpg.Pool, migrated_postgres_dsn: str
) -> None:
    """A flood of made-up key ids must not pile up requests waiting on PostgreSQL for ever."""
    store = KeyStore(pool, cache_s=0, timeout_s=0.3)
    blocker = await asyncpg.connect(migrated_postgres_dsn)
    try:
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE far_api_keys IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(KeyStoreUnavailable, match="TimeoutError"):
                await store.verify("fmk_" + "0" * 16 + "_" + "a" * 43)
            assert time.monotonic() - started < 3
    finally:
        await blocker.close()
