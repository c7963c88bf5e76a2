"""Providers of under-served blocks earn a premium (docs/pricing.md): with the per-block premiums fixed on a job,
the node serving thin blocks takes more of the session's pool than a node doing the same work on well-served
ones; each contribution records the weighed work it was paid on; the record travels the usage stream with it;
the ledger stores it, the provider's earnings and payable show the premium, and the books balance to the last
decimal (payments + fee + remainder = cost; the charge's journal lines sum to zero)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg

from accounting.batch_writer import write_batch
from mesh.session import ServedSpan
from protocol.money import far_sum, session_cost
from protocol.pricing import PricingPolicy, block_premium_bps
from protocol.usage import USAGE_FIELD, UsageRecord
from tests.fixtures.ledger import unique_id, wallet_for
from workers.attribution import Attribution

PROMPT_PRICE, PRICE, FEE_BPS = Decimal("0.000000000000000007"), Decimal("0.012345678901234567"), 333
# Blocks 2-3 are left with one server of the two wanted: each weighs 1.5 at the default premium.
PREMIUMS = block_premium_bps([2, 2, 1, 1], PricingPolicy())


def served(thin: str, served_well: str, premiums: tuple[int, ...]) -> UsageRecord:
    """A session of 777 prompt tokens and 13 generated over two nodes doing equal work, one on the thin blocks."""
    attribution = Attribution()
    route = [ServedSpan(served_well, 0, 2, f"node {served_well}"), ServedSpan(thin, 2, 4, f"node {thin}")]
    attribution.record_step(route, 777)
    for _ in range(12):
        attribution.record_step(route, 1)
    cost = session_cost(777, 13, PROMPT_PRICE, PRICE)
    wallets = {f"node {served_well}": wallet_for(served_well), f"node {thin}": wallet_for(thin)}
    contributions, fee, remainder = attribution.settle(cost, FEE_BPS, lambda name: wallets.get(name or ""), premiums)
    started = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    return UsageRecord(
        request_id=unique_id("req"),
        model_id="test/model",
        status="completed",
        finish_reason="length",
        prompt_tokens=777,
        tokens_generated=13,
        price_per_token_far=PRICE,
        prompt_price_per_token_far=PROMPT_PRICE,
        total_cost_far=cost,
        platform_fee_bps=FEE_BPS,
        platform_fee_far=fee,
        platform_remainder_far=remainder,
        started_at=started,
        finished_at=started + timedelta(seconds=1),
        worker_id="worker-test",
        contributions=contributions,
    )


def test_the_default_premium_weighs_a_block_by_its_shortfall() -> None:
    assert PREMIUMS == (10_000, 10_000, 15_000, 15_000)
    assert block_premium_bps([0, 3], PricingPolicy(provider_premium=Decimal("0.5"))) == (15_000, 10_000)


def test_the_node_on_thin_blocks_earns_its_premium_and_the_session_still_balances() -> None:
    thin, well = unique_id("peer"), unique_id("peer")
    record = served(thin, well, PREMIUMS)
    paid = {c.node_id: c for c in record.contributions}
    assert paid[thin].work_units == paid[well].work_units == 2 * 789
    assert (paid[well].paid_work_units, paid[thin].paid_work_units) == (2 * 789 * 10_000, 2 * 789 * 15_000)
    # the pool after the fee, 3 to 2: the thin blocks' provider earns 1.5 times as much for the same work
    pool = record.total_cost_far - record.platform_fee_far
    assert paid[thin].payment_far == (pool * 3 / 5).quantize(Decimal("1e-18"), rounding="ROUND_DOWN")
    assert paid[well].payment_far == (pool * 2 / 5).quantize(Decimal("1e-18"), rounding="ROUND_DOWN")
    total = far_sum([paid[thin].payment_far, paid[well].payment_far, record.platform_fee_far])
    assert far_sum([total, record.platform_remainder_far]) == record.total_cost_far

    at_par = served(thin, well, ())
    equal = {c.node_id: c for c in at_par.contributions}
    assert equal[thin].payment_far == equal[well].payment_far and equal[thin].paid_work_units is None
    # the premium moves money between providers, never out of the buyer's cost or the platform's fee
    assert at_par.platform_fee_far == record.platform_fee_far


def test_the_weighed_work_travels_the_usage_stream_and_is_left_out_without_premiums() -> None:
    thin, well = unique_id("peer"), unique_id("peer")
    record = served(thin, well, PREMIUMS)
    assert UsageRecord.from_stream_fields(record.to_stream_fields()) == record
    assert "paid_work_units" not in served(thin, well, ()).to_stream_fields()[USAGE_FIELD]


async def test_the_ledger_stores_the_premium_the_provider_earns_it_and_the_books_balance(
    migrated_postgres_dsn: str,
) -> None:
    thin, well = unique_id("peer"), unique_id("peer")
    record = served(thin, well, PREMIUMS)
    connection = await asyncpg.connect(migrated_postgres_dsn)
    try:
        outcome = await write_batch(connection, [record])  # the balance trigger (schema/0019) passed
        assert (outcome.sessions_written, outcome.contributions_written, outcome.rejected) == (1, 2, {})
        rows = {
            r["node_id"]: r
            for r in await connection.fetch(
                "SELECT node_id, work_units, paid_work_units, payment_far FROM far_session_contributions "
                "WHERE node_id = ANY($1)",
                [thin, well],
            )
        }
        assert rows[thin]["paid_work_units"] == 2 * 789 * 15_000 and rows[well]["paid_work_units"] == 2 * 789 * 10_000
        assert rows[thin]["payment_far"] > rows[well]["payment_far"]
        # reproducible from the row alone: (cost - fee) x paid / sum(paid), rounded down
        pool = record.total_cost_far - record.platform_fee_far
        total_paid = rows[thin]["paid_work_units"] + rows[well]["paid_work_units"]
        expected = (pool * rows[thin]["paid_work_units"] / total_paid).quantize(Decimal("1e-18"), "ROUND_DOWN")
        assert rows[thin]["payment_far"] == expected

        earnings = dict(
            await connection.fetch(
                "SELECT account, balance_far FROM far_journal_balances WHERE account = ANY($1)",
                [f"provider:{thin}", f"provider:{well}"],
            )
        )
        assert earnings == {
            f"provider:{thin}": -rows[thin]["payment_far"],
            f"provider:{well}": -rows[well]["payment_far"],
        }
        lines = await connection.fetchval(
            "SELECT sum(l.amount_far) FROM far_journal_lines l JOIN far_journal_entries e ON e.id = l.entry_id "
            "WHERE e.kind = 'charge' AND e.reference = $1",
            record.request_id,
        )
        assert lines == 0
    finally:
        await connection.close()
