import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from accounting.ledger import write_batch
from accounting.payer import FilePayer
from accounting.payouts import (
    BatchNotPending,
    PaymentBatch,
    PaymentFailed,
    list_batches,
    mark_failed,
    mark_paid,
    run_payout,
)
from cli.main import main
from devstack.postgres_server import create_database_if_missing, drop_database
from devstack.services import with_database
from schema.migrate import apply_migrations
from tests.fixtures.ledger import unique_id, usage_record, wallet_for


@pytest.fixture(scope="module")
def ledger_dsn(postgres_admin_dsn: str) -> Iterator[str]:
    """A ledger of its own: payouts sweep every wallet, so other tests' rows must not be in it."""
    name = f"far_mesh_payouts_{uuid.uuid4().hex[:12]}"
    asyncio.run(create_database_if_missing(postgres_admin_dsn, name))
    dsn = with_database(postgres_admin_dsn, name)
    asyncio.run(apply_migrations(dsn))
    yield dsn
    asyncio.run(drop_database(postgres_admin_dsn, name))


@pytest.fixture
async def db(ledger_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(ledger_dsn)
    await connection.execute(
        "TRUNCATE far_session_contributions, far_payment_batches, far_mesh_sessions, far_node_models, far_nodes"
    )
    yield connection
    await connection.close()


class FailingPayer:
    name = "failing"

    async def pay(self, batch: PaymentBatch) -> str:
        raise PaymentFailed("the chain is congested")


async def test_a_payout_pays_every_owed_row_once_and_matches_the_earnings_summary(
    db: asyncpg.Connection, ledger_dsn: str, tmp_path: Path
) -> None:
    a, b = unique_id("peer"), unique_id("peer")
    await write_batch(db, [usage_record(unique_id("req"), {a: 3, b: 1}, price_far=Decimal("0.1")) for _ in range(4)])
    owed = {
        r["wallet"]: r["unpaid_far"] for r in await db.fetch("SELECT wallet, unpaid_far FROM node_earnings_summary")
    }

    batch = await run_payout(ledger_dsn, FilePayer(tmp_path), min_far=Decimal(0))
    assert batch is not None
    assert (
        {p.wallet: p.amount_far for p in batch.payments}
        == owed
        == {
            wallet_for(a): Decimal("3.0"),
            wallet_for(b): Decimal("1.0"),
        }
    )
    summary = await db.fetch("SELECT paid_far, unpaid_far, in_payment_far FROM node_earnings_summary")
    assert sum(r["paid_far"] for r in summary) == batch.total_far == Decimal("4.0")
    assert all(r["unpaid_far"] == 0 and r["in_payment_far"] == 0 for r in summary)
    stored = await db.fetchrow(
        "SELECT status, total_far, transaction_ref FROM far_payment_batches WHERE id = $1", batch.id
    )
    assert stored["status"] == "paid" and stored["total_far"] == batch.total_far
    assert (
        await db.fetchval(
            "SELECT count(*) FROM far_session_contributions WHERE transaction_ref = $1", stored["transaction_ref"]
        )
        == 8
    )
    lines = (tmp_path / f"far-payout-batch-{batch.id}.csv").read_text().splitlines()
    assert lines[0] == "batch_id,wallet,amount_far,contribution_ids"
    assert lines[-1].startswith("# total_far=4.000000000000000000 sha256=")

    assert await run_payout(ledger_dsn, FilePayer(tmp_path), min_far=Decimal(0)) is None  # nothing left to pay


async def test_concurrent_payout_runs_never_include_a_row_twice(
    db: asyncpg.Connection, ledger_dsn: str, tmp_path: Path
) -> None:
    peers = [unique_id("peer") for _ in range(20)]
    await write_batch(db, [usage_record(unique_id("req"), {p: 1 for p in peers[i % 5 :: 5]}) for i in range(200)])
    batches = await asyncio.gather(*(run_payout(ledger_dsn, FilePayer(tmp_path), min_far=Decimal(0)) for _ in range(4)))
    ids = [row_id for batch in batches if batch is not None for row_id in batch.contribution_ids]
    assert len(ids) == len(set(ids)) == await db.fetchval("SELECT count(*) FROM far_session_contributions")
    assert await db.fetchval("SELECT count(*) FROM far_session_contributions WHERE paid_at IS NULL") == 0


async def test_wallets_owed_less_than_the_minimum_wait_for_a_later_run(
    db: asyncpg.Connection, ledger_dsn: str, tmp_path: Path
) -> None:
    big, small = unique_id("peer"), unique_id("peer")
    await write_batch(db, [usage_record(unique_id("req"), {big: 9, small: 1}, price_far=Decimal("0.1"))])
    batch = await run_payout(ledger_dsn, FilePayer(tmp_path), min_far=Decimal("0.5"))
    assert batch is not None and [p.wallet for p in batch.payments] == [wallet_for(big)]
    assert await db.fetchval("SELECT unpaid_far FROM node_earnings_summary WHERE node_id = $1", small) == Decimal("0.1")


async def test_a_failed_payment_leaves_the_rows_unpaid_and_the_batch_marked_failed(
    db: asyncpg.Connection, ledger_dsn: str, tmp_path: Path
) -> None:
    await write_batch(db, [usage_record(unique_id("req"), {unique_id("peer"): 1})])
    with pytest.raises(PaymentFailed, match="congested"):
        await run_payout(ledger_dsn, FailingPayer(), min_far=Decimal(0))
    assert await db.fetchval("SELECT status FROM far_payment_batches") == "failed"
    assert (
        await db.fetchval(
            "SELECT count(*) FROM far_session_contributions WHERE payment_batch_id IS NULL AND paid_at IS NULL"
        )
        == 1
    )
    assert await run_payout(ledger_dsn, FilePayer(tmp_path), min_far=Decimal(0)) is not None  # paid next time


class CrashingPayer:
    """A payer that dies after the claim and before confirming: the money may or may not have moved."""

    name = "crashing"

    async def pay(self, batch: PaymentBatch) -> str:
        raise RuntimeError("process killed mid-transfer")


async def strand_a_batch(db: asyncpg.Connection, ledger_dsn: str) -> int:
    await write_batch(db, [usage_record(unique_id("req"), {unique_id("peer"): 1, unique_id("peer"): 3})])
    with pytest.raises(RuntimeError):
        await run_payout(ledger_dsn, CrashingPayer(), min_far=Decimal(0))
    [stranded] = await list_batches(db, status="pending")
    assert stranded.row_count == 2
    return stranded.id


async def test_an_operator_marks_a_stranded_batch_paid_with_the_transfers_reference(
    db: asyncpg.Connection, ledger_dsn: str, tmp_path: Path
) -> None:
    batch_id = await strand_a_batch(db, ledger_dsn)
    assert await run_payout(ledger_dsn, FilePayer(tmp_path), min_far=Decimal(0)) is None  # its rows stay claimed
    await mark_paid(db, batch_id, "0xfeed")
    refs = await db.fetch("SELECT transaction_ref FROM far_session_contributions WHERE payment_batch_id = $1", batch_id)
    assert [r["transaction_ref"] for r in refs] == ["0xfeed", "0xfeed"]
    [paid] = await list_batches(db)
    assert (paid.status, paid.transaction_ref) == ("paid", "0xfeed")
    with pytest.raises(BatchNotPending):
        await mark_failed(db, batch_id, "too late: it was paid")


async def test_far_mesh_payouts_resolve_failed_releases_the_rows_for_the_next_run(
    db: asyncpg.Connection,
    ledger_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    batch_id = await strand_a_batch(db, ledger_dsn)
    monkeypatch.setenv("POSTGRES_URL", ledger_dsn)
    assert await asyncio.to_thread(main, ["payouts", "list", "--status", "pending"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith(f"{batch_id}\tpending\tcrashing\t")
    assert await asyncio.to_thread(main, ["payouts", "resolve", str(batch_id), "--failed"]) == 0
    assert await asyncio.to_thread(main, ["payouts", "resolve", str(batch_id), "--paid", "0xbeef"]) == 1
    assert await db.fetchval("SELECT status FROM far_payment_batches WHERE id = $1", batch_id) == "failed"
    batch = await run_payout(ledger_dsn, FilePayer(tmp_path), min_far=Decimal(0))
    assert batch is not None and len(batch.contribution_ids) == 2
