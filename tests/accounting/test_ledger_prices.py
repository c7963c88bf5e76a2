"""A session with a priced prompt and a platform fee is stored with both prices and its fee, and balances to the
last of its 18 decimals: payments + fee + remainder = cost (schema/0019)."""

from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import pytest

from accounting.batch_writer import write_batch
from protocol.money import FAR_QUANTUM
from protocol.usage import UsageRecord
from tests.fixtures.ledger import unique_id, usage_record

AWKWARD_PROMPT_PRICE = Decimal("0.000000000000000007")
AWKWARD_PRICE = Decimal("0.012345678901234567")


@pytest.fixture
async def ledger(migrated_postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(migrated_postgres_dsn)
    yield connection
    await connection.close()


def priced(**changes: object) -> UsageRecord:
    """777 prompt tokens and 13 generated at awkward prices, a 3.33% fee, three nodes of indivisible work."""
    nodes = {unique_id("peer"): 7, unique_id("peer"): 11, unique_id("peer"): 13}
    return usage_record(
        unique_id("req"),
        nodes,
        tokens_generated=13,
        price_far=AWKWARD_PRICE,
        prompt_tokens=777,
        prompt_price_far=AWKWARD_PROMPT_PRICE,
        fee_bps=333,
    )


async def test_a_session_with_a_priced_prompt_and_a_fee_is_stored_with_both_prices_and_balances_exactly(
    ledger: asyncpg.Connection,
) -> None:
    record = priced()
    assert record.total_cost_far == Decimal("0.160493825716054810")  # 777 x 7e-18 + 13 x 0.012345678901234567
    assert record.platform_fee_far == Decimal("0.005344444396344625")  # 333 bps: ...625173, rounded down
    outcome = await write_batch(ledger, [record])
    assert (outcome.sessions_written, outcome.contributions_written, outcome.rejected) == (1, 3, {})
    session = await ledger.fetchrow(
        "SELECT prompt_tokens, prompt_price_per_token_far, price_per_token_far, total_cost_far, platform_fee_bps, "
        "platform_fee_far, platform_remainder_far, finalized_at FROM far_mesh_sessions WHERE request_id = $1",
        record.request_id,
    )
    assert dict(session) | {"finalized_at": None} == {
        "prompt_tokens": 777,
        "prompt_price_per_token_far": AWKWARD_PROMPT_PRICE,
        "price_per_token_far": AWKWARD_PRICE,
        "total_cost_far": record.total_cost_far,
        "platform_fee_bps": 333,
        "platform_fee_far": record.platform_fee_far,
        "platform_remainder_far": record.platform_remainder_far,
        "finalized_at": None,
    }
    assert session["finalized_at"] is not None
    balance = await ledger.fetchrow("SELECT * FROM far_session_balance WHERE request_id = $1", record.request_id)
    assert balance["balanced"]
    assert (
        balance["payments_far"] + balance["platform_fee_far"] + balance["platform_remainder_far"]
        == (balance["total_cost_far"])
    )


async def test_the_ledger_refuses_a_fee_that_is_not_its_basis_points_of_the_cost_or_a_prompt_left_unbilled(
    ledger: asyncpg.Connection,
) -> None:
    """As a buggy worker's records could be: the usage record's own checks are skipped, the ledger's are not."""
    good = priced()
    skimmed = priced()
    skimmed = UsageRecord.model_construct(
        **(dict(skimmed) | {"platform_fee_far": skimmed.platform_fee_far + FAR_QUANTUM})
    )
    free_prompt = priced()
    free_prompt = UsageRecord.model_construct(
        **(dict(free_prompt) | {"total_cost_far": 13 * AWKWARD_PRICE, "platform_remainder_far": Decimal(0)})
    )
    outcome = await write_batch(ledger, [skimmed, good, free_prompt])
    assert sorted(outcome.rejected) == [0, 2]
    assert "far_mesh_sessions_fee_is_bps_of_cost" in outcome.rejected[0]
    assert "far_mesh_sessions_cost_is_tokens_times_prices" in outcome.rejected[2]
    assert outcome.sessions_written == 1
