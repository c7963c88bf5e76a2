"""Charges (schema/0022): each stored session is charged in the journal once, in the transaction storing it."""

from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import pytest
from eth_account import Account

from accounting.batch_writer import write_batch
from accounting.journal import (
    PLATFORM_FEES,
    PLATFORM_REMAINDER,
    TREASURY_CHAIN,
    UNATTRIBUTED,
    Line,
    buyer_account,
    buyer_balance,
    charge_lines,
    post_entry,
    provider_account,
)
from tests.fixtures.ledger import refused_by_the_ledger, unique_id, usage_record


@pytest.fixture
async def ledger(migrated_postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(migrated_postgres_dsn)
    yield connection
    await connection.close()


async def test_a_sessions_charge_debits_its_buyer_and_credits_providers_fee_and_remainder_once(
    ledger: asyncpg.Connection,
) -> None:
    wallet = str(Account.create().address)
    await post_entry(
        ledger,
        "deposit",
        unique_id("test"),
        [Line(TREASURY_CHAIN, Decimal(1)), Line(buyer_account(wallet), Decimal(-1))],
    )
    a, b = unique_id("node"), unique_id("node")
    record = usage_record(
        unique_id("req"), {a: 3, b: 4}, prompt_tokens=7, prompt_price_far=Decimal("0.00003"), fee_bps=1000
    ).model_copy(update={"user_wallet": wallet})
    assert record.platform_remainder_far > 0 and record.platform_fee_far > 0

    first = await write_batch(ledger, [record, record])  # twice in one batch,
    again = await write_batch(ledger, [record])  # and delivered again
    assert (first.sessions_written, first.duplicates, again.sessions_written, again.duplicates) == (1, 1, 0, 1)

    lines = await charge_lines(ledger, record.request_id)
    payments = {c.node_id: c.payment_far for c in record.contributions}
    assert lines == {
        buyer_account(wallet): record.total_cost_far,
        provider_account(a): -payments[a],
        provider_account(b): -payments[b],
        PLATFORM_FEES: -record.platform_fee_far,
        PLATFORM_REMAINDER: -record.platform_remainder_far,
    }
    assert sum(lines.values()) == 0
    assert (
        await ledger.fetchval(
            "SELECT count(*) FROM far_journal_entries WHERE kind = 'charge' AND reference = $1", record.request_id
        )
        == 1
    )
    assert await buyer_balance(ledger, wallet) == 1 - record.total_cost_far
    # posting the charges again posts nothing
    assert (
        await ledger.fetchval(
            "SELECT far_post_session_charges(ARRAY[(SELECT id FROM far_mesh_sessions WHERE request_id = $1)])",
            record.request_id,
        )
        == 0
    )


async def test_a_session_without_a_wallet_is_charged_to_the_unattributed_receivable_and_a_free_one_not_at_all(
    ledger: asyncpg.Connection,
) -> None:
    odd = "node with spaces/" + unique_id("x")
    paid = usage_record(unique_id("req"), {odd: 1})
    free = usage_record(unique_id("req"), {unique_id("node"): 1}, tokens_generated=0, prompt_tokens=0)
    outcome = await write_batch(ledger, [paid, free])
    assert outcome.sessions_written == 2 and not outcome.rejected

    lines = await charge_lines(ledger, paid.request_id)
    assert lines == {UNATTRIBUTED: paid.total_cost_far, provider_account(odd): -paid.total_cost_far}
    assert provider_account(odd).startswith("provider:md5.")
    assert await charge_lines(ledger, free.request_id) == {}


async def test_a_batch_written_record_by_record_charges_only_the_sessions_it_stored(ledger: asyncpg.Connection) -> None:
    good = usage_record(unique_id("req"), {unique_id("node"): 1})
    bad = refused_by_the_ledger(unique_id("req"), unique_id("node"))
    outcome = await write_batch(ledger, [good, bad])
    assert list(outcome.rejected) == [1]
    assert sum((await charge_lines(ledger, good.request_id)).values()) == 0
    assert await charge_lines(ledger, good.request_id) != {}
    assert await charge_lines(ledger, bad.request_id) == {}
