import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import redis.asyncio as aioredis

from accounting.registry import keep_registry_fresh, sync_registry
from mesh.ports import free_port
from protocol import keys
from protocol.swarm import ServerSnapshot, SwarmSnapshot, read_swarm_snapshots
from tests.fixtures.ledger import unique_id, wallet_for


def snapshot(model_id: str, taken_at: datetime, *servers: ServerSnapshot) -> SwarmSnapshot:
    return SwarmSnapshot(model_id=model_id, dht_prefix="test", num_blocks=4, taken_at=taken_at, servers=servers)


def server(peer_id: str, start: int, end: int, state: str = "online") -> ServerSnapshot:
    return ServerSnapshot(
        peer_id=peer_id,
        public_name=f"node {peer_id}",
        wallet=wallet_for(peer_id),
        start_block=start,
        end_block=end,
        throughput=100.0,
        state=state,
    )


async def test_active_far_nodes_follows_the_swarm_snapshots(redis: aioredis.Redis, migrated_postgres_dsn: str) -> None:
    first, second = unique_id("peer"), unique_id("peer")
    model = unique_id("model")
    now = datetime.now(UTC)
    await redis.hset(
        keys.SWARM_SNAPSHOTS,
        mapping={
            model: snapshot(model, now, server(first, 0, 2), server(second, 2, 4)).model_dump_json(),
            "broken/model": "{not a snapshot",
        },
    )
    connection = await asyncpg.connect(migrated_postgres_dsn)
    try:
        snapshots = list((await read_swarm_snapshots(redis, fresh_only=False)).values())
        assert [s.model_id for s in snapshots] == [model]
        await sync_registry(connection, snapshots)
        active = await connection.fetch(
            "SELECT node_id, wallet, blocks_held FROM active_far_nodes WHERE node_id = ANY($1) ORDER BY node_id",
            [first, second],
        )
        assert [(r["node_id"], r["wallet"], r["blocks_held"]) for r in active] == sorted(
            [(first, wallet_for(first), 2), (second, wallet_for(second), 2)]
        )

        # The second node left the swarm; an older snapshot arriving late changes nothing.
        await sync_registry(connection, [snapshot(model, now + timedelta(seconds=5), server(first, 0, 4))])
        await sync_registry(connection, [snapshot(model, now - timedelta(seconds=5), server(second, 0, 4))])
        states = dict(
            await connection.fetch(
                "SELECT node_id, state FROM far_node_models WHERE node_id = ANY($1)", [first, second]
            )
        )
        assert states == {first: "online", second: "offline"}
        spans = await connection.fetchval("SELECT end_block FROM far_node_models WHERE node_id = $1", first)
        assert spans == 4
    finally:
        await connection.close()


async def test_a_node_gone_from_every_snapshot_is_marked_offline_at_the_next_refresh(
    migrated_postgres_dsn: str,
) -> None:
    staying, leaving, newer_elsewhere = unique_id("peer"), unique_id("peer"), unique_id("peer")
    only_paid = unique_id("peer")  # known from contributions alone: no snapshot ever spoke for it
    model_a, model_b = unique_id("model"), unique_id("model")
    now = datetime.now(UTC)
    connection = await asyncpg.connect(migrated_postgres_dsn)
    try:
        await connection.execute("INSERT INTO far_nodes (node_id, state) VALUES ($1, 'online')", only_paid)
        await sync_registry(
            connection,
            [snapshot(model_a, now, server(staying, 0, 2), server(leaving, 2, 4)), snapshot(model_b, now)],
        )
        # Another replica already saw this node in a snapshot newer than the ones read below.
        await sync_registry(connection, [snapshot(model_b, now + timedelta(seconds=9), server(newer_elsewhere, 0, 4))])

        await sync_registry(
            connection,
            [snapshot(model_a, now + timedelta(seconds=5), server(staying, 0, 4)), snapshot(model_b, now)],
        )
        states = dict(
            await connection.fetch(
                "SELECT node_id, state FROM far_nodes WHERE node_id = ANY($1)",
                [staying, leaving, newer_elsewhere, only_paid],
            )
        )
        assert states == {staying: "online", leaving: "offline", newer_elsewhere: "online", only_paid: "online"}
    finally:
        await connection.close()


async def test_the_refresher_outlives_a_redis_it_cannot_reach(migrated_postgres_dsn: str) -> None:
    """redis-py's ConnectionError is no OSError: once, it ended the refresher while /healthz stayed 200."""
    unreachable = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    refresher = asyncio.create_task(
        keep_registry_fresh(unreachable, lambda: asyncpg.connect(migrated_postgres_dsn), interval_s=0.05)
    )
    try:
        await asyncio.sleep(0.6)  # several failed refreshes
        assert not refresher.done()
    finally:
        refresher.cancel()
        await asyncio.gather(refresher, return_exceptions=True)
        await unreachable.aclose()


async def test_an_hour_old_snapshot_showing_a_node_online_does_not_outvote_a_fresh_one_showing_it_offline(
    migrated_postgres_dsn: str,
) -> None:
    peer, now = unique_id("peer"), datetime.now(UTC)
    stale = snapshot(unique_id("model"), now - timedelta(hours=1), server(peer, 0, 2))
    fresh = snapshot(unique_id("model"), now, server(peer, 0, 2, state="offline"))
    connection = await asyncpg.connect(migrated_postgres_dsn)
    try:
        await sync_registry(connection, [stale, fresh])
        assert await connection.fetchval("SELECT state FROM far_nodes WHERE node_id = $1", peer) == "offline"
        assert not await connection.fetchval("SELECT count(*) FROM active_far_nodes WHERE node_id = $1", peer)
    finally:
        await connection.close()
