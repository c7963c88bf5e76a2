"""Payment batches: what each wallet is owed, claimed once, handed to a payer, marked paid on confirmation.

A run claims the unpaid contribution rows of every wallet owed at least `min_far` (row locks with SKIP
LOCKED, then `payment_batch_id` set and committed), so a concurrent or repeated run can never take them
again. Rows are marked paid only with the payer's transaction reference. A payer that reports failure
(`PaymentFailed`, or an OSError) releases the rows and the batch is marked failed; any other surprise
leaves the batch pending with its rows claimed, because the money may have moved: an operator decides, with
`far-mesh payouts list` and `far-mesh payouts resolve` (`mark_paid` / `mark_failed`). Only a pending batch can
be settled, so a payout run and an operator can never both settle the same batch.
"""

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

import asyncpg

log = logging.getLogger(__name__)

_CLAIMABLE = "paid_at IS NULL AND payment_batch_id IS NULL AND wallet IS NOT NULL AND payment_far > 0"
_LOCK_OWED_ROWS = f"""
SELECT id, wallet, payment_far FROM far_session_contributions
WHERE {_CLAIMABLE}
  AND wallet IN (SELECT wallet FROM far_session_contributions WHERE {_CLAIMABLE}
                 GROUP BY wallet HAVING sum(payment_far) >= $1)
ORDER BY id
FOR UPDATE SKIP LOCKED
"""


class PaymentFailed(RuntimeError):
    """The payer could not pay the batch; nothing was paid, and its rows can be paid by a later run."""


class BatchNotPending(LookupError):
    """The batch does not exist or was already settled (paid or failed): there is nothing left to decide."""


@dataclass(frozen=True)
class WalletPayment:
    wallet: str
    amount_far: Decimal
    contribution_ids: tuple[int, ...]


@dataclass(frozen=True)
class PaymentBatch:
    id: int
    payments: tuple[WalletPayment, ...]

    @property
    def total_far(self) -> Decimal:
        return sum((p.amount_far for p in self.payments), Decimal(0))

    @property
    def contribution_ids(self) -> list[int]:
        return [row_id for p in self.payments for row_id in p.contribution_ids]


class Payer(Protocol):
    """Moves the money of a batch; returns a reference to the transfer (a transaction hash, a file)."""

    name: str

    async def pay(self, batch: PaymentBatch) -> str: ...


async def claim_batch(connection: asyncpg.Connection, payer: str, min_far: Decimal) -> PaymentBatch | None:
    """Claim every row owed to wallets whose unpaid total is at least `min_far`; None when nobody qualifies."""
    async with connection.transaction():
        owed: dict[str, list[tuple[int, Decimal]]] = defaultdict(list)
        for row in await connection.fetch(_LOCK_OWED_ROWS, min_far):
            owed[row["wallet"]].append((row["id"], row["payment_far"]))
        payments = tuple(
            WalletPayment(wallet, sum((amount for _, amount in rows), Decimal(0)), tuple(i for i, _ in rows))
            for wallet, rows in sorted(owed.items())
            # rows a concurrent run holds were skipped: re-check the minimum on what this run got
            if sum((amount for _, amount in rows), Decimal(0)) >= min_far
        )
        if not payments:
            return None
        draft = PaymentBatch(0, payments)
        batch_id = await connection.fetchval(
            "INSERT INTO far_payment_batches (payer, min_far, total_far, wallet_count, row_count) "
            "VALUES ($1, $2, $3, $4, $5) RETURNING id",
            payer,
            min_far,
            draft.total_far,
            len(payments),
            len(draft.contribution_ids),
        )
        await connection.execute(
            "UPDATE far_session_contributions SET payment_batch_id = $1 WHERE id = ANY ($2::bigint[])",
            batch_id,
            draft.contribution_ids,
        )
    return PaymentBatch(batch_id, payments)


async def _settle_pending(connection: asyncpg.Connection, batch_id: int, status: str, note: str) -> None:
    """Move a pending batch to `status` (the batch row first: it is the lock that makes settling happen once)."""
    column = "transaction_ref" if status == "paid" else "failure_reason"
    settled = await connection.fetchval(
        f"UPDATE far_payment_batches SET status = $2, {column} = $3, completed_at = now() "
        "WHERE id = $1 AND status = 'pending' RETURNING id",
        batch_id,
        status,
        note,
    )
    if settled is None:
        raise BatchNotPending(f"payment batch {batch_id} is not pending (see `far-mesh payouts list`)")


async def mark_paid(connection: asyncpg.Connection, batch_id: int, reference: str) -> None:
    async with connection.transaction():
        await _settle_pending(connection, batch_id, "paid", reference)
        await connection.execute(
            "UPDATE far_session_contributions SET paid_at = now(), transaction_ref = $2 "
            "WHERE payment_batch_id = $1 AND paid_at IS NULL",
            batch_id,
            reference,
        )


async def mark_failed(connection: asyncpg.Connection, batch_id: int, reason: str) -> None:
    """Settle the batch as failed and release its rows for a later run."""
    async with connection.transaction():
        await _settle_pending(connection, batch_id, "failed", reason)
        await connection.execute(
            "UPDATE far_session_contributions SET payment_batch_id = NULL "
            "WHERE payment_batch_id = $1 AND paid_at IS NULL",
            batch_id,
        )


@dataclass(frozen=True)
class BatchSummary:
    id: int
    status: str
    payer: str
    created_at: datetime
    wallet_count: int
    row_count: int
    total_far: Decimal
    transaction_ref: str | None
    failure_reason: str | None


async def list_batches(connection: asyncpg.Connection, *, status: str | None = None) -> list[BatchSummary]:
    """Payment batches, newest first; `status` narrows them (pending ones are those an operator may resolve)."""
    rows = await connection.fetch(
        "SELECT id, status, payer, created_at, wallet_count, row_count, total_far, transaction_ref, failure_reason "
        "FROM far_payment_batches WHERE $1::text IS NULL OR status = $1 ORDER BY id DESC",
        status,
    )
    return [BatchSummary(**dict(row)) for row in rows]


async def run_payout(dsn: str, payer: Payer, *, min_far: Decimal) -> PaymentBatch | None:
    """Claim, pay and settle one batch; returns it once paid, None when nobody is owed `min_far`."""
    connection = await asyncpg.connect(dsn)
    try:
        batch = await claim_batch(connection, payer.name, min_far)
        if batch is None:
            return None
        log.info(
            "payout batch claimed id=%d wallets=%d rows=%d total_far=%s",
            batch.id,
            len(batch.payments),
            len(batch.contribution_ids),
            batch.total_far,
        )
        try:
            reference = await payer.pay(batch)
        except (PaymentFailed, OSError) as exc:
            await mark_failed(connection, batch.id, str(exc))
            log.warning("payout batch failed id=%d reason=%s", batch.id, exc)
            raise PaymentFailed(f"batch {batch.id}: {exc}") from exc
        await mark_paid(connection, batch.id, reference)
        log.info("payout batch paid id=%d ref=%s", batch.id, reference)
        return batch
    finally:
        await connection.close()
