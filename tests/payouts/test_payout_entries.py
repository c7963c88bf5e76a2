"""Payouts, slashes and forfeits in the journal (#26 part 2, schema/0023), on the session's ganache and a ledger of
this module's own: a batch the chain payer pays posts one `payout` entry per wallet, which empties its nodes'
payables, and `far-mesh ledger reconcile` then proves the treasury and every paid wallet's receipts on chain; a
payout the journal does not record fails both checks naming the wallet; a slash and a forfeit move a charged
session's payable to the platform exactly once, and a slash of a session that was never charged posts nothing."""

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import pytest
from web3 import Web3

from accounting.batch_writer import write_batch
from accounting.journal import TREASURY_CHAIN, account_balance, provider_account
from accounting.reconcile import reconcile
from chain.artifacts import load_artifact
from chain.deploy import send
from chain.node import DEV_CHAIN_ID
from chain.units import to_base_units
from cli.main import main
from devstack.harness.registrations import register_nodes
from payouts.batches import claim_batch
from payouts.payer import ChainPayer
from tests.fixtures.chain import FarDeployment
from tests.fixtures.ledger import unique_id, usage_record
from tests.payouts.helpers import payout_settings
from tests.verifier.helpers import verdict
from verifier.verdicts import record_verdicts

JOURNAL_TABLES = "far_chain_deposits, far_deposit_scans, far_journal_lines, far_journal_entries, far_journal_accounts"


@pytest.fixture
async def books(payouts_db: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """This module's ledger with no payout and no journal."""
    await payouts_db.execute(f"TRUNCATE {JOURNAL_TABLES}, far_slashes, far_verifications CASCADE")
    yield payouts_db


async def entries(db: asyncpg.Connection, kind: str) -> dict[str, dict[str, Decimal]]:
    """reference -> {account: amount} of every entry of `kind`."""
    rows = await db.fetch(
        "SELECT e.reference, l.account, l.amount_far FROM far_journal_entries e "
        "JOIN far_journal_lines l ON l.entry_id = e.id WHERE e.kind = $1",
        kind,
    )
    found: dict[str, dict[str, Decimal]] = {}
    for row in rows:
        found.setdefault(row["reference"], {})[row["account"]] = row["amount_far"]
    return found


def pay_outside_the_ledger(d: FarDeployment, wallet: str, units: int) -> None:
    """The treasury pays `wallet` through the batch contract, as the payer does, but without any batch."""
    contract = d.w3.eth.contract(
        address=Web3.to_checksum_address(d.deployment.batch_contract), abi=load_artifact("FarBatchTransfer").abi
    )
    call = contract.functions.payBatch(
        Web3.to_checksum_address(d.deployment.token), [Web3.to_checksum_address(wallet)], [units]
    )
    send(d.w3, d.treasury, call.build_transaction({"from": d.treasury.address, "gas": 200_000}))


async def test_a_paid_batch_posts_one_payout_per_wallet_and_reconciles_with_every_wallets_receipts_on_chain(
    far_deployment: FarDeployment,
    books: asyncpg.Connection,
    payouts_ledger_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    d = far_deployment
    opening = d.far_balance(d.treasury.address)
    peers = [unique_id("peer") for _ in range(3)]
    await register_nodes(books, peers)
    records = [usage_record(unique_id("req"), {p: 1 + i + s for i, p in enumerate(peers)}) for s in range(2)]
    await write_batch(books, records)
    owed = {p: -await account_balance(books, provider_account(p)) for p in peers}
    assert all(amount > 0 for amount in owed.values())
    payer = await ChainPayer.connect(payout_settings(d, payouts_ledger_dsn))

    [settled] = await payer.run_once(books, min_far=Decimal(0))

    assert settled.status == "paid"
    payments = {
        r["wallet"]: r["amount_far"]
        for r in await books.fetch(
            "SELECT wallet, amount_far FROM far_payout_payments WHERE batch_id = $1", settled.batch_id
        )
    }
    posted = await entries(books, "payout")
    assert set(posted) == {f"{settled.batch_id}:{w}" for w in payments}
    for wallet, amount in payments.items():
        assert posted[f"{settled.batch_id}:{wallet}"][TREASURY_CHAIN] == -amount
    assert {p: await account_balance(books, provider_account(p)) for p in peers} == dict.fromkeys(peers, Decimal(0))
    assert -await account_balance(books, TREASURY_CHAIN) == sum(owed.values())
    assert sum(owed.values()) == sum(payments.values())
    await books.execute("UPDATE far_payment_batches SET failure_reason = 'x' WHERE id = $1", settled.batch_id)
    assert len(await entries(books, "payout")) == len(payments)  # another update of the batch posts nothing more

    for name, value in {
        "CHAIN_RPC_URL": d.url,
        "DEPOSIT_CONTRACT_ADDRESS": d.deployment.deposit_contract,
        "CHAIN_BATCH_CONTRACT_ADDRESS": d.deployment.batch_contract,
        "POSTGRES_URL": payouts_ledger_dsn,
    }.items():
        monkeypatch.setenv(name, value)
    opening_far = str(Decimal(opening) / 10**18)
    block = str(d.w3.eth.block_number)
    assert await asyncio.to_thread(main, ["ledger", "reconcile", "--opening-far", opening_far, "--block", block]) == 0
    out = capsys.readouterr().out
    assert f"ok    each of {len(payments)} wallets paid in the journal received exactly that" in out
    assert "minus the batches paid" in out and out.splitlines()[-1] == "reconciled"

    stranger = next(iter(payments))
    pay_outside_the_ledger(d, stranger, to_base_units(Decimal("0.5")))
    result = await reconcile(
        payouts_ledger_dsn,
        rpc_url=d.url,
        chain_id=DEV_CHAIN_ID,
        deposit_contract=d.deployment.deposit_contract,
        opening_units=opening,
        block=d.w3.eth.block_number,
        batch_contract=d.deployment.batch_contract,
    )
    assert not result.ok
    [treasury, receipts] = result.failed
    assert "off by -0.5 FAR (less on chain than the ledger says" in treasury
    assert receipts.startswith("1 wallets' payouts in the journal differ from their receipts on chain")
    assert f"{stranger}: journal {payments[stranger].normalize():f} FAR, on chain " in receipts


async def test_a_slash_and_a_forfeit_move_a_charged_payable_to_the_platform_once_and_an_uncharged_slash_posts_nothing(
    books: asyncpg.Connection, payouts_ledger_dsn: str
) -> None:
    old_cheat, cheat, honest = (unique_id("peer") for _ in range(3))
    await register_nodes(books, [old_cheat, cheat, honest])
    uncharged = usage_record(unique_id("req"), {old_cheat: 2, honest: 2})
    await write_batch(books, [uncharged])
    await books.execute(f"TRUNCATE {JOURNAL_TABLES} CASCADE")  # as if stored before charges existed (0022)
    convicted = usage_record(unique_id("req"), {cheat: 3, honest: 2})
    earlier = usage_record(unique_id("req"), {cheat: 5, honest: 1})
    await write_batch(books, [earlier, convicted])
    cheat_owed = -await account_balance(books, provider_account(cheat))
    honest_owed = -await account_balance(books, provider_account(honest))
    payment = {(r.request_id, c.node_id): c.payment_far for r in (convicted, earlier) for c in r.contributions}

    await record_verdicts(books, convicted.request_id, convicted.model_id, [verdict(cheat, bad=True)])
    await record_verdicts(books, uncharged.request_id, uncharged.model_id, [verdict(old_cheat, bad=True)])

    assert await books.fetchval("SELECT count(*) FROM far_slashes") == 3  # cheat: a slash and a forfeit; old_cheat: one
    [slash] = (await entries(books, "slash")).values()
    [forfeit] = (await entries(books, "forfeit")).values()
    assert slash == {
        provider_account(cheat): payment[(convicted.request_id, cheat)],
        "platform:slashes": -payment[(convicted.request_id, cheat)],
    }
    assert forfeit == {
        provider_account(cheat): payment[(earlier.request_id, cheat)],
        "platform:slashes": -payment[(earlier.request_id, cheat)],
    }
    assert await account_balance(books, provider_account(cheat)) == 0  # every unpaid row of the cheat's taken
    assert -await account_balance(books, "platform:slashes") == cheat_owed
    assert -await account_balance(books, provider_account(honest)) == honest_owed
    assert await account_balance(books, provider_account(old_cheat)) == 0  # never credited, never debited

    assert await books.fetchval("SELECT far_apply_slashes()") == 0  # nothing taken again, nothing posted again
    assert len(await entries(books, "slash")) + len(await entries(books, "forfeit")) == 2
    result = await reconcile(
        payouts_ledger_dsn, rpc_url="http://unused", chain_id=DEV_CHAIN_ID, deposit_contract=None, opening_units=None
    )
    assert result.ok, result.failed


async def test_a_row_marked_paid_without_its_batch_paid_fails_the_payables_check_naming_the_provider(
    books: asyncpg.Connection, payouts_ledger_dsn: str
) -> None:
    node = unique_id("peer")
    await register_nodes(books, [node])
    record = usage_record(unique_id("req"), {node: 1})
    await write_batch(books, [record])
    batch = await claim_batch(books, "chain", Decimal(0))
    assert batch is not None
    await books.execute(  # what no writer of the ledger does: rows marked paid while their batch is not
        "UPDATE far_session_contributions SET paid_at = now(), transaction_ref = 'by hand' WHERE payment_batch_id = $1",
        batch.id,
    )

    result = await reconcile(
        payouts_ledger_dsn, rpc_url="http://unused", chain_id=DEV_CHAIN_ID, deposit_contract=None, opening_units=None
    )

    [payables] = result.failed
    owed = record.contributions[0].payment_far
    assert payables == (
        f"1 provider payables differ from their unpaid rows: {provider_account(node)}: journal {owed}, unpaid rows 0"
    )
