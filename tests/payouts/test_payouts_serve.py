"""`far-mesh payouts serve`: pays whatever becomes owed, round after round, and exports its metrics."""

import asyncio
from decimal import Decimal

import asyncpg

from accounting.batch_writer import write_batch
from devstack.harness.registrations import register_nodes
from mesh.ports import free_port
from payouts.payer import serve_chain_payouts
from tests.fixtures.chain import FarDeployment
from tests.fixtures.ledger import unique_id, usage_record, wait_until
from tests.payouts.helpers import payout_settings, scrape


async def test_serve_pays_what_is_owed_each_round_and_reports_it_in_its_metrics(
    payouts_db: asyncpg.Connection, payouts_ledger_dsn: str, far_deployment: FarDeployment
) -> None:
    port = free_port()
    settings = payout_settings(
        far_deployment,
        payouts_ledger_dsn,
        payout_interval_s=0.2,
        payout_min_far=Decimal("0.000001"),
        payout_metrics_port=port,
    )
    stop = asyncio.Event()
    serving = asyncio.create_task(serve_chain_payouts(settings, stop))

    async def all_paid() -> bool:
        unpaid = await payouts_db.fetchval("SELECT count(*) FROM far_session_contributions WHERE paid_at IS NULL")
        return unpaid == 0

    try:
        for round_ in range(2):  # earnings arriving while it runs are paid in a later round
            peers = await register_nodes(payouts_db, [unique_id("peer"), unique_id("peer")])
            await write_batch(payouts_db, [usage_record(unique_id("req"), {p: 1 + i for i, p in enumerate(peers)})])
            await wait_until(all_paid, what=f"round {round_} paid")
        await asyncio.sleep(0.5)  # the gauges are refreshed after each round
        samples = scrape(port)
    finally:
        stop.set()
        await asyncio.wait_for(serving, 10)

    assert await payouts_db.fetchval("SELECT count(*) FROM far_payment_batches WHERE status = 'paid'") == 2
    assert samples['far_payout_batches{status="paid"}'] == 2
    assert samples['far_payout_batches{status="failed"}'] == 0
    assert 0 < samples["far_payout_treasury_far"] < 1_000_000
    assert samples["far_payout_treasury_gas"] > 0
    assert samples["far_payout_far_paid_total"] > 0 and samples["far_payout_gas_used_total"] > 0
    assert samples["far_payout_confirmation_seconds_count"] >= 2
