"""Paying buyers' withdrawals (#26 part 5): the chain payer claims the withdrawals the portal recorded
(`far_withdrawals`, schema/0024) into a payout batch of their own and pays it exactly as it pays providers'
earnings (`payouts.payer`: signed and committed before broadcast, one nonce per batch, confirmed on chain).

A withdrawals batch differs from an earnings batch only in what it claims: withdrawals not yet in a batch, summed
per wallet into `far_payout_payments` (so the transaction, its check against the receipt and `payouts resolve`
are the same; a `WalletPayment`'s ids are the wallet's withdrawals where an earnings batch has contribution
rows). When it is paid, a trigger posts a `withdrawal_paid` entry per wallet and marks its withdrawals paid; when
it fails, another releases them for a later batch. Claiming is a compare-and-set (`FOR UPDATE SKIP LOCKED`, then
the batch id), so no withdrawal is ever in two batches, and paid ones are never claimed again.
"""

from collections import defaultdict
from decimal import Decimal

import asyncpg

from payouts.batches import PaymentBatch, WalletPayment
from protocol.money import far_sum

PURPOSE = "withdrawals"
"""`far_payment_batches.purpose` of a batch that pays withdrawals."""

_LOCK_UNCLAIMED = """
SELECT id, wallet, amount_far FROM far_withdrawals
 WHERE batch_id IS NULL AND paid_at IS NULL
 ORDER BY id
 LIMIT $1
 FOR UPDATE SKIP LOCKED
"""


async def claim_withdrawals(
    connection: asyncpg.Connection, payer: str, *, max_withdrawals: int = 500
) -> PaymentBatch | None:
    """Claim up to `max_withdrawals` unclaimed withdrawals (oldest first) into one batch; None when there is none."""
    async with connection.transaction():
        owed: dict[str, list[tuple[int, Decimal]]] = defaultdict(list)
        for row in await connection.fetch(_LOCK_UNCLAIMED, max_withdrawals):
            owed[row["wallet"]].append((row["id"], row["amount_far"]))
        if not owed:
            return None
        payments = tuple(
            WalletPayment(wallet, far_sum(amount for _, amount in rows), tuple(i for i, _ in rows))
            for wallet, rows in sorted(owed.items())
        )
        draft = PaymentBatch(0, payments)
        batch_id = await connection.fetchval(
            "INSERT INTO far_payment_batches (payer, purpose, min_far, total_far, wallet_count, row_count) "
            "VALUES ($1, $2, 0, $3, $4, $5) RETURNING id",
            payer,
            PURPOSE,
            draft.total_far,
            len(payments),
            len(draft.contribution_ids),
        )
        await connection.executemany(
            "INSERT INTO far_payout_payments (batch_id, wallet, amount_far, row_count) VALUES ($1, $2, $3, $4)",
            [(batch_id, p.wallet, p.amount_far, len(p.contribution_ids)) for p in payments],
        )
        await connection.execute(
            "UPDATE far_withdrawals SET batch_id = $1 WHERE id = ANY ($2::bigint[])", batch_id, draft.contribution_ids
        )
    return PaymentBatch(batch_id, payments)
