"""`far-mesh ledger reconcile`: prove that the journal balances and that the treasury holds on chain what the
ledger says it should (#26 part 2, docs/deposits.md "Reconciliation").

The ledger's checks read only PostgreSQL:
- every journal entry has two lines or more and its lines sum to zero (the database refuses any other at commit:
  this finds one written around that, with the triggers disabled or by a restore);
- the sum of every line of the journal is zero;
- `treasury:chain` in the journal equals the deposits credited (`far_chain_deposits`): only deposits move it yet.

The chain's check, with `--opening-far`: the treasury's $FAR balance at one block equals its opening float, plus
every deposit credited at or below that block, minus every payout batch paid on this chain at or below it, to the
base unit. The block is the deposit watcher's newest checkpoint (every deposit up to it is credited), or
`--block`. The treasury and the token are the FarDeposit contract's own (`treasury()`, `token()`), read through
`chain.client`. A plain transfer to the treasury (not a deposit), a payout the ledger does not know of, or a batch
still in flight makes it differ: each is named when it is the difference.
"""

import argparse
import asyncio
import logging
from dataclasses import dataclass, field
from decimal import Decimal

import asyncpg

log = logging.getLogger(__name__)

UNITS_PER_FAR = 10**18

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
       (SELECT coalesce(sum(amount_far), 0) FROM far_chain_deposits) AS deposits
"""
# Deposits of this chain's contract credited at or below the block, in base units.
_DEPOSITED = """
SELECT coalesce(sum(amount_units), 0)::numeric(78,0) AS units, count(*) AS deposits
  FROM far_chain_deposits
 WHERE chain_id = $1 AND chain_genesis = $2 AND lower(contract) = lower($3) AND block_number <= $4
"""
# Batches paid on this chain: at or below the block by their confirmed transaction (a batch resolved by hand has
# none: counted), and the ones in flight (signed or submitted), in base units.
_PAID = """
WITH batches AS (
    SELECT b.id, b.status,
           (SELECT max(t.block_number) FROM far_payout_transactions t
             WHERE t.batch_id = b.id AND t.state = 'confirmed') AS block_number,
           (SELECT coalesce(sum(p.amount_far), 0) FROM far_payout_payments p WHERE p.batch_id = b.id) AS amount_far
      FROM far_payment_batches b
     WHERE b.chain_id = $1 AND (b.chain_genesis = $2 OR b.chain_genesis IS NULL)
       AND b.status IN ('paid', 'signed', 'submitted')
)
SELECT coalesce(sum(amount_far) FILTER (WHERE status = 'paid' AND coalesce(block_number, 0) <= $3), 0)
           * 1000000000000000000 AS paid_units,
       count(*) FILTER (WHERE status = 'paid' AND coalesce(block_number, 0) <= $3) AS paid_batches,
       coalesce(sum(amount_far) FILTER (WHERE status <> 'paid'), 0) * 1000000000000000000 AS in_flight_units,
       count(*) FILTER (WHERE status <> 'paid') AS in_flight_batches
  FROM batches
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
    value = Decimal(units) / UNITS_PER_FAR
    return format(value.normalize(), "f") if value else "0"


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
    into.check(
        totals["treasury"] == totals["deposits"],
        f"treasury:chain in the journal ({totals['treasury']} FAR) equals the deposits credited",
        f"treasury:chain in the journal is {totals['treasury']} FAR but the deposits credited sum to "
        f"{totals['deposits']} FAR",
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
    rpc_url: str, chain_id: int, deposit_contract: str, connection: asyncpg.Connection, *, block: int | None = None
) -> ChainFigures:
    """The treasury's $FAR at the block reconciled (the watcher's newest checkpoint unless `block` is given)."""
    from chain.artifacts import load_artifact
    from chain.client import ChainClient, checksum

    client = ChainClient(rpc_url)
    await client.check(chain_id, {"FAR_MESH_DEPOSIT_CONTRACT_ADDRESS": deposit_contract})
    genesis = await client.genesis_hash()
    if block is None:
        block = await connection.fetchval(_CHECKPOINT, chain_id, genesis, deposit_contract)
        if block is None:
            block = await client.block_number()
    at: int = block
    contract = client.w3.eth.contract(address=checksum(deposit_contract), abi=load_artifact("FarDeposit").abi)
    treasury = str(await asyncio.to_thread(lambda: contract.functions.treasury().call(block_identifier=at)))
    token = str(await asyncio.to_thread(lambda: contract.functions.token().call(block_identifier=at)))
    erc20 = client.token(token)
    balance = int(await asyncio.to_thread(lambda: erc20.functions.balanceOf(treasury).call(block_identifier=at)))
    return ChainFigures(chain_id, genesis, deposit_contract, treasury, token, at, balance)


async def reconcile_treasury(
    connection: asyncpg.Connection, chain: ChainFigures, opening_units: int, into: Reconciliation
) -> None:
    """The treasury's balance on chain = opening float + deposits credited - payouts paid, at `chain.block`."""
    deposited = await connection.fetchrow(
        _DEPOSITED, chain.chain_id, chain.genesis, chain.deposit_contract, chain.block
    )
    paid = await connection.fetchrow(_PAID, chain.chain_id, chain.genesis, chain.block)
    assert deposited is not None and paid is not None
    deposits, payouts = int(deposited["units"]), int(paid["paid_units"])
    expected = opening_units + deposits - payouts
    difference = chain.balance_units - expected
    figures = (
        f"opening {far_text(opening_units)} + {deposited['deposits']} deposits {far_text(deposits)} - "
        f"{paid['paid_batches']} payout batches {far_text(payouts)} = {far_text(expected)} FAR"
    )
    why = ""
    in_flight = int(paid["in_flight_units"])
    if difference and in_flight and difference == -in_flight:
        why = f" ({paid['in_flight_batches']} payout batches in flight pay exactly that: reconcile once they settle)"
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


def run_reconcile(args: argparse.Namespace) -> int:
    from chain.settings import DepositSettings
    from protocol.settings import SettingsError

    settings = DepositSettings.from_env()
    settings.configure_logging()
    opening: Decimal | None = args.opening_far
    if opening is not None and -int(opening.as_tuple().exponent) > 18:
        raise SettingsError("--opening-far: an amount of FAR with at most 18 decimals")
    contract = settings.far_mesh_deposit_contract_address
    if opening is not None and contract is None:
        raise SettingsError("FAR_MESH_DEPOSIT_CONTRACT_ADDRESS is not set: the treasury is the deposit contract's")
    result = asyncio.run(
        reconcile(
            settings.postgres_url,
            rpc_url=settings.far_mesh_chain_rpc_url,
            chain_id=settings.far_mesh_chain_id,
            deposit_contract=contract,
            opening_units=None if opening is None else int(opening * UNITS_PER_FAR),
            block=args.block,
        )
    )
    print_reconciliation(result)
    return 0 if result.ok else 1


async def reconcile(
    dsn: str,
    *,
    rpc_url: str,
    chain_id: int,
    deposit_contract: str | None,
    opening_units: int | None,
    block: int | None = None,
) -> Reconciliation:
    """Every check, in one repeatable-read transaction (the ledger's figures are one snapshot)."""
    result = Reconciliation()
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            await reconcile_journal(connection, result)
            if opening_units is not None and deposit_contract is not None:
                chain = await read_chain(rpc_url, chain_id, deposit_contract, connection, block=block)
                await reconcile_treasury(connection, chain, opening_units, result)
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
