"""`far-mesh ledger reconcile`: prove that the journal balances and that the treasury and the wallets it paid hold
on chain what the ledger says they should (#26 part 2, docs/deposits.md "Reconciliation").

The ledger's checks read only PostgreSQL:
- every journal entry has two lines or more and its lines sum to zero (the database refuses any other at commit:
  this finds one written around that, with the triggers disabled or by a restore);
- the sum of every line of the journal is zero;
- `treasury:chain` in the journal equals the deposits credited (`far_chain_deposits`) minus what the paid batches
  paid (`far_payout_payments`): every deposit and every paid batch has its entries, and nothing else moves it;
- each provider's payable equals its charged sessions' rows neither paid nor slashed, each buyer's `withdrawing:`
  account its withdrawals not yet paid, and `suspense:payouts` holds nothing.

The chain's checks, with `--opening-far`, at one block (the deposit watcher's newest checkpoint, so every deposit up
to it is credited, or `--block`):
- the treasury's $FAR balance equals its opening float, plus every deposit credited at or below that block, minus
  every payout the journal posted for a batch paid on this chain at or below it, to the base unit;
- with the batch contract known (CHAIN_BATCH_CONTRACT_ADDRESS), each wallet's paid total in the journal (its
  `payout` entries) equals what it received on chain: the token's `Transfer` logs from the treasury to it in
  transactions sent to the batch contract (how the payer pays), up to that block.
The treasury and the token are the FarDeposit contract's own (`treasury()`, `token()`), read through
`chain.client`. A plain transfer to the treasury (not a deposit), a payout the ledger does not know of, or a batch
still in flight makes them differ: each is named when it is the difference.
"""

import argparse
import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import asyncpg
from hexbytes import HexBytes

from chain.units import from_base_units, to_base_units
from protocol.money import plain_text
from schema.transient import TRANSIENT_LEDGER_ERRORS

if TYPE_CHECKING:
    from accounting.chain_settings import ReconcileSettings
    from chain.client import ChainClient

log = logging.getLogger(__name__)

_UNBALANCED = """
SELECT e.id, e.kind || ' ' || e.reference AS what, count(l.entry_id) AS lines, coalesce(sum(l.amount_far), 0) AS total
  FROM far_journal_entries e
  LEFT JOIN far_journal_lines l ON l.entry_id = e.id
 GROUP BY e.id
HAVING count(l.entry_id) < 2 OR coalesce(sum(l.amount_far), 0) <> 0
 ORDER BY e.id
 LIMIT 20
"""
_TOTALS = """
SELECT (SELECT count(*) FROM far_journal_entries) AS entries,
       (SELECT count(*) FROM far_journal_lines) AS lines,
       (SELECT coalesce(sum(amount_far), 0) FROM far_journal_lines) AS total,
       (SELECT coalesce(sum(amount_far), 0) FROM far_journal_lines WHERE account = 'treasury:chain') AS treasury,
       (SELECT coalesce(sum(amount_far), 0) FROM far_chain_deposits) AS deposits,
       (SELECT coalesce(sum(p.amount_far), 0) FROM far_payout_payments p
          JOIN far_payment_batches b ON b.id = p.batch_id WHERE b.status = 'paid') AS paid
"""
# Each provider's payable in the journal against the rows it derives from: a charged session's rows neither paid nor
# slashed (a slash zeroes payment_far). Rows of sessions stored before charges (schema/0022) were never in a payable.
_PAYABLES = """
WITH journal AS (
    SELECT account, -sum(amount_far) AS owed FROM far_journal_lines WHERE account LIKE 'provider:%' GROUP BY account
), ledger AS (
    SELECT far_provider_account(c.node_id) AS account, sum(c.payment_far) AS owed
      FROM far_session_contributions c
      JOIN far_mesh_sessions s ON s.id = c.session_id
      JOIN far_journal_entries e ON e.kind = 'charge' AND e.reference = s.request_id
     WHERE c.paid_at IS NULL AND c.payment_far > 0
     GROUP BY 1
)
SELECT coalesce(j.account, l.account) AS account, coalesce(j.owed, 0) AS journal, coalesce(l.owed, 0) AS rows,
       count(*) OVER () AS differing,
       (SELECT count(*) FROM journal) AS payables
  FROM journal j FULL JOIN ledger l ON l.account = j.account
 WHERE coalesce(j.owed, 0) <> coalesce(l.owed, 0)
 ORDER BY 1 LIMIT 20
"""
# Each buyer's withdrawals not yet paid, in the journal (withdrawing:<wallet>) and in far_withdrawals.
_WITHDRAWING = """
WITH journal AS (
    SELECT substr(account, 13) AS wallet, -sum(amount_far) AS owed FROM far_journal_lines
     WHERE account LIKE 'withdrawing:%' GROUP BY 1
), ledger AS (
    SELECT wallet, sum(amount_far) AS owed FROM far_withdrawals WHERE paid_at IS NULL GROUP BY 1
)
SELECT coalesce(j.wallet, l.wallet) AS wallet, coalesce(j.owed, 0) AS journal, coalesce(l.owed, 0) AS rows
  FROM journal j FULL JOIN ledger l ON l.wallet = j.wallet
 WHERE coalesce(j.owed, 0) <> coalesce(l.owed, 0)
 ORDER BY 1 LIMIT 20
"""
# Deposits of this chain's contract credited at or below the block, in base units.
_DEPOSITED = """
SELECT coalesce(sum(amount_units), 0)::numeric(78,0) AS units, count(*) AS deposits
  FROM far_chain_deposits
 WHERE chain_id = $1 AND chain_genesis = $2 AND lower(contract) = lower($3) AND block_number <= $4
"""
# What the journal paid each wallet (the treasury:chain credits of `payout` entries, whose reference is
# '<batch id>:<wallet>') for batches paid on this chain, at or below the block by their confirmed transaction (a
# batch resolved by hand has none: counted).
PAID_KINDS = ("payout", "withdrawal_paid")
"""Entries that move $FAR out of the treasury to a wallet (providers' earnings, buyers' withdrawals), their
reference '<batch id>:<wallet>'."""
_JOURNAL_PAID = """
SELECT split_part(e.reference, ':', 2) AS wallet, -sum(l.amount_far) AS paid_far, count(*) AS entries
  FROM far_journal_entries e
  JOIN far_journal_lines l ON l.entry_id = e.id AND l.account = 'treasury:chain'
  JOIN far_payment_batches b ON b.id = split_part(e.reference, ':', 1)::bigint
 WHERE e.kind = ANY ($4::text[]) AND b.chain_id = $1 AND (b.chain_genesis = $2 OR b.chain_genesis IS NULL)
   AND coalesce((SELECT max(t.block_number) FROM far_payout_transactions t
                  WHERE t.batch_id = b.id AND t.state = 'confirmed'), 0) <= $3
 GROUP BY 1
"""
# Batches in flight on this chain (signed or submitted), in base units: what explains a treasury short by them.
_IN_FLIGHT = """
SELECT coalesce(sum(p.amount_far), 0) * 1000000000000000000 AS units, count(DISTINCT b.id) AS batches
  FROM far_payment_batches b JOIN far_payout_payments p ON p.batch_id = b.id
 WHERE b.chain_id = $1 AND (b.chain_genesis = $2 OR b.chain_genesis IS NULL) AND b.status IN ('signed', 'submitted')
"""
_CHECKPOINT = """
SELECT max(block_number) FROM far_deposit_scans
 WHERE chain_id = $1 AND chain_genesis = $2 AND lower(contract) = lower($3)
"""


@dataclass
class Reconciliation:
    """What was checked: `passed` lines and `failed` ones, each one sentence naming the figures."""

    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def check(self, holds: bool, ok: str, failure: str) -> None:
        (self.passed if holds else self.failed).append(ok if holds else failure)


def far_text(units: int | Decimal) -> str:
    return plain_text(from_base_units(int(units)))


async def reconcile_journal(connection: asyncpg.Connection, into: Reconciliation) -> None:
    """The ledger's own checks: each entry balances, all lines sum to zero, the treasury account is the deposits."""
    bad = await connection.fetch(_UNBALANCED)
    totals = await connection.fetchrow(_TOTALS)
    assert totals is not None
    named = "; ".join(f"entry {r['id']} ({r['what']}): {r['lines']} lines summing to {r['total']}" for r in bad)
    into.check(
        not bad,
        f"every journal entry balances ({totals['entries']} entries, {totals['lines']} lines)",
        f"journal entries do not balance: {named}",
    )
    into.check(
        totals["total"] == 0,
        "the journal's lines sum to zero",
        f"the journal's lines sum to {totals['total']}, not zero",
    )
    expected = totals["deposits"] - totals["paid"]
    into.check(
        totals["treasury"] == expected,
        f"treasury:chain in the journal ({totals['treasury']} FAR) equals the deposits credited "
        f"({totals['deposits']}) minus the batches paid ({totals['paid']})",
        f"treasury:chain in the journal is {totals['treasury']} FAR but the deposits credited "
        f"({totals['deposits']} FAR) minus the batches paid ({totals['paid']} FAR) are {expected} FAR: an entry "
        "is missing or was written without its record",
    )


async def reconcile_payables(connection: asyncpg.Connection, into: Reconciliation) -> None:
    """Each provider's payable and each buyer's unpaid withdrawals in the journal equal the rows they derive from,
    and nothing waits in `suspense:payouts`."""
    payables = await connection.fetch(_PAYABLES)
    named = "; ".join(f"{r['account']}: journal {r['journal']}, unpaid rows {r['rows']}" for r in payables)
    into.check(
        not payables,
        "each provider's payable in the journal equals its charged rows neither paid nor slashed",
        f"{payables[0]['differing'] if payables else 0} provider payables differ from their unpaid rows: {named}",
    )
    withdrawing = await connection.fetch(_WITHDRAWING)
    named = "; ".join(f"{r['wallet']}: journal {r['journal']}, unpaid withdrawals {r['rows']}" for r in withdrawing)
    into.check(
        not withdrawing,
        "each buyer's withdrawals in the journal not yet paid equal its unpaid withdrawals",
        f"withdrawals in the journal differ from the unpaid withdrawals: {named}",
    )
    suspense: Decimal = await connection.fetchval(
        "SELECT coalesce(sum(amount_far), 0) FROM far_journal_lines WHERE account = 'suspense:payouts'"
    )
    into.check(
        suspense == 0,
        "nothing waits in suspense:payouts",
        f"suspense:payouts holds {suspense} FAR: a batch claimed before far_payout_claims paid a wallet for rows the "
        "journal could not map to its nodes; post the entry that moves it to their payables",
    )


@dataclass(frozen=True)
class ChainFigures:
    chain_id: int
    genesis: str
    deposit_contract: str
    treasury: str
    token: str
    block: int
    balance_units: int


async def read_chain(
    client: "ChainClient",
    chain_id: int,
    deposit_contract: str,
    connection: asyncpg.Connection,
    *,
    block: int | None = None,
) -> ChainFigures:
    """The treasury's $FAR at the block reconciled (the watcher's newest checkpoint unless `block` is given)."""
    await client.check(chain_id, {"DEPOSIT_CONTRACT_ADDRESS": deposit_contract})
    genesis = await client.genesis_hash()
    if block is None:
        block = await connection.fetchval(_CHECKPOINT, chain_id, genesis, deposit_contract)
        if block is None:
            block = await client.block_number()
    treasury, token, balance = await client.deposit_treasury(deposit_contract, block)
    return ChainFigures(chain_id, genesis, deposit_contract, treasury, token, block, balance)


async def journal_paid(connection: asyncpg.Connection, chain: ChainFigures) -> dict[str, int]:
    """Base units the journal paid each wallet (EIP-55) on this chain at or below `chain.block`."""
    from chain.client import checksum

    rows = await connection.fetch(_JOURNAL_PAID, chain.chain_id, chain.genesis, chain.block, list(PAID_KINDS))
    paid: dict[str, int] = {}
    for row in rows:
        wallet = str(checksum(row["wallet"]))
        paid[wallet] = paid.get(wallet, 0) + to_base_units(row["paid_far"])
    return paid


async def reconcile_treasury(
    connection: asyncpg.Connection, chain: ChainFigures, opening_units: int, into: Reconciliation
) -> None:
    """The treasury's balance on chain = opening float + deposits credited - the journal's payouts, at
    `chain.block`."""
    deposited = await connection.fetchrow(
        _DEPOSITED, chain.chain_id, chain.genesis, chain.deposit_contract, chain.block
    )
    in_flight_row = await connection.fetchrow(_IN_FLIGHT, chain.chain_id, chain.genesis)
    assert deposited is not None and in_flight_row is not None
    paid_by_wallet = await journal_paid(connection, chain)
    deposits, payouts = int(deposited["units"]), sum(paid_by_wallet.values())
    expected = opening_units + deposits - payouts
    difference = chain.balance_units - expected
    figures = (
        f"opening {far_text(opening_units)} + {deposited['deposits']} deposits {far_text(deposits)} - "
        f"payouts to {len(paid_by_wallet)} wallets in the journal {far_text(payouts)} = {far_text(expected)} FAR"
    )
    why = ""
    in_flight = int(in_flight_row["units"])
    if difference and in_flight and difference == -in_flight:
        why = f" ({in_flight_row['batches']} payout batches in flight pay exactly that: reconcile once they settle)"
    elif difference > 0:
        why = " (more on chain than the ledger knows of: a deposit not credited yet, or a plain transfer in)"
    elif difference < 0:
        why = " (less on chain than the ledger says: a payout or transfer out the ledger does not record)"
    into.check(
        difference == 0,
        f"the treasury {chain.treasury} holds {far_text(chain.balance_units)} FAR at block {chain.block}: {figures}",
        f"the treasury {chain.treasury} holds {far_text(chain.balance_units)} FAR ({chain.balance_units} base units) "
        f"at block {chain.block} on chain {chain.chain_id}, but the ledger says {figures} ({expected} base units): "
        f"off by {far_text(difference)} FAR{why}",
    )


async def chain_receipts(
    client: "ChainClient", chain: ChainFigures, batch_contract: str, *, from_block: int, max_blocks: int
) -> dict[str, int]:
    """Base units each wallet (EIP-55) received from the treasury on chain in transactions sent to the batch
    contract (the payer's `payBatch`), in blocks `from_block`..`chain.block`: the token's `Transfer` logs from the
    treasury, read `max_blocks` at a time, each transaction's recipient contract asked once."""
    from chain.client import address_topic, checksum
    from chain.transfers import TRANSFER_TOPIC, parse_transfer_log

    contract = checksum(batch_contract)
    sent_to: dict[str, str | None] = {}
    received: dict[str, int] = {}
    start = from_block
    while start <= chain.block:
        end = min(chain.block, start + max_blocks - 1)
        for entry in await client.logs(chain.token, TRANSFER_TOPIC, start, end, address_topic(chain.treasury)):
            tx_hash = HexBytes(entry["transactionHash"]).to_0x_hex()
            if tx_hash not in sent_to:
                sent_to[tx_hash] = await client.transaction_to(tx_hash)
            if sent_to[tx_hash] != contract:
                continue  # not a payout: a plain transfer out, which the treasury's check accounts for
            moved = parse_transfer_log(entry)
            received[moved.recipient] = received.get(moved.recipient, 0) + moved.units
        start = end + 1
    return received


async def reconcile_receipts(
    connection: asyncpg.Connection, chain: ChainFigures, received: dict[str, int], into: Reconciliation
) -> None:
    """Each wallet's paid total in the journal equals its receipts from the treasury's payouts on chain."""
    paid = await journal_paid(connection, chain)
    differing = sorted(w for w in paid.keys() | received.keys() if paid.get(w, 0) != received.get(w, 0))
    named = "; ".join(
        f"{w}: journal {far_text(paid.get(w, 0))} FAR, on chain {far_text(received.get(w, 0))} FAR"
        + (" (paid on chain, unknown to the journal)" if w not in paid else "")
        + (" (in the journal, never received)" if w not in received else "")
        for w in differing[:20]
    )
    into.check(
        not differing,
        f"each of {len(paid)} wallets paid in the journal received exactly that from the treasury's payouts on chain "
        f"({far_text(sum(paid.values()))} FAR in all, at block {chain.block})",
        f"{len(differing)} wallets' payouts in the journal differ from their receipts on chain at block "
        f"{chain.block}: {named}",
    )


def run_reconcile(args: argparse.Namespace) -> int:
    from accounting.chain_settings import ReconcileSettings
    from protocol.settings import SettingsError

    settings = ReconcileSettings.from_env()
    settings.configure_logging()
    opening: Decimal | None = args.opening_far
    if opening is None:
        opening = settings.ledger_opening_far
    if opening is not None and (not opening.is_finite() or opening < 0 or -int(opening.as_tuple().exponent) > 18):
        raise SettingsError("--opening-far: an amount of FAR, not negative, with at most 18 decimals")
    contract = settings.deposit_contract_address
    if opening is not None and contract is None:
        raise SettingsError("DEPOSIT_CONTRACT_ADDRESS is not set: the treasury is the deposit contract's")
    from_block = args.receipts_from_block
    result = asyncio.run(reconcile_with(settings, opening, block=args.block, receipts_from_block=from_block))
    print_reconciliation(result)
    return 0 if result.ok else 1


def reconcile_with(
    settings: "ReconcileSettings",
    opening: Decimal | None,
    *,
    block: int | None = None,
    receipts_from_block: int | None = None,
) -> "Coroutine[Any, Any, Reconciliation]":
    """`reconcile` as the settings say (the command line's --opening-far, --block and --receipts-from-block win)."""
    return reconcile(
        settings.postgres_url,
        rpc_url=settings.chain_rpc_url,
        chain_id=settings.chain_id,
        deposit_contract=settings.deposit_contract_address,
        opening_units=None if opening is None else to_base_units(opening),
        block=block,
        batch_contract=settings.chain_batch_contract_address,
        receipts_from_block=(
            settings.ledger_receipts_from_block if receipts_from_block is None else receipts_from_block
        ),
        max_blocks=settings.deposit_max_blocks,
    )


def run_serve(_args: argparse.Namespace) -> int:
    from accounting.chain_settings import ReconcileSettings

    settings = ReconcileSettings.from_env()
    settings.configure_logging()
    asyncio.run(serve_reconciliation(settings))
    return 0


RECONCILE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.PostgresError,
    *TRANSIENT_LEDGER_ERRORS,  # InternalClientError too: a connection PostgreSQL left mid-operation
)
"""What makes one reconciliation not run to the end (the chain node's `ChainUnreachable` too): counted and logged,
and the next one is tried at the next interval; the gauges keep the last outcome."""


async def reconcile_once(settings: "ReconcileSettings") -> Reconciliation | None:
    """One reconciliation, its outcome set on the gauges and each failed check logged; None when it could not run."""
    from accounting import metrics
    from chain.errors import ChainError

    retried: tuple[type[Exception], ...] = (*RECONCILE_ERRORS, ChainError)
    try:
        result = await reconcile_with(settings, settings.ledger_opening_far)
    except retried as exc:
        metrics.LEDGER_RECONCILE_ERRORS.inc()
        log.warning("reconciliation could not run: %s: %s", type(exc).__name__, exc)
        return None
    metrics.LEDGER_RECONCILED.set(1 if result.ok else 0)
    metrics.LEDGER_FAILED_CHECKS.set(len(result.failed))
    metrics.LEDGER_LAST_RUN.set_to_current_time()
    for failed in result.failed:
        log.error("books NOT reconciled: %s", failed)
    if result.ok:
        log.info("books reconciled: %d checks passed, %d skipped", len(result.passed), len(result.skipped))
    return result


async def serve_reconciliation(settings: "ReconcileSettings", stop: asyncio.Event | None = None) -> None:
    """`far-mesh ledger serve`: reconcile every LEDGER_RECONCILE_INTERVAL_S and export the outcome on /metrics
    (`far_ledger_reconciled`, which the FarMeshLedgerNotReconciled alert watches), until SIGTERM/SIGINT or `stop`.
    Reading only, it is safe to stop at any moment."""
    import signal

    from prometheus_client import start_http_server

    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    port = settings.ledger_metrics_port
    server = start_http_server(port)[0] if port else None
    log.info(
        "ledger serve started interval_s=%s chain=%s",
        settings.ledger_reconcile_interval_s,
        "checked" if settings.ledger_opening_far is not None else "skipped (no opening float)",
    )
    try:
        while not stop.is_set():
            await reconcile_once(settings)
            try:
                await asyncio.wait_for(stop.wait(), timeout=settings.ledger_reconcile_interval_s)
            except TimeoutError:
                pass
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    log.info("ledger serve stopped")


async def reconcile(
    dsn: str,
    *,
    rpc_url: str,
    chain_id: int,
    deposit_contract: str | None,
    opening_units: int | None,
    block: int | None = None,
    batch_contract: str | None = None,
    receipts_from_block: int = 0,
    max_blocks: int = 1000,
) -> Reconciliation:
    """Every check, in one repeatable-read transaction (the ledger's figures are one snapshot)."""
    from chain.client import ChainClient

    result = Reconciliation()
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            await reconcile_journal(connection, result)
            await reconcile_payables(connection, result)
            if opening_units is not None and deposit_contract is not None:
                client = ChainClient(rpc_url)
                chain = await read_chain(client, chain_id, deposit_contract, connection, block=block)
                await reconcile_treasury(connection, chain, opening_units, result)
                if batch_contract is not None:
                    received = await chain_receipts(
                        client, chain, batch_contract, from_block=receipts_from_block, max_blocks=max_blocks
                    )
                    await reconcile_receipts(connection, chain, received, result)
                else:
                    result.skipped.append(
                        "each wallet's payouts against its receipts on chain (set CHAIN_BATCH_CONTRACT_ADDRESS)"
                    )
            else:
                result.skipped.append("the treasury's $FAR on chain (give --opening-far to check it)")
    finally:
        await connection.close()
    return result


def print_reconciliation(result: Reconciliation) -> None:
    for passed in result.passed:
        print(f"ok    {passed}")
    for failed in result.failed:
        print(f"FAIL  {failed}")
    for skipped in result.skipped:
        print(f"skip  {skipped}")
    print("reconciled" if result.ok else f"NOT reconciled: {len(result.failed)} check(s) failed")
