"""Payouts pay a node's registered wallet, never the wallet it announces (schema/0009, `PAYEE_WALLET`).

Anyone can announce any wallet in the DHT. So the rows of a peer that is not registered are held: no batch
claims them, and they become payable, to the registered wallet, as soon as the peer registers. A batch pays
the recipients it recorded when it was claimed: moving a node to another wallet afterwards redirects only what
was not claimed yet, and a claim and a transfer of the same node never overlap. The money is checked where it
lands, on a real chain (ganache).
"""

import asyncio
from decimal import Decimal

import asyncpg

from accounting.batch_writer import write_batch
from chain.units import to_base_units
from devstack.harness.registrations import register_nodes, transfer_node
from payouts.batches import claim_batch, load_batch
from payouts.payer import ChainPayer
from protocol.usage import UsageRecord
from tests.fixtures.chain import FarDeployment
from tests.fixtures.ledger import unique_id, usage_record, wallet_for
from tests.payouts.helpers import payout_settings


def announcing(record: UsageRecord, wallets: dict[str, str]) -> UsageRecord:
    """`record` with the nodes named in `wallets` announcing those wallets instead of their own."""
    contributions = tuple(
        c.model_copy(update={"wallet": wallets.get(c.node_id, c.wallet)}) for c in record.contributions
    )
    return record.model_copy(update={"contributions": contributions})


async def owed_to(db: asyncpg.Connection, node: str) -> Decimal:
    return Decimal(await db.fetchval("SELECT sum(payment_far) FROM far_session_contributions WHERE node_id = $1", node))


async def test_an_unregistered_peers_earnings_are_held_and_paid_to_its_wallet_once_it_registers(
    payouts_db: asyncpg.Connection, payouts_ledger_dsn: str, far_deployment: FarDeployment
) -> None:
    registered, newcomer = unique_id("peer"), unique_id("peer")
    await register_nodes(payouts_db, [registered])
    await write_batch(payouts_db, [usage_record(unique_id("req"), {registered: 2, newcomer: 1}) for _ in range(3)])
    payer = await ChainPayer.connect(payout_settings(far_deployment, payouts_ledger_dsn))

    [first] = await payer.run_once(payouts_db, min_far=Decimal(0))

    assert first.status == "paid"
    assert far_deployment.far_balance(wallet_for(registered)) == to_base_units(await owed_to(payouts_db, registered))
    assert far_deployment.far_balance(wallet_for(newcomer)) == 0  # the wallet it announces is only a hint
    held = await payouts_db.fetchrow(
        "SELECT announced_wallets, contributions, unclaimed_far FROM far_unclaimed_earnings WHERE node_id = $1",
        newcomer,
    )
    assert (held["announced_wallets"], held["contributions"]) == ([wallet_for(newcomer)], 3)
    assert held["unclaimed_far"] == await owed_to(payouts_db, newcomer)
    summary = await payouts_db.fetchrow(
        "SELECT unpaid_far, in_payment_far, paid_far FROM node_earnings_summary WHERE node_id = $1", newcomer
    )
    assert (summary["unpaid_far"], summary["in_payment_far"], summary["paid_far"]) == (held["unclaimed_far"], 0, 0)
    assert await payer.run_once(payouts_db, min_far=Decimal(0)) == []  # held rows never make a batch

    await register_nodes(payouts_db, [newcomer])
    [second] = await payer.run_once(payouts_db, min_far=Decimal(0))

    assert second.status == "paid"
    assert far_deployment.far_balance(wallet_for(newcomer)) == to_base_units(held["unclaimed_far"])
    assert await payouts_db.fetchval("SELECT count(*) FROM far_unclaimed_earnings WHERE node_id = $1", newcomer) == 0
    assert await payouts_db.fetchval("SELECT count(*) FROM far_session_contributions WHERE paid_at IS NULL") == 0


async def test_a_peer_announcing_someone_elses_wallet_is_paid_to_its_registered_owner_only(
    payouts_db: asyncpg.Connection, payouts_ledger_dsn: str, far_deployment: FarDeployment
) -> None:
    """Two peers announce Bob's wallet. One is registered by its real operator, Carol, who is paid; the other is
    registered by nobody, so it is held. Bob, who registered neither, receives nothing."""
    carols, squatter = unique_id("peer"), unique_id("peer")
    bob, carol = unique_id("bob"), unique_id("carol")
    await register_nodes(payouts_db, [carols], owner=carol)
    records = [
        announcing(
            usage_record(unique_id("req"), {carols: 3, squatter: 1}),
            {carols: wallet_for(bob), squatter: wallet_for(bob)},
        )
        for _ in range(2)
    ]
    await write_batch(payouts_db, records)
    payer = await ChainPayer.connect(payout_settings(far_deployment, payouts_ledger_dsn))

    [settled] = await payer.run_once(payouts_db, min_far=Decimal(0))

    assert settled.status == "paid"
    batch = await load_batch(payouts_db, settled.batch_id)
    assert [(p.wallet, p.amount_far) for p in batch.payments] == [
        (wallet_for(carol), await owed_to(payouts_db, carols))
    ]
    assert far_deployment.far_balance(wallet_for(carol)) == to_base_units(await owed_to(payouts_db, carols))
    assert far_deployment.far_balance(wallet_for(bob)) == 0
    held = await payouts_db.fetchval("SELECT unclaimed_far FROM far_unclaimed_earnings WHERE node_id = $1", squatter)
    assert held == await owed_to(payouts_db, squatter)


async def test_a_transfer_while_a_batch_is_in_flight_cannot_redirect_what_it_claimed(
    payouts_db: asyncpg.Connection, payouts_ledger_dsn: str, far_deployment: FarDeployment
) -> None:
    node, alice, bob = unique_id("peer"), unique_id("alice"), unique_id("bob")
    await register_nodes(payouts_db, [node], owner=alice)
    await write_batch(payouts_db, [usage_record(unique_id("req"), {node: 1}) for _ in range(2)])
    claimed = await claim_batch(payouts_db, "chain", Decimal(0))  # in flight: claimed, nothing signed yet
    assert claimed is not None and [p.wallet for p in claimed.payments] == [wallet_for(alice)]

    await transfer_node(payouts_db, node, alice, bob)  # Alice consents to move the node to Bob
    after = await write_batch(payouts_db, [usage_record(unique_id("req"), {node: 1})])
    assert not after.rejected
    payer = await ChainPayer.connect(payout_settings(far_deployment, payouts_ledger_dsn))
    settled = await payer.run_once(payouts_db, min_far=Decimal(0))  # settles the claimed batch, then claims anew

    assert [s.status for s in settled] == ["paid", "paid"]
    assert far_deployment.far_balance(wallet_for(alice)) == to_base_units(claimed.total_far)
    later = await payouts_db.fetchval(
        "SELECT sum(payment_far) FROM far_session_contributions WHERE node_id = $1 AND payment_batch_id <> $2",
        node,
        claimed.id,
    )
    assert far_deployment.far_balance(wallet_for(bob)) == to_base_units(later) > 0
    recipients = await payouts_db.fetch("SELECT batch_id, wallet FROM far_payout_payments ORDER BY batch_id")
    assert [r["wallet"] for r in recipients] == [wallet_for(alice), wallet_for(bob)]


async def test_a_batch_claimed_before_recipients_were_recorded_still_pays_the_wallets_it_was_claimed_for(
    payouts_db: asyncpg.Connection,
) -> None:
    """Batches from before far_payout_payments were claimed paying the announced wallet; a registration made
    since must not redirect them."""
    node, operator = unique_id("peer"), unique_id("operator")
    await write_batch(payouts_db, [usage_record(unique_id("req"), {node: 1}) for _ in range(2)])
    await register_nodes(payouts_db, [node], owner=operator)
    claimed = await claim_batch(payouts_db, "file", Decimal(0))
    assert claimed is not None and [p.wallet for p in claimed.payments] == [wallet_for(operator)]
    await payouts_db.execute("DELETE FROM far_payout_payments WHERE batch_id = $1", claimed.id)  # as old batches

    assert [(p.wallet, p.amount_far) for p in (await load_batch(payouts_db, claimed.id)).payments] == [
        (wallet_for(node), claimed.total_far)
    ]


async def test_a_transfer_waits_for_an_open_claim_which_keeps_paying_the_owner_it_recorded(
    payouts_db: asyncpg.Connection, payouts_ledger_dsn: str
) -> None:
    node, alice, bob = unique_id("peer"), unique_id("alice"), unique_id("bob")
    await register_nodes(payouts_db, [node], owner=alice)
    await write_batch(payouts_db, [usage_record(unique_id("req"), {node: 1})])
    other = await asyncpg.connect(payouts_ledger_dsn)
    try:
        async with payouts_db.transaction():  # the claim is still open
            claimed = await claim_batch(payouts_db, "file", Decimal(0))
            transfer = asyncio.create_task(transfer_node(other, node, alice, bob))
            await asyncio.sleep(0.5)
            assert not transfer.done()  # it waits on the registration the claim holds
        assert await asyncio.wait_for(transfer, 10) == wallet_for(bob)
    finally:
        await other.close()
    assert claimed is not None
    assert [p.wallet for p in (await load_batch(payouts_db, claimed.id)).payments] == [wallet_for(alice)]


async def test_the_rows_of_a_node_being_transferred_wait_for_a_later_claim_which_pays_its_new_owner(
    payouts_db: asyncpg.Connection, payouts_ledger_dsn: str
) -> None:
    moving, staying, alice, bob = unique_id("peer"), unique_id("peer"), unique_id("alice"), unique_id("bob")
    await register_nodes(payouts_db, [moving], owner=alice)
    await register_nodes(payouts_db, [staying])
    await write_batch(payouts_db, [usage_record(unique_id("req"), {moving: 1, staying: 1})])
    other = await asyncpg.connect(payouts_ledger_dsn)
    try:
        async with other.transaction():  # the transfer has locked the registration and not committed yet
            await transfer_node(other, moving, alice, bob)
            during = await claim_batch(payouts_db, "file", Decimal(0))
        after = await claim_batch(payouts_db, "file", Decimal(0))
    finally:
        await other.close()
    assert during is not None and [p.wallet for p in during.payments] == [wallet_for(staying)]
    assert after is not None and [p.wallet for p in after.payments] == [wallet_for(bob)]
