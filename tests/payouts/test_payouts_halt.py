"""`payouts serve` never loops on an error that does not pass by itself: it halts once, says why, and raises
`far_payout_halted` for the alert, instead of failing the same way every PAYOUT_INTERVAL_S forever."""

import asyncio
import logging
from decimal import Decimal

import asyncpg
import pytest

from mesh.ports import free_port
from payouts.payer import serve_chain_payouts
from tests.fixtures.chain import FarDeployment
from tests.payouts.helpers import earn, payout_settings, scrape

# The ledger refuses every signed batch the way it refused them after a chain reset (issue #25): the same
# constraint, every time it is asked. The sequence counts the attempts (nextval survives the rollback).
REFUSE_EVERY_SIGNATURE = """
CREATE SEQUENCE test_signature_attempts;
CREATE FUNCTION test_refuse_signature() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM nextval('test_signature_attempts');
    RAISE unique_violation USING MESSAGE =
        'duplicate key value violates unique constraint "far_payment_batches_one_batch_per_nonce"';
END $$;
CREATE TRIGGER test_refuse_signature BEFORE INSERT ON far_payout_transactions
    FOR EACH ROW EXECUTE FUNCTION test_refuse_signature();
"""
ALLOW_SIGNATURES = """
DROP TRIGGER test_refuse_signature ON far_payout_transactions;
DROP FUNCTION test_refuse_signature();
DROP SEQUENCE test_signature_attempts;
"""


async def test_a_constraint_violation_halts_serve_once_with_a_clear_error_and_the_metric_instead_of_looping(
    payouts_db: asyncpg.Connection,
    payouts_ledger_dsn: str,
    far_deployment: FarDeployment,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await earn(payouts_db, 2)
    port = free_port()
    settings = payout_settings(
        far_deployment,
        payouts_ledger_dsn,
        payout_interval_s=0.1,
        payout_min_far=Decimal("0.000001"),
        payout_metrics_port=port,
    )
    await payouts_db.execute(REFUSE_EVERY_SIGNATURE)
    stop = asyncio.Event()
    try:
        with caplog.at_level(logging.WARNING, logger="payouts.payer"):
            serving = asyncio.create_task(serve_chain_payouts(settings, stop))
            await asyncio.sleep(3)  # thirty rounds' worth
            samples = scrape(port)
            attempts = await payouts_db.fetchval("SELECT last_value FROM test_signature_attempts")
            still_serving = not serving.done()
            stop.set()
            await asyncio.wait_for(serving, 10)
    finally:
        stop.set()
        await payouts_db.execute(ALLOW_SIGNATURES)

    assert attempts == 1  # tried once, not every round
    assert samples["far_payout_halted"] == 1
    assert still_serving  # /metrics stays up for the alert until it is stopped
    [halted] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "payouts halted" in halted.getMessage() and "far_payment_batches_one_batch_per_nonce" in halted.getMessage()
    assert not [r for r in caplog.records if "payout round skipped" in r.getMessage()]
    # nothing was signed, so nothing can have moved: the claimed batch waits for the restart after the fix
    assert await payouts_db.fetchval("SELECT status FROM far_payment_batches") == "claimed"
    assert await payouts_db.fetchval("SELECT count(*) FROM far_payout_transactions") == 0
