"""schema/0023 on a ledger that already paid and slashed before it: the migration posts, once, a payout entry per
wallet of every batch already paid (mapping a node to its registration's wallet, as such batches were claimed) and
a slash entry per charged row already slashed, after which the ledger's reconciliation passes."""

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import pytest

from accounting.batch_writer import write_batch
from accounting.journal import TREASURY_CHAIN, account_balance, provider_account
from accounting.reconcile import reconcile
from chain.node import DEV_CHAIN_ID
from devstack.harness.registrations import register_nodes
from devstack.postgres_server import create_database_if_missing, drop_database
from devstack.services import with_database
from schema.migrate import apply_migrations, bundled_migrations
from tests.fixtures.ledger import unique_id, usage_record
from tests.verifier.helpers import verdict
from verifier.verdicts import record_verdicts

FIRST_NEW = "0023_payout_and_slash_entries.sql"
COLUMNS_WRITTEN_TODAY = ("0026_scarcity_premiums.sql",)
"""Later migrations that only add columns to the tables `write_batch` writes: applied to the old ledger first,
since the rows are written by today's code (the migration's backfill neither reads nor minds them)."""


@pytest.fixture
async def old_ledger(postgres_admin_dsn: str) -> AsyncIterator[str]:
    """A ledger of its own migrated up to (not including) schema/0023, with the columns today's code writes."""
    name = f"far_mesh_backfill_{uuid.uuid4().hex[:12]}"
    await create_database_if_missing(postgres_admin_dsn, name)
    dsn = with_database(postgres_admin_dsn, name)
    await apply_migrations(
        dsn, [m for m in bundled_migrations() if m.name < FIRST_NEW or m.name in COLUMNS_WRITTEN_TODAY]
    )
    yield dsn
    await drop_database(postgres_admin_dsn, name)


async def test_the_migration_posts_the_batches_paid_and_the_rows_slashed_before_it_once(old_ledger: str) -> None:
    paid_node, cheat = unique_id("peer"), unique_id("peer")
    db = await asyncpg.connect(old_ledger)
    try:
        wallets = await register_nodes(db, [paid_node, cheat])
        paid_record = usage_record(unique_id("req"), {paid_node: 2, cheat: 1})
        convicted = usage_record(unique_id("req"), {cheat: 3, paid_node: 1})
        await write_batch(db, [paid_record, convicted])
        # a batch paid the old way (no far_payout_claims yet): paid_record's rows, claimed and paid
        rows = await db.fetch(
            "SELECT c.id, c.node_id, c.payment_far FROM far_session_contributions c JOIN far_mesh_sessions s "
            "ON s.id = c.session_id WHERE s.request_id = $1",
            paid_record.request_id,
        )
        total = sum((r["payment_far"] for r in rows), Decimal(0))
        batch_id = await db.fetchval(
            "INSERT INTO far_payment_batches (status, payer, min_far, total_far, wallet_count, row_count) "
            "VALUES ('claimed', 'chain', 0, $1, 2, 2) RETURNING id",
            total,
        )
        await db.executemany(
            "INSERT INTO far_payout_payments (batch_id, wallet, amount_far, row_count) VALUES ($1, $2, $3, 1)",
            [(batch_id, wallets[r["node_id"]], r["payment_far"]) for r in rows],
        )
        await db.execute(
            "UPDATE far_session_contributions SET payment_batch_id = $1 WHERE id = ANY ($2)",
            batch_id,
            [r["id"] for r in rows],
        )
        await db.execute(
            "UPDATE far_payment_batches SET status = 'paid', transaction_ref = '0x' || repeat('ab', 32) WHERE id = $1",
            batch_id,
        )
        await db.execute(
            "UPDATE far_session_contributions SET paid_at = now(), transaction_ref = '0x' || repeat('ab', 32) "
            "WHERE payment_batch_id = $1",
            batch_id,
        )
        await record_verdicts(db, convicted.request_id, convicted.model_id, [verdict(cheat, bad=True)])
        slashed = await db.fetchval("SELECT sum(amount_far) FROM far_slashes")
        assert slashed > 0
        assert await db.fetchval("SELECT count(*) FROM far_journal_entries WHERE kind <> 'charge'") == 0

        assert FIRST_NEW in await apply_migrations(old_ledger)

        payouts = await db.fetch(
            "SELECT e.reference FROM far_journal_entries e WHERE e.kind = 'payout' ORDER BY e.reference"
        )
        assert sorted(p["reference"] for p in payouts) == sorted(f"{batch_id}:{w}" for w in wallets.values())
        assert await account_balance(db, TREASURY_CHAIN) == -total
        assert -await account_balance(db, "platform:slashes") == slashed
        assert await account_balance(db, provider_account(cheat)) == 0  # paid once, slashed and forfeited the rest
        assert await db.fetchval("SELECT count(*) FROM far_journal_lines WHERE account = 'suspense:payouts'") == 0
    finally:
        await db.close()
    result = await reconcile(
        old_ledger, rpc_url="http://unused", chain_id=DEV_CHAIN_ID, deposit_contract=None, opening_units=None
    )
    assert result.ok, result.failed
