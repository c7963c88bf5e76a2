"""The double-entry journal of buyers' money (schema/0020): entries of signed lines over named accounts.

Every entry's lines sum to zero, which the database enforces (`far_journal_post` refuses an unbalanced entry,
and a deferred constraint trigger refuses one from any other writer at commit). A line is a debit when
positive and a credit when negative; `treasury:chain` is an asset (debited by a deposit) and `buyer:<wallet>` a
liability (credited by one), so a buyer's balance is minus the sum of its account's lines. Balances are only
ever derived from lines: nothing is updated in place, and a correction is a reversing entry. A stored
session's charge (schema/0022, posted by `accounting.batch_writer`) debits `buyer:<wallet>` its cost and credits
`provider:<node id>` (payables), `platform:fees` and `platform:remainder`.
"""

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from protocol.wallet import validate_wallet

TREASURY_CHAIN = "treasury:chain"
"""The $FAR the treasury holds on chain because buyers deposited it (an asset: positive balance)."""


PLATFORM_FEES = "platform:fees"
"""The platform's fee on each session (revenue: credited, so its balance is minus the sum of its lines)."""
PLATFORM_REMAINDER = "platform:remainder"
"""What rounding providers' shares down left of each session (credited, like the fee)."""
UNATTRIBUTED = "receivable:unattributed"
"""Debited instead of a buyer for a session billed to no wallet (usage records from before wallets)."""
CHARGE = "charge"
"""The kind of a session's charge entry; its reference is the session's request id (schema/0022)."""


def provider_account(node_id: str) -> str:
    """The payable of a node: what the service owes its provider for sessions charged (credited by charges).
    Mirrors `far_provider_account` (schema/0022): a node id outside the account alphabet is named by its md5."""
    if re.fullmatch(r"[0-9A-Za-z_.:-]+", node_id):
        return f"provider:{node_id}"
    return f"provider:md5.{hashlib.md5(node_id.encode()).hexdigest()}"


def buyer_account(wallet: str) -> str:
    """The account of a buyer's prepaid balance (a liability: its lines sum to minus the balance)."""
    return f"buyer:{validate_wallet(wallet)}"


@dataclass(frozen=True)
class Line:
    account: str
    amount_far: Decimal
    """Positive: a debit; negative: a credit; never zero."""


class UnbalancedEntry(ValueError):
    """An entry whose lines do not sum to zero (or that has fewer than two): refused before the ledger sees it."""


async def post_entry(
    connection: asyncpg.Connection, kind: str, reference: str, lines: Sequence[Line], memo: str = ""
) -> int:
    """Post one entry through `far_journal_post` (the one writer) and return its id; `reference` is unique per
    `kind`, so posting the same thing twice fails with a unique violation instead of counting twice."""
    if len(lines) < 2 or sum((line.amount_far for line in lines), Decimal(0)) != 0:
        raise UnbalancedEntry(f"journal entry {kind}/{reference} does not balance: {lines}")
    entry_id: int = await connection.fetchval(
        "SELECT far_journal_post($1, $2, $3, $4, $5)",
        kind,
        reference,
        [line.account for line in lines],
        [line.amount_far for line in lines],
        memo,
    )
    return entry_id


async def account_balance(connection: asyncpg.Connection, account: str) -> Decimal:
    """The sum of an account's lines (debits positive); zero for an account without any."""
    total: Decimal = await connection.fetchval(
        "SELECT coalesce(sum(amount_far), 0) FROM far_journal_lines WHERE account = $1", account
    )
    return total


async def buyer_balance(connection: asyncpg.Connection, wallet: str) -> Decimal:
    """What the buyer `wallet` has prepaid and not yet spent, in $FAR (positive)."""
    return -await account_balance(connection, buyer_account(wallet))


async def charge_lines(connection: asyncpg.Connection, request_id: str) -> dict[str, Decimal]:
    """Account -> amount of the charge entry of the session `request_id`; empty when it has none."""
    rows = await connection.fetch(
        "SELECT l.account, l.amount_far FROM far_journal_entries e JOIN far_journal_lines l ON l.entry_id = e.id "
        "WHERE e.kind = $1 AND e.reference = $2",
        CHARGE,
        request_id,
    )
    return {row["account"]: row["amount_far"] for row in rows}
