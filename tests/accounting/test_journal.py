"""The journal (schema/0020): every entry balances, whoever writes it, and nothing in it is ever changed."""

from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import pytest
from eth_account import Account

from accounting.journal import (
    TREASURY_CHAIN,
    Line,
    UnbalancedEntry,
    account_balance,
    buyer_account,
    buyer_balance,
    post_entry,
)
from tests.fixtures.ledger import unique_id


@pytest.fixture
async def ledger(migrated_postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(migrated_postgres_dsn)
    yield connection
    await connection.close()


def a_buyer() -> str:
    return str(Account.create().address)


async def test_a_buyers_balance_is_minus_the_sum_of_its_lines_and_the_treasury_holds_the_other_side(
    ledger: asyncpg.Connection,
) -> None:
    wallet = a_buyer()
    treasury_before = await account_balance(ledger, TREASURY_CHAIN)
    for amount in (Decimal("1.5"), Decimal("0.000000000000000001")):
        lines = [Line(TREASURY_CHAIN, amount), Line(buyer_account(wallet), -amount)]
        await post_entry(ledger, "deposit", unique_id("test"), lines)

    assert await buyer_balance(ledger, wallet) == Decimal("1.500000000000000001")
    assert await account_balance(ledger, TREASURY_CHAIN) - treasury_before == Decimal("1.500000000000000001")
    assert await ledger.fetchval("SELECT balance_far FROM far_buyer_balances WHERE wallet = $1", wallet) == Decimal(
        "1.500000000000000001"
    )


async def test_an_unbalanced_entry_is_refused_by_the_writer_and_by_the_database(ledger: asyncpg.Connection) -> None:
    wallet, reference = a_buyer(), unique_id("test")
    lopsided = [Line(TREASURY_CHAIN, Decimal(2)), Line(buyer_account(wallet), Decimal(-1))]
    with pytest.raises(UnbalancedEntry):
        await post_entry(ledger, "deposit", reference, lopsided)
    with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):  # the one SQL writer
        await ledger.fetchval(
            "SELECT far_journal_post('deposit', $1, $2, $3)",
            reference,
            [TREASURY_CHAIN, buyer_account(wallet)],
            [Decimal(2), Decimal(-1)],
        )
    with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):  # any other writer, at commit
        async with ledger.transaction():
            entry = await ledger.fetchval(
                "INSERT INTO far_journal_entries (kind, reference) VALUES ('deposit', $1) RETURNING id", reference
            )
            await ledger.execute(
                "INSERT INTO far_journal_accounts (name) VALUES ($1) ON CONFLICT DO NOTHING", buyer_account(wallet)
            )
            await ledger.execute(
                "INSERT INTO far_journal_lines (entry_id, account, amount_far) VALUES ($1, $2, -1)",
                entry,
                buyer_account(wallet),
            )
    with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):  # an entry without lines
        async with ledger.transaction():
            await ledger.execute("INSERT INTO far_journal_entries (kind, reference) VALUES ('deposit', $1)", reference)
    assert await buyer_balance(ledger, wallet) == 0


async def test_entries_and_lines_are_never_changed_or_deleted_and_a_reference_posts_once(
    ledger: asyncpg.Connection,
) -> None:
    wallet, reference = a_buyer(), unique_id("test")
    lines = [Line(TREASURY_CHAIN, Decimal(3)), Line(buyer_account(wallet), Decimal(-3))]
    entry = await post_entry(ledger, "deposit", reference, lines)
    with pytest.raises(asyncpg.UniqueViolationError):
        await post_entry(ledger, "deposit", reference, lines)
    for statement in (
        "UPDATE far_journal_lines SET amount_far = -30 WHERE entry_id = $1 AND amount_far < 0",
        "DELETE FROM far_journal_lines WHERE entry_id = $1",
        "DELETE FROM far_journal_entries WHERE id = $1",
        "DELETE FROM far_journal_accounts WHERE name IN (SELECT account FROM far_journal_lines WHERE entry_id = $1)",
        "UPDATE far_journal_accounts SET name = name || '_'"
        " WHERE name IN (SELECT account FROM far_journal_lines WHERE entry_id = $1)",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await ledger.execute(statement, entry)
    assert await buyer_balance(ledger, wallet) == 3


async def test_a_line_is_refused_unless_its_entry_and_its_account_are_in_the_journal(
    ledger: asyncpg.Connection,
) -> None:
    wallet = a_buyer()
    entry = await post_entry(
        ledger,
        "deposit",
        unique_id("test"),
        [Line(TREASURY_CHAIN, Decimal(1)), Line(buyer_account(wallet), Decimal(-1))],
    )
    missing_entry = -1  # identities start at 1
    insert_pair = (
        "INSERT INTO far_journal_lines (entry_id, account, amount_far) VALUES ($1, 'treasury:chain', 2), ($1, $2, -2)"
    )
    with pytest.raises(asyncpg.ForeignKeyViolationError, match=f"refers to entry {missing_entry}"):
        await ledger.execute(insert_pair, missing_entry, buyer_account(wallet))
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="names account buyer:0xnobody"):
        async with ledger.transaction():
            fresh = await ledger.fetchval(
                "INSERT INTO far_journal_entries (kind, reference) VALUES ('deposit', $1) RETURNING id", unique_id("t")
            )
            await ledger.execute(insert_pair, fresh, "buyer:0xnobody")
    assert await ledger.fetchval("SELECT count(*) FROM far_journal_lines WHERE entry_id = $1", entry) == 2
    assert await buyer_balance(ledger, wallet) == 1
