"""Payment batches in the ledger: what each wallet is owed, claimed once, and every step of paying it, recorded.

A batch moves `claimed -> signed -> submitted -> paid`, or to `failed`:

- claimed: the unpaid contribution rows of every wallet owed at least `min_far` (a wallet is owed the rows of
  the nodes registered to it: `PAYABLE_ROWS`, `PAYEE_WALLET`) are locked (SKIP LOCKED), stamped with the batch
  id and committed, with what the batch pays each wallet (`far_payout_payments`), so a concurrent or repeated
  run can never take them again;
- signed: the chain payer committed a signed transaction (raw bytes, hash, nonce, fees) before broadcasting it;
- submitted: the transaction was handed to the node (chain payer), or the batch file to an operator (file payer);
- paid: a transaction paying exactly the batch was mined with status 1 and enough confirmations; only now do
  the rows get `paid_at` and the transaction hash, and, in the same transaction, the journal one `payout` entry
  per wallet paid (a trigger of schema/0023, from `far_payout_claims`: which node's rows went to which wallet);
- failed: nothing was paid (the transfer reverted, the treasury could not pay, its nonce went to another
  transaction, or an operator said so) and the rows are released for a later batch.

Every transition is a compare-and-set on the batch's status inside one transaction, so a payer and an
operator can never both finish a batch. `payouts.payer` decides when to move; this module only records.
"""

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

import asyncpg

from chain.identity import ChainIdentity
from payouts.payable import DEFAULT_HOLD, PAYABLE, PayoutHold
from protocol.money import far_sum

log = logging.getLogger(__name__)

PAYABLE_ROWS = "far_session_contributions c JOIN far_node_registrations r ON r.node_id = c.node_id"
"""The contribution rows `c` a payout may claim, each with its node's registration `r` (schema/0009): the rows
of registered peers only. The rows of a peer that is not registered are never claimed; they are held until it
registers, then paid like any others. (The same join as the view `far_payable_contributions`, written out so
that the claim can lock the two tables differently.)"""

PAYEE_WALLET = "r.wallet"
"""Where the money of a payable row goes: the wallet its node's peer id is registered to, read when the batch is
claimed. The wallet the node announced in the DHT (`c.wallet`) is a hint anyone can write and is never paid.
This SQL expression, over `PAYABLE_ROWS`, is every claim's idea of the payee; a claimed batch pays the wallets
it recorded in `far_payout_payments`, so a transfer of the node afterwards moves only its rows still unclaimed.
(`far_registered_wallet(c.node_id)` says the same, but as a function called per row it made a claim over
200,000 unpaid rows about 40x slower than this join.)"""

LEGACY_PAYEE_WALLET = "c.wallet"
"""The payee of batches claimed before `far_payout_payments` existed, which recorded no recipients: they were
claimed paying the announced wallet, so that is what they still pay (never today's registration)."""

_CLAIMABLE = f"c.paid_at IS NULL AND c.payment_batch_id IS NULL AND c.payment_far > 0 AND {PAYABLE}"
# Only rows verification is done with (payouts.payable: verified, or unsampled and older than the verifier's
# maximum lag, outside the wallet's reserve, the wallet not banned); the hold's values are $3, $4 and $5.
# The claim locks the rows it takes (FOR UPDATE, skipping those a concurrent run holds) and shares the lock of
# their registrations: a transfer in progress makes this run skip that node's rows (they are paid, to the new
# owner, by a later run), and a transfer that comes while the claim is open waits until it commits.
LOCK_OWED_ROWS = f"""
WITH owed AS (
    SELECT {PAYEE_WALLET} AS payee FROM {PAYABLE_ROWS}
    WHERE {_CLAIMABLE}
    GROUP BY 1 HAVING sum(c.payment_far) >= $1
    ORDER BY 1 LIMIT $2
)
SELECT c.id, c.node_id, {PAYEE_WALLET} AS payee, c.payment_far FROM {PAYABLE_ROWS}
WHERE {_CLAIMABLE} AND {PAYEE_WALLET} IN (SELECT payee FROM owed)
ORDER BY c.id
FOR UPDATE OF c SKIP LOCKED FOR SHARE OF r SKIP LOCKED
"""

UNFINISHED = ("claimed", "signed", "submitted")
"""Statuses of a batch whose money may still move; its rows stay claimed."""
LIVE_TRANSACTION = ("signed", "submitted", "replaced")
"""Transaction states that may still be mined."""


class PaymentFailed(RuntimeError):
    """The payer could not pay the batch; nothing was paid, and its rows can be paid by a later run."""


class BatchNotPending(LookupError):
    """The batch does not exist or is not in a state that allows this step (settled, or already moved on)."""


@dataclass(frozen=True)
class WalletPayment:
    wallet: str
    amount_far: Decimal
    contribution_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class PaymentBatch:
    id: int
    payments: tuple[WalletPayment, ...]

    @property
    def total_far(self) -> Decimal:
        return far_sum(p.amount_far for p in self.payments)

    @property
    def contribution_ids(self) -> list[int]:
        return [row_id for p in self.payments for row_id in p.contribution_ids]


class Payer(Protocol):
    """Hands a claimed batch over for payment; returns where it went (the file payer's batch file)."""

    name: str

    async def pay(self, batch: PaymentBatch) -> str: ...


async def claim_batch(
    connection: asyncpg.Connection,
    payer: str,
    min_far: Decimal,
    *,
    max_wallets: int | None = None,
    hold: PayoutHold = DEFAULT_HOLD,
) -> PaymentBatch | None:
    """Claim every payable row (`hold`: payouts.payable) owed to (at most `max_wallets`) wallets whose payable
    total is at least `min_far`."""
    async with connection.transaction():
        owed: dict[str, list[tuple[int, Decimal]]] = defaultdict(list)
        payee_of: dict[str, str] = {}
        for row in await connection.fetch(LOCK_OWED_ROWS, min_far, max_wallets, *hold.parameters()):
            owed[row["payee"]].append((row["id"], row["payment_far"]))
            payee_of[row["node_id"]] = row["payee"]
        payments = tuple(
            WalletPayment(wallet, total, tuple(i for i, _ in rows))
            for wallet, rows in sorted(owed.items())
            # rows a concurrent run holds were skipped: re-check the minimum on what this run got
            if (total := far_sum(amount for _, amount in rows)) >= min_far and total > 0
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
        await connection.executemany(
            "INSERT INTO far_payout_payments (batch_id, wallet, amount_far, row_count) VALUES ($1, $2, $3, $4)",
            [(batch_id, p.wallet, p.amount_far, len(p.contribution_ids)) for p in payments],
        )
        # which wallet each node's rows are paid to: the batch's payout entries are built from it (schema/0023)
        paid_wallets = {p.wallet for p in payments}
        await connection.executemany(
            "INSERT INTO far_payout_claims (batch_id, node_id, wallet) VALUES ($1, $2, $3)",
            [(batch_id, node, wallet) for node, wallet in sorted(payee_of.items()) if wallet in paid_wallets],
        )
        await connection.execute(
            "UPDATE far_session_contributions SET payment_batch_id = $1 WHERE id = ANY ($2::bigint[])",
            batch_id,
            draft.contribution_ids,
        )
    return PaymentBatch(batch_id, payments)


async def load_batch(connection: asyncpg.Connection, batch_id: int) -> PaymentBatch:
    """The batch as claimed: the recipients and amounts recorded with it, whatever the registrations say now
    (batches claimed before payments were recorded: from their rows' announced wallets, as they were claimed)."""
    rows = await connection.fetch(
        "SELECT wallet, amount_far FROM far_payout_payments WHERE batch_id = $1 ORDER BY wallet", batch_id
    )
    if not rows:
        rows = await connection.fetch(
            f"SELECT {LEGACY_PAYEE_WALLET} AS wallet, sum(c.payment_far) AS amount_far "
            "FROM far_session_contributions c WHERE c.payment_batch_id = $1 GROUP BY 1 ORDER BY 1",
            batch_id,
        )
    if not rows and await connection.fetchval("SELECT id FROM far_payment_batches WHERE id = $1", batch_id) is None:
        raise BatchNotPending(f"payment batch {batch_id} does not exist")
    return PaymentBatch(batch_id, tuple(WalletPayment(r["wallet"], r["amount_far"]) for r in rows))


@dataclass(frozen=True)
class TransactionRecord:
    id: int
    tx_hash: str
    raw_tx: str
    nonce: int
    gas_limit: int
    max_fee_per_gas: int
    max_priority_fee_per_gas: int
    state: str
    age_s: float
    """Seconds since it was handed to the node (since it was signed, if it never was)."""


@dataclass(frozen=True)
class BatchState:
    id: int
    status: str
    payer: str
    chain_id: int | None
    chain_genesis: str | None
    """The hash of block 0 of the chain its transactions were signed for (None: not signed yet, or signed before
    the ledger recorded it)."""
    token: str | None
    sender: str | None
    nonce: int | None
    transactions: tuple[TransactionRecord, ...]
    """Oldest first; the last one is the newest attempt."""


async def batch_state(connection: asyncpg.Connection, batch_id: int) -> BatchState:
    batch = await connection.fetchrow(
        "SELECT id, status, payer, chain_id, chain_genesis, token, sender, nonce FROM far_payment_batches "
        "WHERE id = $1",
        batch_id,
    )
    if batch is None:
        raise BatchNotPending(f"payment batch {batch_id} does not exist")
    transactions = await connection.fetch(
        "SELECT id, tx_hash, raw_tx, nonce, gas_limit, max_fee_per_gas, max_priority_fee_per_gas, state, "
        "extract(epoch FROM now() - coalesce(submitted_at, signed_at))::float8 AS age_s "
        "FROM far_payout_transactions WHERE batch_id = $1 ORDER BY id",
        batch_id,
    )
    return BatchState(
        id=batch["id"],
        status=batch["status"],
        payer=batch["payer"],
        chain_id=batch["chain_id"],
        chain_genesis=batch["chain_genesis"],
        token=batch["token"],
        sender=batch["sender"],
        nonce=batch["nonce"],
        transactions=tuple(
            TransactionRecord(
                id=t["id"],
                tx_hash=t["tx_hash"],
                raw_tx=t["raw_tx"],
                nonce=t["nonce"],
                gas_limit=t["gas_limit"],
                max_fee_per_gas=int(t["max_fee_per_gas"]),
                max_priority_fee_per_gas=int(t["max_priority_fee_per_gas"]),
                state=t["state"],
                age_s=t["age_s"],
            )
            for t in transactions
        ),
    )


_ON_CHAIN = (
    "(chain_genesis IS NULL AND (chain_id IS NULL OR chain_id = $3)) "
    "OR (chain_id = $3 AND chain_genesis = $4 AND lower(token) = lower($5))"
)
"""A batch that belongs to the chain `($3, $4)` and token `$5`: signed for them, or not signed yet (claimed), or
signed before the ledger recorded a chain's genesis (those keep following the chain of their chain id)."""


async def unfinished_batches(
    connection: asyncpg.Connection, payer: str, chain: ChainIdentity | None = None
) -> list[int]:
    """Batches of `payer` whose money may still move, oldest first: a payer finishes these before new ones. With
    `chain`, only those it can follow there: a batch signed for another chain (a reset development node, another
    token) can be mined only there, and is never followed, failed or re-signed on this one."""
    if chain is None:
        return await _unfinished_where(connection, payer, "TRUE")
    return await _unfinished_where(connection, payer, _ON_CHAIN, chain)


async def batches_on_other_chains(connection: asyncpg.Connection, payer: str, chain: ChainIdentity) -> list[int]:
    """Unfinished batches of `payer` signed for a chain or token other than `chain`: their rows stay claimed until
    an operator settles them (`payouts resolve`), since only that chain can say whether they paid."""
    return await _unfinished_where(connection, payer, f"NOT ({_ON_CHAIN})", chain)


async def _unfinished_where(
    connection: asyncpg.Connection, payer: str, condition: str, chain: ChainIdentity | None = None
) -> list[int]:
    """Ids of `payer`'s unfinished batches meeting `condition` (whose $3..$5 are `chain`'s identity), oldest first."""
    identity = (chain.chain_id, chain.genesis_hash, chain.token) if chain is not None else ()
    rows = await connection.fetch(
        f"SELECT id FROM far_payment_batches WHERE payer = $1 AND status = ANY ($2::text[]) AND ({condition}) "
        "ORDER BY id",
        payer,
        list(UNFINISHED),
        *identity,
    )
    return [r["id"] for r in rows]


async def _move(
    connection: asyncpg.Connection, batch_id: int, allowed: tuple[str, ...], status: str, sets: str = "", *args: object
) -> None:
    """Compare-and-set the batch's status (the batch row is the lock that makes each step happen once)."""
    moved = await connection.fetchval(
        f"UPDATE far_payment_batches SET status = $2{sets} WHERE id = $1 AND status = ANY ($3::text[]) RETURNING id",
        batch_id,
        status,
        list(allowed),
        *args,
    )
    if moved is None:
        current = await connection.fetchval("SELECT status FROM far_payment_batches WHERE id = $1", batch_id)
        where = "does not exist" if current is None else f"is {current}"
        raise BatchNotPending(f"payment batch {batch_id} {where}, not {' or '.join(allowed)}")


async def record_signed(
    connection: asyncpg.Connection,
    batch_id: int,
    *,
    chain: ChainIdentity,
    sender: str,
    tx_hash: str,
    raw_tx: str,
    nonce: int,
    gas_limit: int,
    max_fee_per_gas: int,
    max_priority_fee_per_gas: int,
) -> None:
    """Commit a signed transaction for the batch before it is broadcast: the first one (which fixes the batch's
    nonce and chain), or a replacement with the same nonce on the same chain (which supersedes the batch's live
    ones)."""
    async with connection.transaction():
        state = await connection.fetchrow(
            "SELECT status, nonce, chain_id, chain_genesis FROM far_payment_batches WHERE id = $1 FOR UPDATE", batch_id
        )
        if state is None or state["status"] not in UNFINISHED:
            raise BatchNotPending(
                f"payment batch {batch_id} cannot take a transaction (status {state and state['status']})"
            )
        if state["nonce"] is not None and state["nonce"] != nonce:
            raise ValueError(f"batch {batch_id} pays with nonce {state['nonce']}, never {nonce}")
        if state["chain_genesis"] not in (None, chain.genesis_hash) or state["chain_id"] not in (None, chain.chain_id):
            raise ValueError(f"batch {batch_id} was signed for another chain than {chain}, never for that one")
        previous = await connection.fetchval(
            "UPDATE far_payout_transactions SET state = 'replaced' "
            "WHERE batch_id = $1 AND state IN ('signed', 'submitted') RETURNING id",
            batch_id,
        )
        await connection.execute(
            "INSERT INTO far_payout_transactions (batch_id, tx_hash, raw_tx, nonce, gas_limit, max_fee_per_gas, "
            "max_priority_fee_per_gas, replaces) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            batch_id,
            tx_hash.lower(),
            raw_tx.lower(),
            nonce,
            gas_limit,
            max_fee_per_gas,
            max_priority_fee_per_gas,
            previous,
        )
        await connection.execute(
            "UPDATE far_payment_batches SET status = 'signed', chain_id = $2, sender = $3, nonce = $4, "
            "chain_genesis = $5, token = $6 WHERE id = $1",
            batch_id,
            chain.chain_id,
            sender,
            nonce,
            chain.genesis_hash,
            chain.token,
        )


async def record_submitted(connection: asyncpg.Connection, batch_id: int, tx_hash: str) -> None:
    """The node has the transaction. A rebroadcast keeps the first hand-over time: a transaction the node keeps
    dropping is as stuck as one it keeps, and is replaced just as soon."""
    async with connection.transaction():
        await connection.execute(
            "UPDATE far_payout_transactions SET state = CASE WHEN state = 'signed' THEN 'submitted' ELSE state END, "
            "submitted_at = coalesce(submitted_at, now()) WHERE tx_hash = $1",
            tx_hash.lower(),
        )
        await connection.execute(
            "UPDATE far_payment_batches SET status = 'submitted' WHERE id = $1 AND status = 'signed'", batch_id
        )


@dataclass(frozen=True)
class Mined:
    """A transaction of the batch as the chain recorded it."""

    tx_hash: str
    block_number: int
    gas_used: int
    effective_gas_price: int


async def record_paid_on(connection: asyncpg.Connection, batch_id: int, chain: ChainIdentity, sender: str) -> None:
    """The chain, token and sender of a batch paid by hand: reconciliation counts a batch's payouts on the chain
    the batch names, so a batch that names none would leave the treasury's check failing for good."""
    recorded = await connection.fetchrow(
        "UPDATE far_payment_batches SET chain_id = coalesce(chain_id, $2), "
        "chain_genesis = coalesce(chain_genesis, $3), token = coalesce(token, $4), sender = coalesce(sender, $5) "
        "WHERE id = $1 RETURNING chain_id, chain_genesis",
        batch_id,
        chain.chain_id,
        chain.genesis_hash,
        chain.token,
        sender,
    )
    if recorded is None or (recorded["chain_id"], recorded["chain_genesis"]) != (chain.chain_id, chain.genesis_hash):
        raise PaymentFailed(f"payment batch {batch_id} was signed for another chain than {chain}")


async def mark_paid(connection: asyncpg.Connection, batch_id: int, reference: str, mined: Mined | None = None) -> None:
    """The money moved (a confirmed transaction, `reference` its hash): the batch and its rows are paid."""
    async with connection.transaction():
        gas_cost = None if mined is None else mined.gas_used * mined.effective_gas_price
        await _move(
            connection,
            batch_id,
            UNFINISHED,
            "paid",
            ", transaction_ref = $4, completed_at = now(), confirmed_at = now(), gas_used = $5, gas_cost_wei = $6",
            reference,
            None if mined is None else mined.gas_used,
            gas_cost,
        )
        if mined is not None:
            await _settle_transactions(connection, batch_id, mined, "confirmed")
        await connection.execute(
            "UPDATE far_session_contributions SET paid_at = now(), transaction_ref = $2 "
            "WHERE payment_batch_id = $1 AND paid_at IS NULL",
            batch_id,
            reference,
        )


async def mark_failed(
    connection: asyncpg.Connection,
    batch_id: int,
    reason: str,
    *,
    reverted: Mined | None = None,
    allowed: tuple[str, ...] = UNFINISHED,
) -> None:
    """Nothing was paid: finish the batch as failed (recording the reverted transaction, if one was mined) and
    release its rows for a later batch."""
    async with connection.transaction():
        gas = (
            (None, None) if reverted is None else (reverted.gas_used, reverted.gas_used * reverted.effective_gas_price)
        )
        await _move(
            connection,
            batch_id,
            allowed,
            "failed",
            ", failure_reason = $4, completed_at = now(), gas_used = $5, gas_cost_wei = $6",
            reason,
            *gas,
        )
        if reverted is not None:
            await _settle_transactions(connection, batch_id, reverted, "reverted")
        else:
            await connection.execute(
                "UPDATE far_payout_transactions SET state = 'dropped', settled_at = now() "
                "WHERE batch_id = $1 AND state = ANY ($2::text[])",
                batch_id,
                list(LIVE_TRANSACTION),
            )
        await connection.execute(
            "UPDATE far_session_contributions SET payment_batch_id = NULL "
            "WHERE payment_batch_id = $1 AND paid_at IS NULL",
            batch_id,
        )


async def _settle_transactions(connection: asyncpg.Connection, batch_id: int, mined: Mined, state: str) -> None:
    """The mined transaction takes `state`; every other attempt at the same nonce can never be mined now."""
    await connection.execute(
        "UPDATE far_payout_transactions SET state = $3, block_number = $4, gas_used = $5, effective_gas_price = $6, "
        "settled_at = now() WHERE batch_id = $1 AND tx_hash = $2",
        batch_id,
        mined.tx_hash.lower(),
        state,
        mined.block_number,
        mined.gas_used,
        mined.effective_gas_price,
    )
    await connection.execute(
        "UPDATE far_payout_transactions SET state = 'dropped', settled_at = now() "
        "WHERE batch_id = $1 AND tx_hash <> $2 AND state = ANY ($3::text[])",
        batch_id,
        mined.tx_hash.lower(),
        list(LIVE_TRANSACTION),
    )


async def mark_exported(connection: asyncpg.Connection, batch_id: int, export_ref: str) -> None:
    """The file payer handed the batch to an operator: submitted, rows still claimed, nothing paid yet."""
    await _move(connection, batch_id, ("claimed",), "submitted", ", export_ref = $4", export_ref)


async def has_live_transactions(connection: asyncpg.Connection, batch_id: int) -> bool:
    """Whether a transaction the payer signed for the batch may still be mined."""
    return bool(
        await connection.fetchval(
            "SELECT EXISTS (SELECT 1 FROM far_payout_transactions WHERE batch_id = $1 AND state = ANY ($2::text[]))",
            batch_id,
            list(LIVE_TRANSACTION),
        )
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
    export_ref: str | None
    nonce: int | None
    gas_used: int | None


async def list_batches(connection: asyncpg.Connection, *, status: str | None = None) -> list[BatchSummary]:
    """Payment batches, newest first; `status` narrows them."""
    rows = await connection.fetch(
        "SELECT id, status, payer, created_at, wallet_count, row_count, total_far, transaction_ref, failure_reason, "
        "export_ref, nonce, gas_used FROM far_payment_batches WHERE $1::text IS NULL OR status = $1 ORDER BY id DESC",
        status,
    )
    return [BatchSummary(**dict(row)) for row in rows]


async def run_payout(
    dsn: str, payer: Payer, *, min_far: Decimal, max_wallets: int | None = None, hold: PayoutHold = DEFAULT_HOLD
) -> PaymentBatch | None:
    """Claim a batch and hand it to `payer` (the file payer): it is left `submitted` until `payouts resolve`
    verifies a matching transaction on chain. None when nobody is owed `min_far`."""
    connection = await asyncpg.connect(dsn)
    try:
        batch = await claim_batch(connection, payer.name, min_far, max_wallets=max_wallets, hold=hold)
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
        await mark_exported(connection, batch.id, reference)
        log.info("payout batch exported id=%d ref=%s (paid once `payouts resolve` verifies it)", batch.id, reference)
        return batch
    finally:
        await connection.close()
