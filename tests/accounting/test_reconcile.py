"""`far-mesh ledger reconcile` (#26 part 2) on the session's ganache and a ledger of this module's own: a consistent
ledger reconciles with the treasury on chain; a transfer the ledger does not record, and an unbalanced entry
written around the database's checks, fail with a message naming them; the database refuses an unbalanced entry
written directly."""

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from types import SimpleNamespace
from typing import cast

import asyncpg
import pytest
from eth_account import Account
from prometheus_client import REGISTRY

from accounting.batch_writer import write_batch
from accounting.chain_settings import ReconcileSettings
from accounting.journal import TREASURY_CHAIN, Line, buyer_account, post_entry
from accounting.reconcile import far_text, reconcile, serve_reconciliation
from chain.deploy import transfer
from chain.deposits import make_deposit
from chain.node import DEV_CHAIN_ID
from chain.units import to_base_units
from cli.main import main
from devstack.harness.registrations import register_nodes
from payouts.batches import claim_batch, mark_paid
from tests.fixtures.chain import FarDeployment
from tests.fixtures.deposits import funded_buyer, watcher_for
from tests.fixtures.ledger import unique_id, usage_record, wait_until

JOURNAL_TABLES = "far_chain_deposits, far_deposit_scans, far_journal_lines, far_journal_entries, far_journal_accounts"


@pytest.fixture
async def books(payouts_db: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """This module's ledger with no payout and no journal (TRUNCATE is no row change: the journal allows it)."""
    await payouts_db.execute(f"TRUNCATE {JOURNAL_TABLES} CASCADE")
    yield payouts_db


async def far_mesh(*argv: str) -> int:
    """The command, in a thread: it runs its own event loop."""
    return await asyncio.to_thread(main, list(argv))


async def record_paid_batch(books: asyncpg.Connection, d: FarDeployment, far: Decimal) -> None:
    """A payout as the payer leaves it: a session that owes one registered node `far` (charged in the journal), its
    row claimed into a batch, the $FAR sent from the treasury on chain, and the batch paid in the ledger (which posts
    its payout entry: schema/0023)."""
    peer = unique_id("peer")
    await register_nodes(books, [peer])
    await write_batch(books, [usage_record(unique_id("req"), {peer: 1}, price_far=far / 10)])  # 10 tokens
    batch = await claim_batch(books, "chain", Decimal(0))
    assert batch is not None and batch.total_far == far
    [payment] = batch.payments
    receipt = transfer(d.w3, d.treasury, d.deployment.token, payment.wallet, to_base_units(far))
    genesis = d.w3.eth.get_block(0)["hash"].to_0x_hex().lower()
    await books.execute(
        "UPDATE far_payment_batches SET chain_id = $2, chain_genesis = $3 WHERE id = $1",
        batch.id,
        DEV_CHAIN_ID,
        genesis,
    )
    await mark_paid(books, batch.id, receipt["transactionHash"].to_0x_hex())


async def test_a_consistent_ledger_reconciles_and_a_transfer_it_does_not_record_fails_naming_the_difference(
    far_deployment: FarDeployment,
    books: asyncpg.Connection,
    payouts_ledger_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    d = far_deployment
    buyer = funded_buyer(d, Decimal(20))
    opening = d.far_balance(d.treasury.address)  # the float before any deposit or payout
    watcher = await watcher_for(d, confirmations=1)
    make_deposit(d.w3, buyer, d.deployment.token, d.deployment.deposit_contract, to_base_units(Decimal("12.5")))
    await watcher.catch_up(books)
    await record_paid_batch(books, d, Decimal("3.25"))
    await watcher.catch_up(books)  # the checkpoint reaches the payout's block
    for name, value in {
        "CHAIN_RPC_URL": d.url,
        "DEPOSIT_CONTRACT_ADDRESS": d.deployment.deposit_contract,
        "POSTGRES_URL": payouts_ledger_dsn,
    }.items():
        monkeypatch.setenv(name, value)
    opening_far = str(Decimal(opening) / 10**18)

    assert await far_mesh("ledger", "reconcile", "--opening-far", opening_far) == 0
    out = capsys.readouterr().out
    assert "ok    every journal entry balances (3 entries, 6 lines)" in out
    assert "ok    the journal's lines sum to zero" in out
    assert (
        f"ok    the treasury {d.treasury.address} holds" in out
        and "- payouts to 1 wallets in the journal 3.25 = " in out
    )
    assert out.splitlines()[-1] == "reconciled"

    transfer(d.w3, d.treasury, d.deployment.token, buyer.address, to_base_units(Decimal(1)))  # not a payout
    await watcher.catch_up(books)
    assert await far_mesh("ledger", "reconcile", "--opening-far", opening_far) == 1
    out = capsys.readouterr().out
    assert f"FAIL  the treasury {d.treasury.address} holds" in out
    assert "off by -1 FAR (less on chain than the ledger says: a payout or transfer out" in out
    assert out.splitlines()[-1] == "NOT reconciled: 1 check(s) failed"

    # at a block before that transfer, it still reconciles
    before = d.w3.eth.block_number - 1
    result = await reconcile(
        payouts_ledger_dsn,
        rpc_url=d.url,
        chain_id=DEV_CHAIN_ID,
        deposit_contract=d.deployment.deposit_contract,
        opening_units=opening,
        block=before,
    )
    assert result.ok, result.failed

    assert await far_mesh("ledger", "reconcile") == 0  # the ledger alone; the chain is skipped and says so
    assert "skip  the treasury's $FAR on chain (give --opening-far to check it)" in capsys.readouterr().out


async def tamper(books: asyncpg.Connection, wallet: str) -> tuple[str, int]:
    """Write an entry of one line (charging `wallet` 5 FAR) around the database's checks, as a restore or a
    superuser could; returns its reference and id."""
    reference = unique_id("tampered")
    await books.execute(
        "INSERT INTO far_journal_accounts (name) VALUES ($1) ON CONFLICT DO NOTHING", buyer_account(wallet)
    )
    async with books.transaction():  # the deferred checks switched off for one write
        await books.execute("ALTER TABLE far_journal_lines DISABLE TRIGGER far_journal_lines_balanced")
        await books.execute("ALTER TABLE far_journal_entries DISABLE TRIGGER far_journal_entries_balanced")
        entry: int = await books.fetchval(
            "INSERT INTO far_journal_entries (kind, reference) VALUES ('charge', $1) RETURNING id", reference
        )
        await books.execute(
            "INSERT INTO far_journal_lines (entry_id, account, amount_far) VALUES ($1, $2, 5)",
            entry,
            buyer_account(wallet),
        )
        await books.execute("ALTER TABLE far_journal_lines ENABLE TRIGGER far_journal_lines_balanced")
        await books.execute("ALTER TABLE far_journal_entries ENABLE TRIGGER far_journal_entries_balanced")
    return reference, entry


async def test_the_database_refuses_an_unbalanced_entry_written_around_far_journal_post(
    books: asyncpg.Connection,
) -> None:
    wallet = str(Account.create().address)
    await books.execute(
        "INSERT INTO far_journal_accounts (name) VALUES ($1), ($2)", TREASURY_CHAIN, buyer_account(wallet)
    )
    with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
        async with books.transaction():
            entry = await books.fetchval(
                "INSERT INTO far_journal_entries (kind, reference) VALUES ('deposit', $1) RETURNING id", unique_id("t")
            )
            await books.execute(
                "INSERT INTO far_journal_lines (entry_id, account, amount_far) VALUES ($1, $2, 5), ($1, $3, -4)",
                entry,
                TREASURY_CHAIN,
                buyer_account(wallet),
            )
    assert await books.fetchval("SELECT count(*) FROM far_journal_entries") == 0


async def test_an_unbalanced_entry_written_with_the_checks_disabled_fails_reconciliation_naming_it(
    books: asyncpg.Connection, payouts_ledger_dsn: str
) -> None:
    wallet = str(Account.create().address)
    await post_entry(
        books, "deposit", unique_id("t"), [Line(TREASURY_CHAIN, Decimal(2)), Line(buyer_account(wallet), Decimal(-2))]
    )
    reference, entry = await tamper(books, wallet)

    result = await reconcile(
        payouts_ledger_dsn, rpc_url="http://unused", chain_id=DEV_CHAIN_ID, deposit_contract=None, opening_units=None
    )
    assert not result.ok
    assert (
        result.failed[0]
        == f"journal entries do not balance: entry {entry} (charge {reference}): 1 lines summing to 5." + "0" * 18
    )
    assert result.failed[1] == "the journal's lines sum to 5.000000000000000000, not zero"
    # an entry posted through the writer but not by crediting a deposit: the treasury's account is not the deposits
    assert result.failed[2:] == [
        "treasury:chain in the journal is 2.000000000000000000 FAR but the deposits credited (0 FAR) minus the "
        "batches paid (0 FAR) are 0 FAR: an entry is missing or was written without its record"
    ]


async def test_ledger_serve_exports_whether_the_books_reconcile_for_the_alert(
    books: asyncpg.Connection, payouts_ledger_dsn: str
) -> None:
    settings = ReconcileSettings.from_env(
        postgres_url=payouts_ledger_dsn, ledger_metrics_port=0, ledger_reconcile_interval_s=0.05
    )
    wallet = str(Account.create().address)
    stop = asyncio.Event()
    serving = asyncio.create_task(serve_reconciliation(settings, stop))
    before = REGISTRY.get_sample_value("far_ledger_reconcile_last_run_timestamp_seconds") or 0.0

    async def ran_since(mark: float) -> bool:
        return (REGISTRY.get_sample_value("far_ledger_reconcile_last_run_timestamp_seconds") or 0.0) > mark

    await wait_until(lambda: ran_since(before), timeout_s=10)
    assert REGISTRY.get_sample_value("far_ledger_reconciled") == 1
    assert REGISTRY.get_sample_value("far_ledger_reconcile_failed_checks") == 0

    await tamper(books, wallet)

    async def failing() -> bool:
        return REGISTRY.get_sample_value("far_ledger_reconciled") == 0

    await wait_until(failing, timeout_s=10)
    stop.set()
    await asyncio.wait_for(serving, timeout=10)
    assert REGISTRY.get_sample_value("far_ledger_reconciled") == 0
    assert REGISTRY.get_sample_value("far_ledger_reconcile_failed_checks") == 2  # the entry, and the sum


async def test_a_reconciliation_cut_by_a_connection_left_mid_operation_is_counted_and_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """InternalClientError ("another operation is in progress"), a connection a PostgreSQL restart left
    mid-operation, fails one reconciliation like an outage; it stopped `far-mesh ledger serve` (the same error
    killed the usage consumer in the chaos soak, seed 33)."""
    from accounting import reconcile as reconcile_module

    async def left_mid_operation(*args: object) -> None:
        raise asyncpg.exceptions.InternalClientError("cannot switch to state 15; another operation is in progress")

    monkeypatch.setattr(reconcile_module, "reconcile_with", left_mid_operation)
    settings = cast(ReconcileSettings, SimpleNamespace(ledger_opening_far=Decimal(0)))
    before = REGISTRY.get_sample_value("far_ledger_reconcile_errors_total") or 0.0
    assert await reconcile_module.reconcile_once(settings) is None
    assert REGISTRY.get_sample_value("far_ledger_reconcile_errors_total") == before + 1


def test_amounts_past_28_digits_are_shown_exactly() -> None:
    """Decimal's default context keeps 28 digits: ten billion FAR to the last base unit needs 29."""
    assert far_text(12345678901123456789012345678) == "12345678901.123456789012345678"
    assert far_text(-1) == "-0.000000000000000001"
