"""Steps the portal tests repeat: signing in over HTTP, crediting a deposit as the watcher does, and publishing a
swarm snapshot as a worker does."""

import secrets
from datetime import UTC, datetime

import asyncpg
import httpx
import redis.asyncio as aioredis

from protocol import keys
from protocol.swarm import ServerSnapshot, SwarmSnapshot
from tests.fixtures.portal import SigningWallet

CONTRACT = "0x" + "Ab" * 20  # the deposit contract credit_deposit credits through


async def sign_in(client: httpx.AsyncClient, wallet: SigningWallet) -> str:
    """Sign in as `wallet` (the cookie lands in the client's jar); returns the session's CSRF token."""
    message = (await client.post("/api/siwe/message", json={"address": wallet.address.lower()})).json()["message"]
    response = await client.post(
        "/api/siwe/verify", json={"message": message, "signature": wallet.personal_sign(message)}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["csrf_token"]
    return token


def snapshot_json(model_id: str, num_blocks: int, spans: dict[str, tuple[int, int]]) -> str:
    """A fresh snapshot, as a worker writes it into `keys.SWARM_SNAPSHOTS`, of servers holding `spans`."""
    return SwarmSnapshot(
        model_id=model_id,
        dht_prefix=model_id.replace("/", "-"),
        num_blocks=num_blocks,
        taken_at=datetime.now(UTC),
        servers=tuple(
            ServerSnapshot(peer_id=peer, start_block=start, end_block=end, throughput=10.0, state="online")
            for peer, (start, end) in spans.items()
        ),
    ).model_dump_json()


async def publish_snapshot(
    redis: aioredis.Redis, model_id: str, num_blocks: int, spans: dict[str, tuple[int, int]], **server: object
) -> SwarmSnapshot:
    snapshot = SwarmSnapshot(
        model_id=model_id,
        dht_prefix=model_id.replace("/", "-"),
        num_blocks=num_blocks,
        taken_at=datetime.now(UTC),
        servers=tuple(
            ServerSnapshot(peer_id=peer, start_block=start, end_block=end, throughput=10.0, state="online", **server)
            for peer, (start, end) in spans.items()
        ),
    )
    await redis.hset(keys.SWARM_SNAPSHOTS, model_id, snapshot.model_dump_json())  # type: ignore[misc]
    return snapshot


async def credit_deposit(ledger: asyncpg.Connection, wallet: str, units: int) -> str:
    """A Deposited log credited as the watcher credits it (`far_credit_deposit`); returns its transaction hash."""
    tx_hash = "0x" + secrets.token_hex(32)
    outcome = await ledger.fetchval(
        "SELECT far_credit_deposit(31337, $1, $2, $3, 0, 7, $4, $5, $6)",
        "0x" + "11" * 32,
        CONTRACT,
        tx_hash,
        "0x" + secrets.token_hex(32),
        wallet,
        units,
    )
    assert outcome == "credited"
    return tx_hash
