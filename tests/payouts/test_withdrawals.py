"""A buyer's withdrawal paid on the session's ganache (#26 part 5): deposited and credited, withdrawn by a signed
statement through the portal's code, then paid by a chain payer that is SIGKILLed mid-way and restarted: the
$FAR lands on the buyer's wallet exactly once, the journal posts the withdrawal and its payment once, and
`far-mesh ledger reconcile` proves the treasury and the buyer's receipts on chain."""

import signal
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from eth_account import Account
from eth_account.messages import encode_defunct

from accounting.journal import TREASURY_CHAIN, account_balance, buyer_balance
from accounting.reconcile import reconcile
from chain.deposits import make_deposit
from chain.node import DEV_CHAIN_ID
from chain.units import to_base_units
from portal import withdrawals
from portal.registrations import Binding
from tests.fixtures.chain import FarDeployment, chain_rpc
from tests.fixtures.deposits import funded_buyer, watcher_for
from tests.payouts.helpers import payer_env, run_payer

JOURNAL_TABLES = "far_chain_deposits, far_deposit_scans, far_journal_lines, far_journal_entries, far_journal_accounts"
BINDING = Binding(domain="portal.test", chain_id=DEV_CHAIN_ID, max_age=timedelta(minutes=5))


@pytest.fixture
async def books(payouts_db: asyncpg.Connection) -> asyncpg.Connection:
    """This module's ledger with no payout, no withdrawal and no journal."""
    await payouts_db.execute(f"TRUNCATE {JOURNAL_TABLES}, far_withdrawals CASCADE")
    return payouts_db


def treasury_nonce(d: FarDeployment) -> int:
    return int(chain_rpc(d.url, "eth_getTransactionCount", d.treasury.address, "latest"), 16)


@pytest.mark.parametrize("point", ["after-sign", "after-broadcast", "before-confirm"])
async def test_a_withdrawal_lands_on_chain_exactly_once_through_a_payer_restart_and_the_books_reconcile(
    far_deployment: FarDeployment,
    books: asyncpg.Connection,
    payouts_ledger_dsn: str,
    redis: aioredis.Redis,
    tmp_path: Path,
    point: str,
) -> None:
    d = far_deployment
    buyer = funded_buyer(d, Decimal(20))
    opening = d.far_balance(d.treasury.address)
    watcher = await watcher_for(d, confirmations=1)
    make_deposit(d.w3, buyer, d.deployment.token, d.deployment.deposit_contract, to_base_units(Decimal(12)))
    await watcher.catch_up(books)
    assert await buyer_balance(books, buyer.address) == 12
    pool = await asyncpg.create_pool(payouts_ledger_dsn, min_size=1, max_size=2)
    try:
        asked = await withdrawals.message(pool, BINDING, buyer.address, Decimal("7.25"))
        text = asked["message"]
        signature = Account.sign_message(encode_defunct(text=text), private_key=buyer.key).signature.to_0x_hex()
        recorded = await withdrawals.withdraw(pool, redis, BINDING, buyer.address, text, signature)
    finally:
        await pool.close()
    assert recorded["status"] == "requested"
    assert await buyer_balance(books, buyer.address) == Decimal("4.75")  # held against the balance at once
    on_chain_before = d.far_balance(buyer.address)
    key_file = tmp_path / "treasury.key"
    key_file.write_text(d.treasury.key.to_0x_hex())
    env = payer_env(d, payouts_ledger_dsn, key_file)
    nonce = treasury_nonce(d)

    killed = run_payer(point, env)

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    batch = await books.fetchrow("SELECT id, status, purpose FROM far_payment_batches")
    assert batch["purpose"] == "withdrawals" and batch["status"] in ("signed", "submitted")
    assert await books.fetchval("SELECT paid_at FROM far_withdrawals") is None
    assert await books.fetchval("SELECT count(*) FROM far_journal_entries WHERE kind = 'withdrawal_paid'") == 0

    restarted = run_payer("none", env)

    assert restarted.returncode == 0, restarted.stderr
    assert restarted.stdout.strip() == f"batch {batch['id']}: paid"
    assert d.far_balance(buyer.address) - on_chain_before == to_base_units(Decimal("7.25"))  # once
    assert treasury_nonce(d) == nonce + 1  # one transaction, whatever the restart
    assert await books.fetchval("SELECT paid_at IS NOT NULL FROM far_withdrawals") is True
    paid = await books.fetch(
        "SELECT e.reference, l.account, l.amount_far FROM far_journal_entries e "
        "JOIN far_journal_lines l ON l.entry_id = e.id WHERE e.kind = 'withdrawal_paid'"
    )
    assert {(r["reference"], r["account"], r["amount_far"]) for r in paid} == {
        (f"{batch['id']}:{buyer.address}", f"withdrawing:{buyer.address}", Decimal("7.25")),
        (f"{batch['id']}:{buyer.address}", TREASURY_CHAIN, Decimal("-7.25")),
    }
    assert await account_balance(books, f"withdrawing:{buyer.address}") == 0
    assert await account_balance(books, TREASURY_CHAIN) == Decimal("4.75")
    again = run_payer("none", env)
    assert again.returncode == 0 and again.stdout.strip() == ""  # nothing left: nothing sent
    assert treasury_nonce(d) == nonce + 1

    await watcher.catch_up(books)
    result = await reconcile(
        payouts_ledger_dsn,
        rpc_url=d.url,
        chain_id=DEV_CHAIN_ID,
        deposit_contract=d.deployment.deposit_contract,
        opening_units=opening,
        block=d.w3.eth.block_number,
        batch_contract=d.deployment.batch_contract,
    )
    assert result.ok, result.failed
    assert any("each of 1 wallets paid in the journal received exactly that" in p for p in result.passed)
