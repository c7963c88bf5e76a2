"""The chain payer behind an inconsistent RPC (a load balancer over nodes that are not all at the same block, a
node lagging behind): a receipt the node answers null once, or late, never releases a batch whose transfer was
mined, so nothing is paid twice; the transfer is recognised once the node answers truthfully. A reverted
receipt fails its batch only once it is confirmation-deep."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import asyncpg

from chain.units import to_base_units
from payouts.batches import batch_state, claim_batch
from payouts.payer import ChainPayer
from tests.fixtures.chain import FarDeployment, chain_rpc
from tests.fixtures.ledger import wait_until
from tests.fixtures.rpc_proxy import RpcProxy, rpc_proxy
from tests.payouts.helpers import earn, paid_by_wallet, payout_settings


class NullOnce:
    """Answers the first receipt of a mined transaction with null, as a load balancer's node that has not yet
    seen its block would; every call after it tells the truth."""

    def __init__(self) -> None:
        self.lied = 0

    def __call__(self, method: str, params: list[Any], result: Any) -> Any:
        if method == "eth_getTransactionReceipt" and result is not None and not self.lied:
            self.lied += 1
            return None
        return result


class LaggingReceipts:
    """Receipts come from a node `lag` blocks behind the one answering every other call: a receipt is null
    until its block is `lag` blocks below the head."""

    def __init__(self, upstream: str, lag: int) -> None:
        self.upstream = upstream
        self.lag = lag
        self.hidden = 0

    def __call__(self, method: str, params: list[Any], result: Any) -> Any:
        if method != "eth_getTransactionReceipt" or result is None:
            return result
        head = int(chain_rpc(self.upstream, "eth_blockNumber"), 16)
        if head - int(result["blockNumber"], 16) < self.lag:
            self.hidden += 1
            return None
        return result


@asynccontextmanager
async def blocks_every(url: str, seconds: float) -> AsyncIterator[None]:
    """A block every `seconds` (ganache in the tests mines only when it gets a transaction)."""

    async def mine() -> None:
        while True:
            await asyncio.to_thread(chain_rpc, url, "evm_mine")
            await asyncio.sleep(seconds)

    miner = asyncio.create_task(mine())
    try:
        yield
    finally:
        miner.cancel()
        await asyncio.gather(miner, return_exceptions=True)


async def pay_rounds(payer: ChainPayer, db: asyncpg.Connection, rounds: int) -> list[str]:
    """What `payouts serve` does round after round: the statuses of the batches each round finished."""
    statuses = []
    for _ in range(rounds):
        finished = await asyncio.wait_for(payer.run_once(db, min_far=Decimal(0)), 60)
        statuses += [f.status for f in finished]
    return statuses


async def assert_paid_exactly_once(db: asyncpg.Connection, d: FarDeployment) -> None:
    """One batch, paid by one transaction; every wallet holds what the ledger says it was paid, not twice that."""
    assert await db.fetchval("SELECT count(*) FROM far_payment_batches") == 1
    assert await db.fetchval("SELECT status FROM far_payment_batches") == "paid"
    paid = await paid_by_wallet(db)
    assert paid and {w: d.far_balance(w) for w in paid} == {w: to_base_units(a) for w, a in paid.items()}
    treasury_sent = int(chain_rpc(d.url, "eth_getTransactionCount", d.treasury.address, "latest"), 16)
    assert treasury_sent == 2  # its approval of the batch contract, and one payBatch


def proxied(d: FarDeployment, proxy: RpcProxy) -> FarDeployment:
    return FarDeployment(url=proxy.url, deployment=d.deployment, treasury=d.treasury, w3=d.w3)


async def test_a_receipt_answered_null_once_does_not_release_the_mined_batch_and_it_is_paid_once(
    payouts_db: asyncpg.Connection, payouts_ledger_dsn: str, far_deployment: FarDeployment
) -> None:
    await earn(payouts_db, 3)
    rule = NullOnce()
    with rpc_proxy(far_deployment.url, rule) as proxy:
        payer = await ChainPayer.connect(payout_settings(proxied(far_deployment, proxy), payouts_ledger_dsn))
        statuses = await pay_rounds(payer, payouts_db, rounds=2)

    assert rule.lied == 1
    assert statuses == ["paid"]  # recognised once the node told the truth; the second round had nothing to pay
    await assert_paid_exactly_once(payouts_db, far_deployment)


async def test_receipts_from_a_node_lagging_behind_the_nonce_never_release_the_mined_batch(
    payouts_db: asyncpg.Connection, payouts_ledger_dsn: str, far_deployment: FarDeployment
) -> None:
    await earn(payouts_db, 3)
    rule = LaggingReceipts(far_deployment.url, lag=2)
    with rpc_proxy(far_deployment.url, rule) as proxy:
        settings = payout_settings(proxied(far_deployment, proxy), payouts_ledger_dsn, payout_confirmations=3)
        payer = await ChainPayer.connect(settings)
        async with blocks_every(far_deployment.url, 0.3):
            statuses = await pay_rounds(payer, payouts_db, rounds=2)

    assert rule.hidden > 0  # the lagging node did answer null while the nonce had moved on
    assert statuses == ["paid"]
    await assert_paid_exactly_once(payouts_db, far_deployment)


async def test_a_reverted_transaction_fails_its_batch_only_once_the_revert_is_confirmation_deep(
    payouts_db: asyncpg.Connection, payouts_ledger_dsn: str, far_deployment: FarDeployment
) -> None:
    await earn(payouts_db, 2)
    payer = await ChainPayer.connect(payout_settings(far_deployment, payouts_ledger_dsn, payout_confirmations=3))
    batch = await claim_batch(payouts_db, "chain", Decimal(0))
    assert batch is not None
    await payer._sign_first(payouts_db, await batch_state(payouts_db, batch.id))
    chain_rpc(far_deployment.url, "evm_setAccountCode", far_deployment.deployment.batch_contract, "0x60006000fd")
    finishing = asyncio.create_task(_finish_on_own_connection(payer, payouts_ledger_dsn, batch.id))

    async def reverted_on_chain() -> bool:
        [tx] = await payouts_db.fetch("SELECT tx_hash FROM far_payout_transactions")
        return chain_rpc(far_deployment.url, "eth_getTransactionReceipt", tx["tx_hash"]) is not None

    await wait_until(reverted_on_chain, what="the batch transaction mined, reverted")
    await asyncio.sleep(0.5)  # many polls with one confirmation of the three
    assert (await batch_state(payouts_db, batch.id)).status == "submitted"
    assert (
        await payouts_db.fetchval("SELECT count(*) FROM far_session_contributions WHERE payment_batch_id IS NULL") == 0
    )
    chain_rpc(far_deployment.url, "evm_mine")
    chain_rpc(far_deployment.url, "evm_mine")
    settled = await asyncio.wait_for(finishing, 20)

    assert settled.status == "failed" and settled.reason is not None and "reverted in block" in settled.reason
    assert (
        await payouts_db.fetchval("SELECT count(*) FROM far_session_contributions WHERE payment_batch_id IS NOT NULL")
        == 0
    )


async def _finish_on_own_connection(payer: ChainPayer, dsn: str, batch_id: int) -> Any:
    connection = await asyncpg.connect(dsn)
    try:
        return await payer.finish_batch(connection, batch_id)
    finally:
        await connection.close()
