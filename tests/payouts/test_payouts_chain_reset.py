"""A chain node reset under a ledger that outlives it (`make run`, stop, `make run` with a fresh development chain):
the new chain is another chain, so its nonces never collide with the batches paid on the old one, and the
batches still in flight there are left alone instead of being followed on a chain that cannot settle them."""

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from chain.deploy import deploy
from chain.identity import ChainChanged
from chain.node import LocalChain, dev_account
from chain.units import to_base_units
from mesh.ports import free_port
from payouts import metrics
from payouts.batches import batch_state, claim_batch
from payouts.payer import ChainPayer
from tests.fixtures.chain import TREASURY_FAR, TREASURY_GAS_WEI, FarDeployment, fund_gas
from tests.payouts.helpers import earn, paid_by_wallet, payout_settings


@dataclass
class ResettableNode:
    """A development node at one URL that can be reset: stopped, and started again with a fresh chain on which
    the same deployment lands at the same addresses (same deployer, same nonces) for the same treasury."""

    port: int
    log_dir: Path
    treasury: LocalAccount
    node: LocalChain | None = None

    def start(self) -> FarDeployment:
        self.node = LocalChain(self.port, self.log_dir / f"ganache-{self.port}.log")
        self.node.start()
        w3 = Web3(Web3.HTTPProvider(self.node.url))
        fund_gas(w3, self.treasury.address, TREASURY_GAS_WEI)
        deployment = deploy(w3, dev_account(0), self.treasury, supply_far=TREASURY_FAR)
        return FarDeployment(url=self.node.url, deployment=deployment, treasury=self.treasury, w3=w3)

    def reset(self) -> FarDeployment:
        self.stop()
        return self.start()

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()
            self.node = None


@pytest.fixture
def resettable(tmp_path: Path) -> Iterator[ResettableNode]:
    node = ResettableNode(free_port(), tmp_path, Account.create())
    yield node
    node.stop()


async def test_after_the_chain_node_is_reset_new_batches_are_paid_on_the_new_chain_without_a_nonce_collision(
    payouts_db: asyncpg.Connection, payouts_ledger_dsn: str, resettable: ResettableNode
) -> None:
    old = resettable.start()
    await earn(payouts_db, 3)
    before = await ChainPayer.connect(payout_settings(old, payouts_ledger_dsn))
    [first] = await asyncio.wait_for(before.run_once(payouts_db, min_far=Decimal(0)), 30)
    assert first.status == "paid"

    new = resettable.reset()  # same URL, same contract addresses, the treasury's nonce back where it started
    assert new.deployment.token == old.deployment.token
    newcomers = await earn(payouts_db, 2)
    after = await ChainPayer.connect(payout_settings(new, payouts_ledger_dsn))
    [second] = await asyncio.wait_for(after.run_once(payouts_db, min_far=Decimal(0)), 30)

    assert second.status == "paid", second.reason
    batches = await payouts_db.fetch("SELECT nonce, chain_id, chain_genesis FROM far_payment_batches ORDER BY id")
    assert [b["nonce"] for b in batches] == [1, 1]  # the same nonce (after the treasury's approval), twice...
    assert batches[0]["chain_genesis"] != batches[1]["chain_genesis"]  # ...on two chains
    assert batches[1]["chain_genesis"] == after.chain.genesis_hash
    paid = await paid_by_wallet(payouts_db)
    new_wallets = {w for w in paid if w in {await _registered(payouts_db, p) for p in newcomers}}
    assert len(new_wallets) == 2
    assert {w: new.far_balance(w) for w in new_wallets} == {w: to_base_units(paid[w]) for w in new_wallets}
    assert await payouts_db.fetchval("SELECT count(*) FROM far_session_contributions WHERE paid_at IS NULL") == 0


async def test_a_batch_in_flight_on_the_old_chain_is_left_for_an_operator_while_the_new_chain_pays_the_rest(
    payouts_db: asyncpg.Connection, payouts_ledger_dsn: str, resettable: ResettableNode
) -> None:
    old = resettable.start()
    await earn(payouts_db, 2)
    before = await ChainPayer.connect(payout_settings(old, payouts_ledger_dsn))
    stranded = await claim_batch(payouts_db, "chain", Decimal(0))
    assert stranded is not None
    await before._sign_first(payouts_db, await batch_state(payouts_db, stranded.id))  # signed, never sent

    new = resettable.reset()
    await earn(payouts_db, 2)
    after = await ChainPayer.connect(payout_settings(new, payouts_ledger_dsn))
    [settled] = await asyncio.wait_for(after.run_once(payouts_db, min_far=Decimal(0)), 30)

    assert settled.batch_id != stranded.id and settled.status == "paid"
    assert (await batch_state(payouts_db, stranded.id)).status == "signed"  # not sent to a chain it is not for
    assert metrics.PAYOUT_BATCHES_ELSEWHERE._value.get() == 1
    held = await payouts_db.fetchval(
        "SELECT count(*) FROM far_session_contributions WHERE payment_batch_id = $1 AND paid_at IS NULL", stranded.id
    )
    assert held == len(stranded.contribution_ids)  # still claimed: only the old chain could say they are unpaid
    assert all(new.far_balance(p.wallet) == 0 for p in stranded.payments)


async def test_a_node_that_starts_serving_another_chain_under_a_running_payer_stops_it_before_it_signs(
    payouts_db: asyncpg.Connection, payouts_ledger_dsn: str, resettable: ResettableNode
) -> None:
    old = resettable.start()
    payer = await ChainPayer.connect(payout_settings(old, payouts_ledger_dsn))
    resettable.reset()
    await earn(payouts_db, 1)

    with pytest.raises(ChainChanged, match="now serves another chain.*restart the payer"):
        await payer.run_once(payouts_db, min_far=Decimal(0))
    assert await payouts_db.fetchval("SELECT count(*) FROM far_payment_batches") == 0  # nothing claimed


def test_two_development_nodes_started_in_the_same_second_are_two_chains(tmp_path: Path) -> None:
    """ganache's genesis depends only on its options and its start second, unless each start makes it unique."""
    nodes = [LocalChain(free_port(), tmp_path / f"ganache-{i}.log") for i in range(2)]
    with ThreadPoolExecutor(2) as pool:  # side by side: their genesis blocks are made in the same second
        list(pool.map(LocalChain.start, nodes))
    try:
        genesis = [Web3(Web3.HTTPProvider(n.url)).eth.get_block(0) for n in nodes]
    finally:
        for node in nodes:
            node.stop()
    assert genesis[0]["hash"] != genesis[1]["hash"]


async def _registered(db: asyncpg.Connection, peer: str) -> str:
    return str(await db.fetchval("SELECT far_registered_wallet($1)", peer))
