"""The portal's earnings API against querying `node_earnings_summary` directly, on a large ledger, in one run.

1. Seed a fresh database: `--nodes` nodes (registered to `--wallets` wallets), `--rows` contribution rows over
   `--days` days and two models, written with generate_series in chunks of `--chunk` rows per statement; each
   statement goes through the ledger's real triggers, so the daily rollup (schema/0010) is maintained as the
   accounting consumer would maintain it. Seeding time and rows/s are printed.
2. Start `far-mesh portal` on a loopback port and time, for random wallets and nodes, alternating:
   - the wallet earnings API (`GET /api/w/{wallet}/earnings`: totals, per day, per model, over HTTP), against
     `SELECT ... FROM node_earnings_summary WHERE node_id = ANY(<the wallet's nodes>)` over asyncpg (the
     baseline: totals only, no HTTP);
   - the node earnings API (`GET /api/nodes/{node}/earnings`) against the view for that one node.
   Prints p50/p95 of each and the ratio. Target: API p95 <= 50 ms and >= 20x faster than the view.

Run: .venv/bin/python bench/bench_portal.py [--rows 5000000] [--nodes 1000] [--wallets 100] [--requests 200]
Uses a fresh database on TEST_POSTGRES_URL (default 127.0.0.1:5432), dropped after, and a private redis-server.
"""

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devstack.harness.interrupts import interrupt_on_signals  # noqa: E402
from devstack.harness.portal import start_portal, stop_portal  # noqa: E402
from devstack.postgres_server import create_database_if_missing, drop_database  # noqa: E402
from devstack.redis_server import RedisServer  # noqa: E402
from devstack.services import with_database  # noqa: E402
from protocol.wallet import to_checksum_address  # noqa: E402
from schema.migrate import apply_migrations  # noqa: E402

ADMIN_DSN = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PER_SESSION = 5
"""Contribution rows per session (nodes serving one request)."""


async def seed(dsn: str, *, rows: int, nodes: int, wallets: int, days: int, chunk: int) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        await connection.execute(
            """
            INSERT INTO far_nodes (node_id, wallet, state, throughput, last_seen_at)
            SELECT 'bench-node-' || n, ($2::text[])[1 + n % cardinality($2::text[])], 'online', 10, now()
              FROM generate_series(0, $1 - 1) n
            """,
            nodes,
            [to_checksum_address(f"0x{i + 1:040x}") for i in range(wallets)],
        )
        await connection.execute(
            "INSERT INTO far_node_registrations (node_id, wallet, statement, signature) "
            "SELECT node_id, wallet, 'bench', '0x' || repeat('11', 65) FROM far_nodes WHERE node_id LIKE 'bench-node-%'"
        )
        sessions = rows // PER_SESSION
        per_chunk = max(chunk // PER_SESSION, 1)
        for first in range(0, sessions, per_chunk):
            last = min(first + per_chunk, sessions) - 1
            async with connection.transaction():
                # price 0.0001 x 20 tokens = 0.002; five nodes paid 0.0003 each, 0.0005 stays with the platform;
                # sessions fill the days in order, each on five consecutive nodes from a stride of 37
                await connection.execute(
                    """
                    INSERT INTO far_mesh_sessions (id, request_id, model_id, status, prompt_tokens, tokens_generated,
                        price_per_token_far, total_cost_far, platform_remainder_far, started_at, finished_at, worker_id)
                    SELECT md5('bench-' || s)::uuid, 'bench-' || s,
                           CASE WHEN s % 3 = 0 THEN 'bench/b' ELSE 'bench/a' END,
                           'completed', 5, 20, 0.0001, 0.002, 0.0005,
                           now() - (s * $3 / $4) * interval '1 day', now() - (s * $3 / $4) * interval '1 day', 'bench'
                      FROM generate_series($1::bigint, $2::bigint) s
                    """,
                    first,
                    last,
                    days,
                    sessions,
                )
                await connection.execute(
                    """
                    INSERT INTO far_session_contributions (session_id, node_id, wallet, blocks_served,
                        tokens_contributed, work_units, payment_far, created_at)
                    SELECT md5('bench-' || s)::uuid, 'bench-node-' || ((s * 37 + k) % $3), NULL, 2, 25, 50, 0.0003,
                           now() - (s * $5 / $6) * interval '1 day'
                      FROM generate_series($1::bigint, $2::bigint) s, generate_series(0, $4 - 1) k
                    """,
                    first,
                    last,
                    nodes,
                    PER_SESSION,
                    days,
                    sessions,
                )
            done = (last + 1) * PER_SESSION
            elapsed = time.perf_counter() - started
            print(f"  seeded {done:,} rows in {elapsed:.0f} s ({done / elapsed:,.0f} rows/s)", flush=True)
        await connection.execute("ANALYZE")
    finally:
        await connection.close()


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


def report(name: str, api: list[float], view: list[float]) -> None:
    api_p50, api_p95 = statistics.median(api) * 1000, percentile(api, 0.95) * 1000
    view_p50, view_p95 = statistics.median(view) * 1000, percentile(view, 0.95) * 1000
    print(
        f"{name}: API p50 {api_p50:.1f} ms p95 {api_p95:.1f} ms | view p50 {view_p50:.1f} ms p95 {view_p95:.1f} ms | "
        f"view/API p50 {view_p50 / api_p50:.1f}x p95 {view_p95 / api_p95:.1f}x "
        f"(target: API p95 <= 50 ms: {'met' if api_p95 <= 50 else 'missed'}; >= 20x: "
        f"{'met' if view_p95 / api_p95 >= 20 else 'missed'})"
    )


async def measure(dsn: str, url: str, *, requests: int, nodes: int, wallets: int) -> None:
    connection = await asyncpg.connect(dsn)
    owners = await connection.fetch(
        "SELECT wallet, array_agg(node_id) AS nodes FROM far_node_registrations GROUP BY wallet"
    )
    view_by_nodes = (
        "SELECT sum(sessions_served), sum(tokens_contributed), sum(total_earned_far), sum(paid_far), "
        "sum(in_payment_far), sum(unpaid_far) FROM node_earnings_summary WHERE node_id = ANY($1::text[])"
    )
    rng = random.Random(7)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            for _ in range(5):  # warm-up: connections, plans, caches
                owner = rng.choice(owners)
                await client.get(f"/api/w/{owner['wallet']}/earnings")
                await connection.fetch(view_by_nodes, owner["nodes"])
            for what in ("wallet", "node"):
                api: list[float] = []
                view: list[float] = []
                for _ in range(requests):
                    owner = rng.choice(owners)
                    path = f"/api/w/{owner['wallet']}/earnings"
                    subject = owner["nodes"]
                    if what == "node":
                        node = rng.choice(owner["nodes"])
                        path, subject = f"/api/nodes/{node}/earnings", [node]
                    started = time.perf_counter()
                    response = await client.get(path)
                    api.append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text
                    started = time.perf_counter()
                    await connection.fetch(view_by_nodes, subject)
                    view.append(time.perf_counter() - started)
                report(
                    f"{what} earnings ({len(owners[0]['nodes'])} nodes per wallet)"
                    if what == "wallet"
                    else "node earnings",
                    api,
                    view,
                )
    finally:
        await connection.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--wallets", type=int, default=100)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--chunk", type=int, default=500_000, help="contribution rows per INSERT statement")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per comparison")
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (2 cores shared with other work)")
    name = f"far_mesh_bench_portal_{uuid.uuid4().hex[:8]}"
    await create_database_if_missing(ADMIN_DSN, name)
    dsn = with_database(ADMIN_DSN, name)
    redis = RedisServer(Path(tempfile.mkdtemp(prefix="bench-portal-redis-"))).start()
    try:
        await apply_migrations(dsn)
        print(f"seeding {args.nodes:,} nodes, {args.wallets:,} wallets, {args.rows:,} contribution rows")
        started = time.perf_counter()
        await seed(dsn, rows=args.rows, nodes=args.nodes, wallets=args.wallets, days=args.days, chunk=args.chunk)
        seconds = time.perf_counter() - started
        connection = await asyncpg.connect(dsn)
        rollup_rows = await connection.fetchval("SELECT count(*) FROM far_node_daily_earnings")
        await connection.close()
        print(f"seeded in {seconds:.0f} s; rollup rows: {rollup_rows:,} (one per node, day and model)")
        server = await asyncio.to_thread(start_portal, dsn, redis.url)
        try:
            await measure(dsn, server.url, requests=args.requests, nodes=args.nodes, wallets=args.wallets)
        finally:
            stop_portal(server)
    finally:
        redis.stop()
        await drop_database(ADMIN_DSN, name)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    interrupt_on_signals("bench_portal")
    asyncio.run(main())
