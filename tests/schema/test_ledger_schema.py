"""The ledger's own guarantees: constraints that make bad data impossible, the views' figures, finalisation."""

import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest

from accounting.batch_writer import session_id_for, write_batch
from tests.fixtures.ledger import unique_id, usage_record, wallet_for

NOW = datetime.now(UTC)


@pytest.fixture
async def db(migrated_postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(migrated_postgres_dsn)
    yield connection
    await connection.close()


async def insert_session(db: asyncpg.Connection, **overrides: object) -> uuid.UUID:
    values: dict[str, object] = {
        "request_id": unique_id("req"),
        "model_id": "test/model",
        "status": "completed",
        "prompt_tokens": 1,
        "tokens_generated": 10,
        "price_per_token_far": Decimal("0.1"),
        "total_cost_far": Decimal("1"),
        "platform_remainder_far": Decimal("0"),
        "started_at": NOW,
        "finished_at": NOW,
        "worker_id": "w",
    } | overrides
    columns = ", ".join(values)
    params = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    session_id: uuid.UUID = await db.fetchval(
        f"INSERT INTO far_mesh_sessions ({columns}) VALUES ({params}) RETURNING id", *values.values()
    )
    return session_id


async def insert_contribution(db: asyncpg.Connection, session_id: uuid.UUID, node_id: str, payment: str) -> None:
    await db.execute("INSERT INTO far_nodes (node_id) VALUES ($1) ON CONFLICT DO NOTHING", node_id)
    await db.execute(
        "INSERT INTO far_session_contributions (session_id, node_id, blocks_served, tokens_contributed, work_units,"
        " payment_far) VALUES ($1, $2, 1, 1, 1, $3)",
        session_id,
        node_id,
        Decimal(payment),
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"total_cost_far": Decimal("2")},  # not tokens x price
        {"price_per_token_far": Decimal("-0.1"), "total_cost_far": Decimal("-1")},
        {"platform_remainder_far": Decimal("1.5")},  # more than the cost
        {"status": "maybe"},
        {"finished_at": datetime(2000, 1, 1, tzinfo=UTC)},  # before it started
        {"user_wallet": "not-a-wallet"},
    ],
)
async def test_sessions_that_do_not_add_up_are_refused(db: asyncpg.Connection, overrides: dict[str, object]) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await insert_session(db, **overrides)


WALLET_SHAPE = re.compile(r"0x[0-9a-fA-F]{40}")
GOOD_WALLET = "0x52908400098527886E0F7030069857D2E4169EE7"


@pytest.mark.parametrize(
    "text",
    [
        GOOD_WALLET,
        GOOD_WALLET.lower(),
        "0x" + "0" * 40,
        GOOD_WALLET[:-1],  # 39 hex digits
        GOOD_WALLET + "0",  # 41
        "0X" + GOOD_WALLET[2:],
        "00" + GOOD_WALLET[2:],
        GOOD_WALLET[:-1] + "g",
        GOOD_WALLET[:-1] + " ",
        GOOD_WALLET[:-1] + "é",  # one character more than the hex set, two bytes
        GOOD_WALLET[:-2] + "é",  # 42 bytes, 41 characters
        "x0" + GOOD_WALLET[2:],
        "0x0x" + GOOD_WALLET[4:],
        "",
    ],
)
async def test_the_ledger_accepts_a_wallet_exactly_when_it_has_an_addresses_shape(
    db: asyncpg.Connection, text: str
) -> None:
    assert await db.fetchval("SELECT far_is_wallet_address($1)", text) == bool(WALLET_SHAPE.fullmatch(text))


async def test_a_wallet_of_the_wrong_shape_is_refused_in_every_table(db: asyncpg.Connection) -> None:
    bad = GOOD_WALLET[:-1] + "g"
    with pytest.raises(asyncpg.CheckViolationError, match="far_nodes_wallet_check"):
        await db.execute("INSERT INTO far_nodes (node_id, wallet) VALUES ($1, $2)", unique_id("node"), bad)
    with pytest.raises(asyncpg.CheckViolationError, match="user_wallet_check"):
        await insert_session(db, user_wallet=bad)
    with pytest.raises(asyncpg.CheckViolationError, match="far_api_keys_wallet_check"):
        await db.execute(
            "INSERT INTO far_api_keys (key_id, secret_hash, wallet) VALUES ($1, $2, $3)", "0" * 16, bytes(32), bad
        )
    node_id = unique_id("node")
    session_id = await insert_session(db)
    await db.execute("INSERT INTO far_nodes (node_id) VALUES ($1)", node_id)
    with pytest.raises(asyncpg.CheckViolationError, match="far_session_contributions_wallet_check"):
        await db.execute(
            "INSERT INTO far_session_contributions (session_id, node_id, wallet, blocks_served, tokens_contributed,"
            " work_units, payment_far) VALUES ($1, $2, $3, 1, 1, 1, 0)",
            session_id,
            node_id,
            bad,
        )


async def test_a_request_id_is_stored_once(db: asyncpg.Connection) -> None:
    request_id = unique_id("req")
    await insert_session(db, request_id=request_id)
    with pytest.raises(asyncpg.UniqueViolationError):
        await insert_session(db, request_id=request_id)


async def test_a_node_has_one_contribution_row_per_session(db: asyncpg.Connection) -> None:
    session_id = await insert_session(db)
    node = unique_id("peer")
    await insert_contribution(db, session_id, node, "0.1")
    with pytest.raises(asyncpg.UniqueViolationError):
        await insert_contribution(db, session_id, node, "0.1")


async def test_a_contribution_needs_its_session_and_its_node(db: asyncpg.Connection) -> None:
    session_id = await insert_session(db)
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="refers to session"):
        await insert_contribution(db, uuid.uuid4(), unique_id("peer"), "0.1")
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="refers to node"):
        await db.execute(
            "INSERT INTO far_session_contributions (session_id, node_id, blocks_served, tokens_contributed,"
            " work_units, payment_far) VALUES ($1, $2, 1, 1, 1, 0)",
            session_id,
            unique_id("never-registered"),
        )


async def test_sessions_and_nodes_that_contributions_name_cannot_be_deleted_or_rekeyed(db: asyncpg.Connection) -> None:
    session_id, node, idle = await insert_session(db), unique_id("peer"), unique_id("peer")
    await insert_contribution(db, session_id, node, "0.1")
    await db.execute("INSERT INTO far_nodes (node_id) VALUES ($1)", idle)
    for statement, *arguments in [
        ("DELETE FROM far_mesh_sessions WHERE id = $1", session_id),
        ("DELETE FROM far_nodes WHERE node_id = $1", node),
        ("UPDATE far_mesh_sessions SET id = gen_random_uuid() WHERE id = $1", session_id),
        ("UPDATE far_nodes SET node_id = node_id || '-x' WHERE node_id = $1", node),
        ("UPDATE far_session_contributions SET node_id = $1 WHERE session_id = $2", idle, session_id),
    ]:
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await db.execute(statement, *arguments)
    assert await db.execute("DELETE FROM far_nodes WHERE node_id = $1", idle) == "DELETE 1"  # nobody names it


async def test_a_session_deleted_while_a_contribution_to_it_is_being_written_waits_and_then_fails(
    db: asyncpg.Connection, migrated_postgres_dsn: str
) -> None:
    session_id, node = await insert_session(db), unique_id("peer")
    other = await asyncpg.connect(migrated_postgres_dsn)
    try:
        async with db.transaction():
            await insert_contribution(db, session_id, node, "0.1")  # holds its key-share lock until commit
            await other.execute("SET lock_timeout = '300ms'")
            with pytest.raises(asyncpg.LockNotAvailableError):
                await other.execute("DELETE FROM far_mesh_sessions WHERE id = $1", session_id)
        with pytest.raises(asyncpg.ForeignKeyViolationError, match="has contribution rows"):
            await other.execute("DELETE FROM far_mesh_sessions WHERE id = $1", session_id)
    finally:
        await other.close()


async def test_payments_can_never_exceed_what_the_session_cost(db: asyncpg.Connection) -> None:
    session_id = await insert_session(db, platform_remainder_far=Decimal("0.5"))
    await insert_contribution(db, session_id, unique_id("peer"), "0.5")
    with pytest.raises(asyncpg.CheckViolationError, match="exceed total_cost_far"):
        await insert_contribution(db, session_id, unique_id("peer"), "0.000000000000000001")
    with pytest.raises(asyncpg.CheckViolationError):
        await insert_contribution(db, session_id, unique_id("peer"), "-0.1")


async def test_a_session_is_finalised_only_when_payments_and_remainder_equal_its_cost(db: asyncpg.Connection) -> None:
    session_id = await insert_session(db, platform_remainder_far=Decimal("0.25"))
    await insert_contribution(db, session_id, unique_id("peer"), "0.5")
    with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
        await db.fetchval("SELECT far_finalize_sessions($1::uuid[])", [session_id])
    await insert_contribution(db, session_id, unique_id("peer"), "0.25")
    assert await db.fetchval("SELECT far_finalize_sessions($1::uuid[])", [session_id]) == 1


async def test_a_paid_contribution_cannot_be_changed_or_deleted(db: asyncpg.Connection) -> None:
    session_id = await insert_session(db, platform_remainder_far=Decimal("0.5"))
    node = unique_id("peer")
    await insert_contribution(db, session_id, node, "0.5")
    batch = await db.fetchval(
        "INSERT INTO far_payment_batches (payer, min_far, total_far, wallet_count, row_count, status, transaction_ref)"
        " VALUES ('test', 0, 0.5, 1, 1, 'paid', 'ref') RETURNING id"
    )
    await db.execute(
        "UPDATE far_session_contributions SET payment_batch_id = $1, paid_at = now(), transaction_ref = 'ref' "
        "WHERE session_id = $2",
        batch,
        session_id,
    )
    with pytest.raises(asyncpg.CheckViolationError, match="cannot change"):
        await db.execute("UPDATE far_session_contributions SET payment_far = 0 WHERE session_id = $1", session_id)
    with pytest.raises(asyncpg.CheckViolationError, match="cannot change"):
        await db.execute("DELETE FROM far_session_contributions WHERE session_id = $1", session_id)


async def test_every_finalised_session_balances_to_the_last_decimal(db: asyncpg.Connection) -> None:
    nodes = [unique_id("peer") for _ in range(3)]
    # 7 tokens x 1/3 FAR split 1:1:1 leaves rounding crumbs for the platform.
    records = [
        usage_record(
            unique_id("req"),
            {nodes[0]: 1 + i, nodes[1]: 1, nodes[2]: 5},
            tokens_generated=7 + i,
            price_far=Decimal("0.333333333333333333"),
        )
        for i in range(20)
    ]
    await write_batch(db, records)
    unbalanced = await db.fetchval(  # this test's sessions: others in the shared database may have been slashed
        "SELECT count(*) FROM far_mesh_sessions s "
        "LEFT JOIN (SELECT session_id, sum(payment_far) AS paid FROM far_session_contributions GROUP BY session_id) c"
        " ON c.session_id = s.id"
        " WHERE s.id = ANY($1) AND s.finalized_at IS NOT NULL"
        " AND coalesce(c.paid, 0) + s.platform_remainder_far <> s.total_cost_far",
        [session_id_for(r.request_id) for r in records],
    )
    assert unbalanced == 0
    assert (
        await db.fetchval(
            "SELECT count(*) FROM far_mesh_sessions WHERE id = ANY($1) AND finalized_at IS NOT NULL",
            [session_id_for(r.request_id) for r in records],
        )
        == 20
    )


async def test_node_earnings_summary_adds_up_each_nodes_work_and_pay(db: asyncpg.Connection) -> None:
    a, b = unique_id("peer"), unique_id("peer")
    await write_batch(
        db,
        [
            usage_record(unique_id("req"), {a: 3, b: 1}, tokens_generated=10, price_far=Decimal("0.1")),
            usage_record(unique_id("req"), {a: 1}, tokens_generated=5, price_far=Decimal("0.1")),
        ],
    )
    rows = {
        r["node_id"]: r for r in await db.fetch("SELECT * FROM node_earnings_summary WHERE node_id = ANY($1)", [a, b])
    }
    assert rows[a]["sessions_served"] == 2 and rows[b]["sessions_served"] == 1
    assert rows[a]["total_earned_far"] == Decimal("0.75") + Decimal("0.5")
    assert rows[b]["total_earned_far"] == Decimal("0.25")
    assert rows[a]["unpaid_far"] == rows[a]["total_earned_far"] and rows[a]["paid_far"] == 0
    assert rows[a]["work_units"] == 4 and rows[a]["tokens_contributed"] == 13 + 8


async def test_active_far_nodes_lists_online_nodes_seen_recently(db: asyncpg.Connection) -> None:
    fresh, stale, offline = unique_id("peer"), unique_id("peer"), unique_id("peer")
    await db.executemany(
        "INSERT INTO far_nodes (node_id, wallet, state, last_seen_at) VALUES ($1, $2, $3, now() - $4::text::interval)",
        [
            (fresh, wallet_for(fresh), "online", "5 seconds"),
            (stale, None, "online", "10 minutes"),
            (offline, None, "offline", "1 second"),
        ],
    )
    await db.execute(
        "INSERT INTO far_node_models (node_id, model_id, start_block, end_block, state) VALUES"
        " ($1, 'm1', 0, 2, 'online'), ($1, 'm2', 2, 5, 'online')",
        fresh,
    )
    rows = await db.fetch("SELECT * FROM active_far_nodes WHERE node_id = ANY($1)", [fresh, stale, offline])
    assert [(r["node_id"], r["models_served"], r["blocks_held"], r["wallet"]) for r in rows] == [
        (fresh, 2, 5, wallet_for(fresh))
    ]


async def test_a_session_inserted_final_must_balance_once_its_contributions_are_in(db: asyncpg.Connection) -> None:
    short = await insert_session(db, platform_remainder_far=Decimal("0.25"), finalized_at=NOW)
    with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
        await insert_contribution(db, short, unique_id("peer"), "0.5")
    balanced = await insert_session(db, platform_remainder_far=Decimal("0.5"), finalized_at=NOW)
    await insert_contribution(db, balanced, unique_id("peer"), "0.5")
    with pytest.raises(asyncpg.CheckViolationError, match="exceed total_cost_far"):
        await insert_contribution(db, balanced, unique_id("peer"), "0.000000000000000001")
