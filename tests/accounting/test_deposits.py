"""The deposit watcher on the session's ganache and ledger: a deposit is credited once, once deep; restarts,
re-scans and reorganisations (ganache's evm_snapshot / evm_revert) never credit one twice or one that vanished.

Each test deploys contracts of its own (`far_deployment`), so its watcher's checkpoints and deposits are its
own; its buyers are fresh wallets, so their balances are theirs alone.
"""

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from eth_account.signers.local import LocalAccount

from accounting.deposits import DepositWatcher
from accounting.journal import buyer_balance
from chain.deposits import make_deposit
from chain.units import to_base_units
from tests.fixtures.chain import FarDeployment, chain_rpc
from tests.fixtures.deposits import funded_buyer, watcher_for


@pytest.fixture
async def ledger(migrated_postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(migrated_postgres_dsn)
    yield connection
    await connection.close()


def deposit(d: FarDeployment, buyer: LocalAccount, far: str) -> int:
    """Deposit `far` from `buyer`; the block it landed in."""
    units = to_base_units(Decimal(far))
    receipt = make_deposit(d.w3, buyer, d.deployment.token, d.deployment.deposit_contract, units)
    return int(receipt["blockNumber"])


def mine(d: FarDeployment, blocks: int) -> None:
    for _ in range(blocks):
        chain_rpc(d.url, "evm_mine")


async def credited(watcher: DepositWatcher, ledger: asyncpg.Connection) -> list[tuple[str, int]]:
    """(wallet, units) of every deposit one catch-up credited."""
    return [(c.wallet, c.units) for result in await watcher.catch_up(ledger) for c in result.credited]


async def test_a_deposit_is_credited_once_it_is_confirmations_deep_and_not_before(
    far_deployment: FarDeployment, ledger: asyncpg.Connection
) -> None:
    d = far_deployment
    buyer = funded_buyer(d)
    watcher = await watcher_for(d, confirmations=3)
    block = deposit(d, buyer, "12.5")

    assert await credited(watcher, ledger) == []  # 1 deep
    mine(d, 1)
    assert await credited(watcher, ledger) == []  # 2 deep
    assert await buyer_balance(ledger, buyer.address) == 0
    mine(d, 1)
    assert await credited(watcher, ledger) == [(buyer.address, to_base_units(Decimal("12.5")))]  # 3 deep
    assert await buyer_balance(ledger, buyer.address) == Decimal("12.5")
    mine(d, 5)
    assert await credited(watcher, ledger) == []
    assert await buyer_balance(ledger, buyer.address) == Decimal("12.5")
    row = await ledger.fetchrow(
        "SELECT block_number, amount_far, wallet FROM far_chain_deposits WHERE contract = $1",
        d.deployment.deposit_contract,
    )
    assert (row["block_number"], row["amount_far"], row["wallet"]) == (block, Decimal("12.5"), buyer.address)


async def test_a_restarted_watcher_and_a_rescan_from_the_start_credit_nothing_twice(
    far_deployment: FarDeployment, ledger: asyncpg.Connection
) -> None:
    d = far_deployment
    first, second = funded_buyer(d), funded_buyer(d)
    start = d.w3.eth.block_number + 1
    deposit(d, first, "1")
    deposit(d, second, "2")
    deposit(d, first, "0.25")
    mine(d, 2)
    watcher = await watcher_for(d, confirmations=2, start_block=start)
    watcher.max_blocks = 2  # several ranges, several checkpoints
    assert sorted(u for _, u in await credited(watcher, ledger)) == [
        to_base_units(Decimal(x)) for x in ("0.25", "1", "2")
    ]

    restarted = await watcher_for(d, confirmations=2, start_block=start)  # a new process: the ledger's checkpoint
    assert await credited(restarted, ledger) == []
    await ledger.execute("DELETE FROM far_deposit_scans WHERE contract = $1", d.deployment.deposit_contract)
    rescan = await watcher_for(d, confirmations=2, start_block=start)  # the checkpoints lost: every log again
    results = await rescan.catch_up(ledger)
    assert [c.outcome for r in results for c in r.credits] == ["duplicate"] * 3
    assert (await buyer_balance(ledger, first.address), await buyer_balance(ledger, second.address)) == (
        Decimal("1.25"),
        Decimal(2),
    )


async def test_a_reorganisation_that_removes_an_unconfirmed_deposit_credits_it_never_and_the_redeposit_once(
    far_deployment: FarDeployment, ledger: asyncpg.Connection
) -> None:
    d = far_deployment
    buyer = funded_buyer(d)
    watcher = await watcher_for(d, confirmations=3)
    mine(d, 4)
    assert await credited(watcher, ledger) == []  # a checkpoint below the fork
    snapshot = chain_rpc(d.url, "evm_snapshot")

    deposit(d, buyer, "5")  # approve, deposit: 2 blocks
    mine(d, 1)
    assert await credited(watcher, ledger) == []  # 2 deep: not credited, but the approval's block is scanned
    orphaned_checkpoint = await ledger.fetchval(
        "SELECT max(block_number) FROM far_deposit_scans WHERE contract = $1", d.deployment.deposit_contract
    )

    assert chain_rpc(d.url, "evm_revert", snapshot) is True  # the deposit is gone, and so is that block
    assert d.far_balance(buyer.address) == to_base_units(Decimal(100))
    deposit(d, buyer, "7")
    mine(d, 3)
    results = await watcher.catch_up(ledger)

    assert results[0].rewound_from == orphaned_checkpoint
    assert [(c.wallet, c.units) for r in results for c in r.credited] == [(buyer.address, to_base_units(Decimal(7)))]
    assert await buyer_balance(ledger, buyer.address) == 7
    assert await credited(watcher, ledger) == []


async def test_a_deposit_moved_by_a_reorganisation_deeper_than_the_confirmations_is_not_credited_again(
    ledger: asyncpg.Connection,
) -> None:
    """Credited once deep, then found at another block (so at another log index): the ledger says 'moved'."""
    from eth_account import Account

    wallet, tx = Account.create().address, "0x" + "ab" * 32
    genesis, contract = "0x" + "01" * 32, Account.create().address
    credit = "SELECT far_credit_deposit(31337, $1, $2, $3, $4, $5, $6, $7, $8)"
    units = to_base_units(Decimal(3))
    assert await ledger.fetchval(credit, genesis, contract, tx, 4, 10, "0x" + "aa" * 32, wallet, units) == "credited"
    assert await ledger.fetchval(credit, genesis, contract, tx, 4, 10, "0x" + "aa" * 32, wallet, units) == "duplicate"
    assert await ledger.fetchval(credit, genesis, contract, tx, 0, 11, "0x" + "bb" * 32, wallet, units) == "moved"
    assert await buyer_balance(ledger, wallet) == 3


async def test_every_journal_entry_balances_and_each_buyers_balance_is_the_sum_of_its_deposits(
    far_deployment: FarDeployment, ledger: asyncpg.Connection
) -> None:
    d = far_deployment
    buyers = [funded_buyer(d) for _ in range(2)]
    watcher = await watcher_for(d, confirmations=1)
    for buyer, amounts in zip(buyers, (("1", "2.000000000000000001"), ("40",)), strict=True):
        for far in amounts:
            deposit(d, buyer, far)
    await watcher.catch_up(ledger)

    assert (
        await ledger.fetch(
            "SELECT entry_id FROM far_journal_lines GROUP BY entry_id HAVING sum(amount_far) <> 0 OR count(*) < 2"
        )
        == []
    )
    for buyer in buyers:
        deposited = await ledger.fetchval(
            "SELECT sum(amount_far) FROM far_chain_deposits WHERE wallet = $1", buyer.address
        )
        assert await buyer_balance(ledger, buyer.address) == deposited
    assert [await buyer_balance(ledger, b.address) for b in buyers] == [Decimal("3.000000000000000001"), Decimal(40)]
    treasury_side = await ledger.fetchval(
        "SELECT sum(l.amount_far) FROM far_journal_lines l JOIN far_chain_deposits c USING (entry_id) "
        "WHERE c.contract = $1 AND l.account = 'treasury:chain'",
        d.deployment.deposit_contract,
    )
    assert treasury_side == Decimal("43.000000000000000001")


def signed_deposit(d: FarDeployment, buyer: LocalAccount, far: str) -> list[bytes]:
    """The raw approve and deposit transactions of a deposit, signed and not sent (to send them again later)."""
    from chain.artifacts import load_artifact

    units, nonce = to_base_units(Decimal(far)), d.w3.eth.get_transaction_count(buyer.address, "pending")
    token = d.w3.eth.contract(abi=load_artifact("FarToken").abi)
    contract = d.w3.eth.contract(abi=load_artifact("FarDeposit").abi)
    calls = [
        (d.deployment.token, token.encode_abi("approve", [d.deployment.deposit_contract, units])),
        (d.deployment.deposit_contract, contract.encode_abi("deposit", [units])),
    ]
    fee = 2 * int(d.w3.eth.get_block("latest").get("baseFeePerGas", 0)) + 10**9
    raw = []
    for i, (to, data) in enumerate(calls):
        tx: dict[str, Any] = {
            "to": to,
            "data": data,
            "nonce": nonce + i,
            "chainId": d.w3.eth.chain_id,
            "gas": 200_000,
            "maxFeePerGas": fee,
            "maxPriorityFeePerGas": 10**9,
        }
        raw.append(bytes(buyer.sign_transaction(tx).raw_transaction))
    return raw


def send_in_one_block(d: FarDeployment, raw_txs: list[bytes]) -> None:
    chain_rpc(d.url, "miner_stop")
    try:
        for raw in raw_txs:
            d.w3.eth.send_raw_transaction(raw)
        chain_rpc(d.url, "evm_mine")
    finally:
        chain_rpc(d.url, "miner_start")


async def test_a_credited_deposit_that_a_deeper_reorganisation_moves_to_another_log_index_is_not_credited_again(
    far_deployment: FarDeployment, ledger: asyncpg.Connection
) -> None:
    """With 1 confirmation, a revert is a reorganisation deeper than the confirmations: the watcher sees its
    checkpoint vanish, scans again, and the same transaction, mined again at another log index, is 'moved'."""
    d = far_deployment
    buyer, other = funded_buyer(d), funded_buyer(d)
    watcher = await watcher_for(d, confirmations=1)
    mine(d, 1)
    assert await credited(watcher, ledger) == []
    snapshot = chain_rpc(d.url, "evm_snapshot")
    raw = signed_deposit(d, buyer, "4")
    send_in_one_block(d, raw[:1])
    send_in_one_block(d, raw[1:])
    assert await credited(watcher, ledger) == [(buyer.address, to_base_units(Decimal(4)))]

    assert chain_rpc(d.url, "evm_revert", snapshot) is True
    send_in_one_block(d, signed_deposit(d, other, "9") + raw)  # the same transactions, behind another deposit
    results = await watcher.catch_up(ledger)

    assert results[0].rewound_from is not None
    outcomes = {(c.deposit.wallet, c.outcome) for r in results for c in r.credits}
    assert outcomes == {(other.address, "credited"), (buyer.address, "moved")}
    assert [await buyer_balance(ledger, w) for w in (buyer.address, other.address)] == [Decimal(4), Decimal(9)]


async def test_watch_credits_deposits_as_they_deepen_and_reports_the_last_block_until_stopped(
    far_deployment: FarDeployment, migrated_postgres_dsn: str, ledger: asyncpg.Connection
) -> None:
    from prometheus_client import REGISTRY

    from accounting.chain_settings import DepositSettings
    from accounting.deposits import watch_deposits
    from tests.fixtures.ledger import wait_until

    d = far_deployment
    buyer = funded_buyer(d)
    settings = DepositSettings.from_env(
        postgres_url=migrated_postgres_dsn,
        chain_rpc_url=d.url,
        deposit_contract_address=d.deployment.deposit_contract,
        deposit_confirmations=2,
        deposit_start_block=d.w3.eth.block_number + 1,
        deposit_poll_s=0.05,
        deposit_metrics_port=0,
    )
    stop = asyncio.Event()
    watching = asyncio.create_task(watch_deposits(settings, stop))
    try:
        block = await asyncio.to_thread(deposit, d, buyer, "6")
        await asyncio.sleep(0.3)
        assert await buyer_balance(ledger, buyer.address) == 0  # 1 deep
        await asyncio.to_thread(mine, d, 1)

        async def credited_once() -> bool:
            return await buyer_balance(ledger, buyer.address) == 6

        await wait_until(credited_once, timeout_s=10, what="the deposit credited")
        assert (REGISTRY.get_sample_value("far_deposit_last_block") or 0) >= block
    finally:
        stop.set()
        await asyncio.wait_for(watching, timeout=10)
