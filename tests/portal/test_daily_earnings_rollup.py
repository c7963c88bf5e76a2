"""schema/0010: the daily per-node, per-model rollup stays equal to node_earnings_summary, whatever happens."""

from datetime import UTC, datetime, timedelta

import asyncpg

from tests.fixtures.ledger import unique_id
from tests.fixtures.portal import seed_earnings

SUMMARY_COLUMNS = (
    "sessions_served",
    "tokens_contributed",
    "work_units",
    "total_earned_far",
    "paid_far",
    "in_payment_far",
    "unpaid_far",
    "last_contribution_at",
)


async def assert_reconciles(ledger: asyncpg.Connection, node_ids: list[str]) -> None:
    """Every figure of node_earnings_summary equals the rollup's sums, node by node, exactly."""
    columns = ", ".join(SUMMARY_COLUMNS)
    summary = await ledger.fetch(
        f"SELECT node_id, {columns} FROM node_earnings_summary WHERE node_id = ANY($1) ORDER BY node_id", node_ids
    )
    rollup = await ledger.fetch(
        f"SELECT node_id, {columns} FROM node_earnings_rollup WHERE node_id = ANY($1) ORDER BY node_id", node_ids
    )
    assert [dict(r) for r in rollup] == [dict(r) for r in summary]
    assert len(summary) == len(node_ids)


async def test_the_consumers_batches_are_rolled_up_per_node_day_and_model(ledger: asyncpg.Connection) -> None:
    a, b = unique_id("node-a"), unique_id("node-b")
    await seed_earnings(ledger, {a: 3, b: 1}, sessions=4, model_id="test/one")
    await seed_earnings(ledger, {a: 1}, sessions=2, model_id="test/two")
    rows = await ledger.fetch(
        "SELECT node_id, model_id, sessions_served, earned_far, unpaid_far FROM far_node_daily_earnings "
        "WHERE node_id = ANY($1) ORDER BY node_id, model_id",
        [a, b],
    )
    assert [(r["node_id"], r["model_id"], r["sessions_served"]) for r in rows] == [
        (a, "test/one", 4),
        (a, "test/two", 2),
        (b, "test/one", 4),
    ]
    assert all(r["earned_far"] == r["unpaid_far"] > 0 for r in rows)
    await assert_reconciles(ledger, [a, b])


async def claim(ledger: asyncpg.Connection, node: str) -> int:
    """What a payout run does to a node's unpaid rows: one batch, the rows marked as in it."""
    batch_id: int = await ledger.fetchval(
        "INSERT INTO far_payment_batches (payer, min_far, total_far, wallet_count, row_count) "
        "VALUES ('test', 0, 0, 0, 0) RETURNING id"
    )
    await ledger.execute(
        "UPDATE far_session_contributions SET payment_batch_id = $2 "
        "WHERE node_id = $1 AND paid_at IS NULL AND payment_batch_id IS NULL",
        node,
        batch_id,
    )
    return batch_id


async def test_the_rollup_follows_claims_payments_and_failures(ledger: asyncpg.Connection) -> None:
    node = unique_id("node")
    await seed_earnings(ledger, {node: 1}, sessions=3)
    batch_id = await claim(ledger, node)
    await assert_reconciles(ledger, [node])
    in_payment = await ledger.fetchval("SELECT in_payment_far FROM node_earnings_rollup WHERE node_id = $1", node)
    assert in_payment > 0
    await ledger.execute(  # a failed batch releases its rows
        "UPDATE far_session_contributions SET payment_batch_id = NULL WHERE payment_batch_id = $1", batch_id
    )
    await assert_reconciles(ledger, [node])
    batch_id = await claim(ledger, node)
    await ledger.execute(
        "UPDATE far_session_contributions SET paid_at = now(), transaction_ref = $2 WHERE payment_batch_id = $1",
        batch_id,
        "0x" + "ab" * 32,
    )
    await assert_reconciles(ledger, [node])
    paid, unpaid = await ledger.fetchrow(
        "SELECT paid_far, unpaid_far FROM node_earnings_rollup WHERE node_id = $1", node
    )
    assert paid > 0 and unpaid == 0


async def test_rows_on_several_days_land_on_their_own_utc_day(ledger: asyncpg.Connection) -> None:
    node = unique_id("node")
    await seed_earnings(ledger, {node: 1}, sessions=2)
    yesterday = datetime.now(UTC) - timedelta(days=1)
    await ledger.execute(
        "UPDATE far_session_contributions SET created_at = $2 "
        "WHERE id = (SELECT min(id) FROM far_session_contributions WHERE node_id = $1)",
        node,
        yesterday,
    )
    days = await ledger.fetch(
        "SELECT day, sessions_served FROM far_node_daily_earnings WHERE node_id = $1 ORDER BY day", node
    )
    assert [(r["day"], r["sessions_served"]) for r in days] == [
        (yesterday.date(), 1),
        (datetime.now(UTC).date(), 1),
    ]
    await assert_reconciles(ledger, [node])


async def test_deleting_unpaid_rows_takes_them_out_of_the_rollup(ledger: asyncpg.Connection) -> None:
    node = unique_id("node")
    await seed_earnings(ledger, {node: 1}, sessions=2)
    await ledger.execute(
        "DELETE FROM far_session_contributions WHERE id = (SELECT max(id) FROM far_session_contributions "
        "WHERE node_id = $1)",
        node,
    )
    await assert_reconciles(ledger, [node])
    await ledger.execute("DELETE FROM far_session_contributions WHERE node_id = $1", node)
    assert await ledger.fetchval("SELECT count(*) FROM far_node_daily_earnings WHERE node_id = $1", node) == 0
    await assert_reconciles(ledger, [node])


async def test_one_batch_is_one_upsert_per_group_not_one_per_row(ledger: asyncpg.Connection) -> None:
    """Many sessions of the same nodes in one statement add up to one rollup row per node, day and model."""
    nodes = [unique_id("node") for _ in range(3)]
    await seed_earnings(ledger, {n: i + 1 for i, n in enumerate(nodes)}, sessions=50)
    counts = await ledger.fetch(
        "SELECT node_id, count(*) AS groups, sum(sessions_served) AS sessions FROM far_node_daily_earnings "
        "WHERE node_id = ANY($1) GROUP BY node_id",
        nodes,
    )
    assert sorted((r["groups"], r["sessions"]) for r in counts) == [(1, 50)] * 3
    await assert_reconciles(ledger, nodes)


async def test_the_migration_backfills_rows_stored_before_it(migrated_postgres_dsn: str) -> None:
    """Re-running 0010's backfill on a copy of the ledger's rows gives exactly the maintained rollup."""
    connection = await asyncpg.connect(migrated_postgres_dsn)
    try:
        node = unique_id("node")
        await seed_earnings(connection, {node: 2}, sessions=3)
        recomputed = await connection.fetch(
            "SELECT c.node_id, s.model_id, (c.created_at AT TIME ZONE 'UTC')::date AS day, count(*) AS n, "
            "sum(c.payment_far) AS earned FROM far_session_contributions c JOIN far_mesh_sessions s "
            "ON s.id = c.session_id WHERE c.node_id = $1 GROUP BY 1, 2, 3",
            node,
        )
        maintained = await connection.fetch(
            "SELECT node_id, model_id, day, sessions_served AS n, earned_far AS earned FROM far_node_daily_earnings "
            "WHERE node_id = $1",
            node,
        )
        assert [dict(r) for r in recomputed] == [dict(r) for r in maintained]
    finally:
        await connection.close()
