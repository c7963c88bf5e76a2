"""The chain payer against a real local node (ganache): every wallet paid exactly what the ledger says, rows
paid only after confirmation, and a batch that moved no money releases its rows with a clear reason."""

import asyncio
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from chain.node import LocalChain
from chain.units import to_base_units
from mesh.ports import free_port
from payouts.batches import batch_state, claim_batch
from payouts.payer import ChainPayer, FinishedBatch, PayerBusy, payer_lock
from tests.fixtures.chain import FarDeployment, chain_rpc, new_deployment
from tests.fixtures.ledger import wait_until
from tests.payouts.helpers import earn, paid_by_wallet, payout_settings


async def run_on_own_connection(payer: ChainPayer, dsn: str) -> list[FinishedBatch]:
    connection = await asyncpg.connect(dsn)
    try:
        return await payer.run_once(connection, min_far=Decimal(0))
    finally:
        await connection.close()


async def test_two_hundred_wallets_hold_on_chain_exactly_what_the_ledger_says_they_were_paid(
    payouts_db: asyncpg.Connection, payouts_ledger_dsn: str, far_deployment: FarDeployment
) -> None:
    await earn(payouts_db, 200)
    owed = await payouts_db.fetchval("SELECT sum(unpaid_far) FROM node_earnings_summary")
    payer = await ChainPayer.connect(payout_settings(far_deployment, payouts_ledger_dsn))

    [settled] = await payer.run_once(payouts_db, min_far=Decimal(0))

    assert settled.status == "paid"
    paid = await paid_by_wallet(payouts_db)
    assert len(paid) == 200 and all(amount > 0 for amount in paid.values())
    assert {w: far_deployment.far_balance(w) for w in paid} == {w: to_base_units(a) for w, a in paid.items()}
    transferred = sum(far_deployment.far_balance(w) for w in paid)
    assert transferred == to_base_units(owed)  # to the base unit
    assert await payouts_db.fetchval("SELECT sum(unpaid_far) + sum(in_payment_far) FROM node_earnings_summary") == 0
    batch = await payouts_db.fetchrow("SELECT * FROM far_payment_batches WHERE id = $1", settled.batch_id)
    assert batch["status"] == "paid" and batch["gas_used"] > 0 and batch["gas_cost_wei"] > 0
    refs = await payouts_db.fetch("SELECT DISTINCT transaction_ref FROM far_session_contributions")
    assert [r["transaction_ref"] for r in refs] == [batch["transaction_ref"]]
    tx = await payouts_db.fetchrow("SELECT * FROM far_payout_transactions WHERE batch_id = $1", settled.batch_id)
    assert (tx["state"], tx["tx_hash"], tx["nonce"]) == ("confirmed", batch["transaction_ref"], batch["nonce"])
    receipt = chain_rpc(far_deployment.url, "eth_getTransactionReceipt", batch["transaction_ref"])
    assert int(receipt["status"], 16) == 1 and int(receipt["gasUsed"], 16) == batch["gas_used"]
    assert await payer.run_once(payouts_db, min_far=Decimal(0)) == []  # nothing left: nothing sent


async def test_rows_are_paid_only_after_the_configured_confirmations(
    payouts_db: asyncpg.Connection, payouts_ledger_dsn: str, far_deployment: FarDeployment
) -> None:
    await earn(payouts_db, 3)
    payer = await ChainPayer.connect(payout_settings(far_deployment, payouts_ledger_dsn, payout_confirmations=3))
    run = asyncio.create_task(run_on_own_connection(payer, payouts_ledger_dsn))

    async def submitted() -> bool:
        return await payouts_db.fetchval("SELECT status FROM far_payment_batches") == "submitted"

    await wait_until(submitted, what="the batch transaction mined (one confirmation)")
    await asyncio.sleep(0.3)
    assert await payouts_db.fetchval("SELECT count(*) FROM far_session_contributions WHERE paid_at IS NOT NULL") == 0
    chain_rpc(far_deployment.url, "evm_mine")
    chain_rpc(far_deployment.url, "evm_mine")
    [settled] = await asyncio.wait_for(run, 20)
    assert settled.status == "paid"
    assert await payouts_db.fetchval("SELECT count(*) FROM far_session_contributions WHERE paid_at IS NULL") == 0


async def test_a_treasury_without_enough_far_fails_the_batch_and_releases_its_rows(
    payouts_db: asyncpg.Connection, payouts_ledger_dsn: str, local_chain: LocalChain
) -> None:
    poor = new_deployment(local_chain.url, supply_far=Decimal("0.000001"))
    await earn(payouts_db, 4)
    payer = await ChainPayer.connect(payout_settings(poor, payouts_ledger_dsn))
    [settled] = await payer.run_once(payouts_db, min_far=Decimal(0))
    assert settled.status == "failed"
    assert settled.reason is not None and f"treasury {poor.treasury.address} holds 0.000001 FAR" in settled.reason
    assert (
        await payouts_db.fetchval("SELECT count(*) FROM far_session_contributions WHERE payment_batch_id IS NULL") > 0
    )
    assert await payouts_db.fetchval("SELECT count(*) FROM far_payout_transactions") == 0  # nothing was signed


async def test_a_treasury_without_gas_fails_the_batch_and_releases_its_rows(
    payouts_db: asyncpg.Connection, payouts_ledger_dsn: str, local_chain: LocalChain
) -> None:
    broke = new_deployment(local_chain.url, gas_wei=2 * 10**14)  # enough for its approval, not for a batch
    await earn(payouts_db, 30)
    payer = await ChainPayer.connect(payout_settings(broke, payouts_ledger_dsn))
    [settled] = await payer.run_once(payouts_db, min_far=Decimal(0))
    assert settled.status == "failed" and settled.reason is not None and "of the gas token" in settled.reason
    assert (
        await payouts_db.fetchval("SELECT count(*) FROM far_session_contributions WHERE payment_batch_id IS NOT NULL")
        == 0
    )


async def test_a_reverted_transaction_fails_the_batch_releases_its_rows_and_records_its_gas(
    payouts_db: asyncpg.Connection, payouts_ledger_dsn: str, far_deployment: FarDeployment
) -> None:
    await earn(payouts_db, 5)
    payer = await ChainPayer.connect(payout_settings(far_deployment, payouts_ledger_dsn))
    batch = await claim_batch(payouts_db, "chain", Decimal(0))
    assert batch is not None
    await payer._sign_first(payouts_db, await batch_state(payouts_db, batch.id))  # signed and committed
    # between signing and mining, the batch contract starts reverting everything
    chain_rpc(far_deployment.url, "evm_setAccountCode", far_deployment.deployment.batch_contract, "0x60006000fd")

    settled = await payer.finish_batch(payouts_db, batch.id)

    assert settled.status == "failed" and settled.reason is not None and "reverted in block" in settled.reason
    stored = await payouts_db.fetchrow("SELECT gas_used, gas_cost_wei FROM far_payment_batches WHERE id = $1", batch.id)
    assert stored["gas_used"] > 0 and stored["gas_cost_wei"] > 0  # the treasury paid for the revert
    assert await payouts_db.fetchval("SELECT state FROM far_payout_transactions") == "reverted"
    assert (
        await payouts_db.fetchval("SELECT count(*) FROM far_session_contributions WHERE payment_batch_id IS NULL") == 15
    )
    assert sum((await paid_by_wallet(payouts_db)).values()) == 0


async def test_a_nonce_taken_by_another_transaction_fails_the_batch_without_paying(
    payouts_db: asyncpg.Connection, payouts_ledger_dsn: str, far_deployment: FarDeployment
) -> None:
    from chain.deploy import transfer

    await earn(payouts_db, 2)
    payer = await ChainPayer.connect(payout_settings(far_deployment, payouts_ledger_dsn))
    batch = await claim_batch(payouts_db, "chain", Decimal(0))
    assert batch is not None
    await payer._sign_first(payouts_db, await batch_state(payouts_db, batch.id))
    # someone else with the treasury key sends a transaction with that nonce before ours is broadcast
    stranger = "0x000000000000000000000000000000000000dEaD"
    transfer(far_deployment.w3, far_deployment.treasury, far_deployment.deployment.token, stranger, 5)

    settled = await payer.finish_batch(payouts_db, batch.id)

    assert settled.status == "failed" and settled.reason is not None and "did not sign for the batch" in settled.reason
    assert [far_deployment.far_balance(p.wallet) for p in batch.payments] == [0, 0]
    assert await payouts_db.fetchval("SELECT state FROM far_payout_transactions") == "dropped"


async def test_a_stuck_transaction_is_replaced_with_the_same_nonce_and_only_one_lands(
    payouts_db: asyncpg.Connection, payouts_ledger_dsn: str, tmp_path: Path
) -> None:
    node = LocalChain(free_port(), tmp_path / "ganache.log", block_time_s=1)  # a mempool, blocks every second
    node.start()
    try:
        d = new_deployment(node.url)
        await earn(payouts_db, 6)
        base_fee = int(chain_rpc(node.url, "eth_getBlockByNumber", "latest", False)["baseFeePerGas"], 16)
        too_low = Decimal(base_fee // 3) / 10**9
        # a payer whose fee cap is below the base fee: its transaction waits in the mempool, never mined
        stingy = await ChainPayer.connect(
            payout_settings(d, payouts_ledger_dsn, payout_max_fee_gwei=too_low, payout_priority_fee_gwei=0)
        )
        stuck_run = asyncio.create_task(run_on_own_connection(stingy, payouts_ledger_dsn))
        await wait_until(
            lambda: _count(payouts_db, "SELECT count(*) FROM far_payout_transactions WHERE state = 'submitted'"),
            what="the first transaction submitted",
        )
        await asyncio.sleep(2.5)  # two blocks without it
        stuck_run.cancel()
        await asyncio.gather(stuck_run, return_exceptions=True)
        [first] = await payouts_db.fetch("SELECT tx_hash FROM far_payout_transactions")

        # the operator raises the cap; the restarted payer replaces the stuck transaction
        payer = await ChainPayer.connect(
            payout_settings(d, payouts_ledger_dsn, payout_replace_after_s=0.5, payout_confirmations=2)
        )
        [settled] = await asyncio.wait_for(payer.run_once(payouts_db, min_far=Decimal(0)), 30)

        assert settled.status == "paid"
        txs = await payouts_db.fetch(
            "SELECT id, tx_hash, nonce, state, replaces FROM far_payout_transactions ORDER BY id"
        )
        assert len(txs) >= 2 and len({t["nonce"] for t in txs}) == 1
        assert all(t["replaces"] is not None for t in txs[1:])
        # A replacement sent while the one before it was being mined is refused (dropped), so the confirmed one
        # need not be the last: on a busy machine two blocks can take longer than `payout_replace_after_s`.
        [confirmed] = [t for t in txs if t["state"] == "confirmed"]
        mined = [t["tx_hash"] for t in txs if chain_rpc(node.url, "eth_getTransactionReceipt", t["tx_hash"])]
        assert mined == [confirmed["tx_hash"]] and first["tx_hash"] not in mined
        paid = await paid_by_wallet(payouts_db)
        assert {w: d.far_balance(w) for w in paid} == {w: to_base_units(a) for w, a in paid.items()}
    finally:
        node.stop()


async def _count(db: asyncpg.Connection, sql: str) -> bool:
    return bool(await db.fetchval(sql))


async def test_one_payer_at_a_time_holds_the_treasury_nonce_sequence(payouts_ledger_dsn: str) -> None:
    first, second = await asyncpg.connect(payouts_ledger_dsn), await asyncpg.connect(payouts_ledger_dsn)
    try:
        async with payer_lock(first, wait_s=0):
            with pytest.raises(PayerBusy, match="another chain payer"):
                async with payer_lock(second, wait_s=0.3):
                    pass
        async with payer_lock(second, wait_s=0):  # released with the first
            pass
    finally:
        await first.close()
        await second.close()
