"""The node registry: `far_nodes` and `far_node_models` follow the swarm snapshots workers publish.

Each model's snapshot lists every server the DHT announced for it. A server it no longer lists is marked
offline for that model, and a node that no snapshot lists any more is marked offline in `far_nodes` at the
next refresh (unless another replica has seen it more recently than the newest snapshot read here). Older
snapshots never overwrite newer facts.
"""

import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import redis.asyncio as aioredis

from accounting import metrics, periodic
from protocol.swarm import ServerSnapshot, SwarmSnapshot, read_swarm_snapshots

log = logging.getLogger(__name__)

_UPSERT_NODE = """
INSERT INTO far_nodes (node_id, wallet, public_name, state, throughput, last_seen_at, gpu_model, vram_gb)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (node_id) DO UPDATE SET
    wallet = coalesce(EXCLUDED.wallet, far_nodes.wallet),
    public_name = coalesce(EXCLUDED.public_name, far_nodes.public_name),
    gpu_model = coalesce(EXCLUDED.gpu_model, far_nodes.gpu_model),
    vram_gb = coalesce(EXCLUDED.vram_gb, far_nodes.vram_gb),
    state = EXCLUDED.state,
    throughput = EXCLUDED.throughput,
    last_seen_at = EXCLUDED.last_seen_at
WHERE far_nodes.last_seen_at IS NULL OR far_nodes.last_seen_at <= EXCLUDED.last_seen_at
"""
_UPSERT_NODE_MODEL = """
INSERT INTO far_node_models (node_id, model_id, start_block, end_block, throughput, state, cache_tokens_left,
                             last_seen_at, quantization)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (node_id, model_id) DO UPDATE SET
    quantization = coalesce(EXCLUDED.quantization, far_node_models.quantization),
    start_block = EXCLUDED.start_block,
    end_block = EXCLUDED.end_block,
    throughput = EXCLUDED.throughput,
    state = EXCLUDED.state,
    cache_tokens_left = EXCLUDED.cache_tokens_left,
    last_seen_at = EXCLUDED.last_seen_at
WHERE far_node_models.last_seen_at <= EXCLUDED.last_seen_at
"""
_MARK_GONE = """
UPDATE far_node_models SET state = 'offline'
WHERE model_id = $1 AND NOT (node_id = ANY ($2::text[])) AND last_seen_at < $3 AND state <> 'offline'
"""
_MARK_NODES_GONE = """
UPDATE far_nodes SET state = 'offline'
WHERE state <> 'offline' AND last_seen_at < $2 AND NOT (node_id = ANY ($1::text[]))
"""


# The node launcher's `hw:<gpu>/<vram GB>/<quantization>` word in a public name (mesh/announce.py writes it).
_HARDWARE = re.compile(r"(?:^|\s)hw:([^\s/]{1,40})/(\d{1,4}(?:\.\d)?)/(none|int8|nf4|auto)(?=\s|$)")


def hardware_of(public_name: str | None) -> tuple[str | None, Decimal | None, str | None]:
    """(GPU model, VRAM in GB, quantization) a node announced; Nones for what it did not (CPU: no VRAM)."""
    match = _HARDWARE.search(public_name or "")
    if match is None:
        return None, None, None
    gpu, vram, quant = match.groups()
    return gpu.replace("_", " "), (Decimal(vram) if Decimal(vram) > 0 else None), (None if quant == "auto" else quant)


def _node_rows(snapshots: Iterable[SwarmSnapshot], now: datetime | None = None) -> list[tuple[object, ...]]:
    """One row per peer id; a peer listed under several models is online if any fresh snapshot shows it online (a
    stale one's "online" is an old fact, and older snapshots never overwrite newer ones)."""
    now = now or datetime.now(UTC)
    latest: dict[str, tuple[ServerSnapshot, SwarmSnapshot]] = {}
    online: set[str] = set()
    for snapshot in snapshots:
        for server in snapshot.servers:
            if server.online and snapshot.is_fresh(now):
                online.add(server.peer_id)
            seen = latest.get(server.peer_id)
            if seen is None or seen[1].taken_at < snapshot.taken_at:
                latest[server.peer_id] = (server, snapshot)
    return [
        (
            peer_id,
            s.wallet,
            s.public_name,
            "online" if peer_id in online else s.state,
            s.throughput,
            snap.taken_at,
            *hardware_of(s.public_name)[:2],
        )
        for peer_id, (s, snap) in sorted(latest.items())  # key order: concurrent writers lock rows alike
    ]


async def sync_registry(connection: asyncpg.Connection, snapshots: list[SwarmSnapshot]) -> int:
    """Upsert the nodes and their model spans from `snapshots`; returns how many nodes they list."""
    nodes = _node_rows(snapshots)
    async with connection.transaction():
        await connection.executemany(_UPSERT_NODE, nodes)
        for snapshot in snapshots:
            await connection.executemany(
                _UPSERT_NODE_MODEL,
                [
                    (
                        s.peer_id,
                        snapshot.model_id,
                        s.start_block,
                        s.end_block,
                        s.throughput,
                        s.state,
                        s.cache_tokens_left,
                        snapshot.taken_at,
                        hardware_of(s.public_name)[2],
                    )
                    for s in sorted(snapshot.servers, key=lambda s: s.peer_id)
                ],
            )
            await connection.execute(
                _MARK_GONE, snapshot.model_id, [s.peer_id for s in snapshot.servers], snapshot.taken_at
            )
        if snapshots:  # with none at all, nothing says the swarm moved on since the nodes were seen
            newest = max(s.taken_at for s in snapshots)
            await connection.execute(_MARK_NODES_GONE, [row[0] for row in nodes], newest)
    return len(nodes)


async def keep_registry_fresh(
    redis: aioredis.Redis, connect: Callable[[], Awaitable[asyncpg.Connection]], interval_s: float
) -> None:
    """Refresh the registry every `interval_s` until cancelled; an outage only delays the next refresh."""

    async def tick(connection: periodic.Connect) -> None:
        snapshots = list((await read_swarm_snapshots(redis, fresh_only=False)).values())
        metrics.record_coverage(snapshots, datetime.now(UTC))
        metrics.NODES_SEEN.set(await sync_registry(await connection(), snapshots))

    await periodic.repeat("node registry not refreshed", tick, connect, interval_s)
