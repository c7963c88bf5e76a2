"""Claiming batches and the file payer: a batch exported for manual signing is `submitted`, never paid, until
`payouts resolve --tx` verifies a transaction (tests/payouts/test_payouts_resolve.py). The nodes paid here are
registered first: only registered peers are paid (tests/payouts/test_payouts_registered.py)."""

import asyncio
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from accounting.batch_writer import write_batch
from cli.main import build_parser, main
from devstack.harness.registrations import register_nodes, transfer_node
from payouts.batches import (
    PAYABLE_ROWS,
    PAYEE_WALLET,
    BatchNotPending,
    PaymentBatch,
    PaymentFailed,
    WalletPayment,
    claim_batch,
    list_batches,
    load_batch,
    mark_failed,
    run_payout,
)
from payouts.payer import FilePayer
from payouts.settings import BatchPolicy, PayoutSettings
from tests.fixtures.ledger import unique_id, usage_record, wallet_for


class FailingPayer:
    name = "failing"

    async def pay(self, batch: PaymentBatch) -> str:
        raise PaymentFailed("the export disk is full")


async def test_a_file_payout_exports_every_owed_row_once_and_pays_nothing_yet(
    payouts_db: asyncpg.Connection, payouts_ledger_dsn: str, tmp_path: Path
) -> None:
    db = payouts_db
    a, b = unique_id("peer"), unique_id("peer")
    await write_batch(db, [usage_record(unique_id("req"), {a: 3, b: 1}, price_far=Decimal("0.1")) for _ in range(4)])
    await register_nodes(db, [a, b])
    owed = {
        r["wallet"]: r["unpaid_far"] for r in await db.fetch("SELECT wallet, unpaid_far FROM node_earnings_summary")
    }

    batch = await run_payout(payouts_ledger_dsn, FilePayer(tmp_path), min_far=Decimal(0))
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
    assert all(r["paid_far"] == 0 and r["unpaid_far"] == 0 for r in summary)  # exported is not paid
    assert sum(r["in_payment_far"] for r in summary) == batch.total_far == Decimal("4.0")
    [stored] = await list_batches(db)
    assert (stored.status, stored.transaction_ref) == ("submitted", None)
    assert stored.export_ref is not None and stored.export_ref.startswith(f"file:far-payout-batch-{batch.id}.csv#")
    assert await db.fetchval("SELECT count(*) FROM far_session_contributions WHERE transaction_ref IS NOT NULL") == 0
    lines = (tmp_path / f"far-payout-batch-{batch.id}.csv").read_text().splitlines()
    assert lines[0] == "batch_id,wallet,amount_far,contribution_ids"
    assert lines[-1].startswith("# total_far=4.000000000000000000 sha256=")
    assert await run_payout(payouts_ledger_dsn, FilePayer(tmp_path), min_far=Decimal(0)) is None  # all in payment


async def test_what_a_batch_pays_each_wallet_is_recorded_when_it_is_claimed(payouts_db: asyncpg.Connection) -> None:
    peers = [unique_id("peer") for _ in range(3)]
    await write_batch(payouts_db, [usage_record(unique_id("req"), {p: 1 for p in peers}) for _ in range(5)])
    await register_nodes(payouts_db, peers)
    batch = await claim_batch(payouts_db, "test", Decimal(0))
    assert batch is not None
    # the batch pays what was claimed, even if the rows' announced wallets or the nodes' owners change afterwards
    await payouts_db.execute("UPDATE far_session_contributions SET wallet = $1", wallet_for("someone-else"))
    for peer in peers:
        await transfer_node(payouts_db, peer, peer, "someone-else")
    assert (await load_batch(payouts_db, batch.id)).payments == tuple(
        WalletPayment(p.wallet, p.amount_far) for p in batch.payments
    )


async def test_concurrent_payout_runs_never_include_a_row_twice(
    payouts_db: asyncpg.Connection, payouts_ledger_dsn: str, tmp_path: Path
) -> None:
    peers = [unique_id("peer") for _ in range(20)]
    await write_batch(
        payouts_db, [usage_record(unique_id("req"), {p: 1 for p in peers[i % 5 :: 5]}) for i in range(200)]
    )
    await register_nodes(payouts_db, peers)
    batches = await asyncio.gather(
        *(run_payout(payouts_ledger_dsn, FilePayer(tmp_path), min_far=Decimal(0)) for _ in range(4))
    )
    ids = [row_id for batch in batches if batch is not None for row_id in batch.contribution_ids]
    assert len(ids) == len(set(ids)) == await payouts_db.fetchval("SELECT count(*) FROM far_session_contributions")


async def test_wallets_owed_less_than_the_minimum_wait_for_a_later_run(
    payouts_db: asyncpg.Connection, payouts_ledger_dsn: str, tmp_path: Path
) -> None:
    big, small = unique_id("peer"), unique_id("peer")
    await write_batch(payouts_db, [usage_record(unique_id("req"), {big: 9, small: 1}, price_far=Decimal("0.1"))])
    await register_nodes(payouts_db, [big, small])
    batch = await run_payout(payouts_ledger_dsn, FilePayer(tmp_path), min_far=Decimal("0.5"))
    assert batch is not None and [p.wallet for p in batch.payments] == [wallet_for(big)]
    unpaid = await payouts_db.fetchval("SELECT unpaid_far FROM node_earnings_summary WHERE node_id = $1", small)
    assert unpaid == Decimal("0.1")


async def test_a_batch_pays_at_most_max_wallets_and_the_rest_wait_for_the_next(
    payouts_db: asyncpg.Connection,
) -> None:
    peers = [unique_id("peer") for _ in range(7)]
    await write_batch(payouts_db, [usage_record(unique_id("req"), {p: 1 for p in peers})])
    await register_nodes(payouts_db, peers)
    first = await claim_batch(payouts_db, "test", Decimal(0), max_wallets=5)
    second = await claim_batch(payouts_db, "test", Decimal(0), max_wallets=5)
    assert first is not None and second is not None
    assert (len(first.payments), len(second.payments)) == (5, 2)
    assert {p.wallet for p in first.payments + second.payments} == {wallet_for(p) for p in peers}


def test_a_batch_total_is_exact_beyond_28_significant_digits() -> None:
    big, tiny = Decimal("99999999999999999999.999999999999999999"), Decimal("0.000000000000000001")
    almost = Decimal("99999999999999999999.999999999999999998")
    batch = PaymentBatch(1, (WalletPayment("0xa", almost), WalletPayment("0xb", tiny)))
    assert batch.total_far == big  # the built-in sum() would give 1.000000000000000000000000000E+20


def test_the_payee_is_the_registered_wallet_in_one_named_sql_expression() -> None:
    assert PAYABLE_ROWS == "far_session_contributions c JOIN far_node_registrations r ON r.node_id = c.node_id"
    assert PAYEE_WALLET == "r.wallet"


async def test_a_failed_export_leaves_the_rows_unpaid_and_the_batch_marked_failed(
    payouts_db: asyncpg.Connection, payouts_ledger_dsn: str, tmp_path: Path
) -> None:
    peer = unique_id("peer")
    await write_batch(payouts_db, [usage_record(unique_id("req"), {peer: 1})])
    await register_nodes(payouts_db, [peer])
    with pytest.raises(PaymentFailed, match="disk is full"):
        await run_payout(payouts_ledger_dsn, FailingPayer(), min_far=Decimal(0))
    assert await payouts_db.fetchval("SELECT status FROM far_payment_batches") == "failed"
    released = "SELECT count(*) FROM far_session_contributions WHERE payment_batch_id IS NULL AND paid_at IS NULL"
    assert await payouts_db.fetchval(released) == 1
    assert await run_payout(payouts_ledger_dsn, FilePayer(tmp_path), min_far=Decimal(0)) is not None  # next time


async def test_far_mesh_payouts_resolve_failed_releases_an_exported_batch_for_the_next_run(
    payouts_db: asyncpg.Connection,
    payouts_ledger_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    peers = [unique_id("peer"), unique_id("peer")]
    await write_batch(payouts_db, [usage_record(unique_id("req"), {peers[0]: 1, peers[1]: 3})])
    await register_nodes(payouts_db, peers)
    exported = await run_payout(payouts_ledger_dsn, FilePayer(tmp_path / "a"), min_far=Decimal(0))
    assert exported is not None
    monkeypatch.setenv("POSTGRES_URL", payouts_ledger_dsn)
    assert await asyncio.to_thread(main, ["payouts", "list", "--status", "submitted"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith(f"{exported.id}\tsubmitted\tfile\t")
    assert await asyncio.to_thread(main, ["payouts", "resolve", str(exported.id), "--failed"]) == 0
    assert await asyncio.to_thread(main, ["payouts", "resolve", str(exported.id), "--failed"]) == 1  # settled
    assert await payouts_db.fetchval("SELECT status FROM far_payment_batches WHERE id = $1", exported.id) == "failed"
    batch = await run_payout(payouts_ledger_dsn, FilePayer(tmp_path / "b"), min_far=Decimal(0))
    assert batch is not None and len(batch.contribution_ids) == 2
    with pytest.raises(BatchNotPending, match="is failed"):
        await mark_failed(payouts_db, exported.id, "twice")


def test_both_payers_run_and_serve_share_one_batch_policy() -> None:
    # `payouts run` has no defaults of its own: unset flags are the settings `serve` pays by, for either payer
    for payer in ("file", "chain"):
        args = build_parser().parse_args(["payouts", "run", "--payer", payer])
        assert (args.min_far, args.max_wallets) == (None, None)
    settings = PayoutSettings.from_env(postgres_url="postgresql://u@h/db")
    assert settings.batch_policy() == BatchPolicy(min_far=Decimal(1), max_wallets=200)
    assert settings.batch_policy(min_far=Decimal(0), max_wallets=3) == BatchPolicy(min_far=Decimal(0), max_wallets=3)


async def test_payouts_run_with_the_file_payer_pays_by_the_settings_policy_unless_told_otherwise(
    payouts_db: asyncpg.Connection, payouts_ledger_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    peers = [unique_id("peer") for _ in range(3)]
    await register_nodes(payouts_db, peers)
    await write_batch(payouts_db, [usage_record(unique_id("req"), {peers[0]: 6, peers[1]: 4, peers[2]: 1})])
    owed = sorted(await payouts_db.fetchval("SELECT array_agg(unpaid_far) FROM node_earnings_summary"))
    monkeypatch.setenv("POSTGRES_URL", payouts_ledger_dsn)
    monkeypatch.setenv("PAYOUT_MIN_FAR", str(owed[1]))  # above the least owed
    monkeypatch.setenv("PAYOUT_MAX_WALLETS", "1")

    async def run(*flags: str) -> list[Decimal]:
        out_dir = tmp_path / unique_id("out")
        assert await asyncio.to_thread(main, ["payouts", "run", "--out-dir", str(out_dir), *flags]) == 0
        batches = await list_batches(payouts_db)
        return sorted(p.amount_far for p in (await load_batch(payouts_db, batches[0].id)).payments)

    first = await run()  # one wallet of the two owed at least the floor, as `serve` would pay
    assert first in ([owed[1]], [owed[2]])
    assert first + await run("--max-wallets", "5") in ([owed[1], owed[2]], [owed[2], owed[1]])  # not the least owed
    assert await run("--min-far", "0") == [owed[0]]


async def test_payouts_run_with_the_file_payer_needs_an_out_dir(
    payouts_ledger_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTGRES_URL", payouts_ledger_dsn)
    assert await asyncio.to_thread(main, ["payouts", "run", "--payer", "file"]) == 2


async def test_a_resolve_tx_argument_must_be_a_transaction_hash(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["payouts", "resolve", "1", "--tx", "0xfeed"])
    assert "is not a transaction hash" in capsys.readouterr().err
