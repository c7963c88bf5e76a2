"""Payers: what turns a claimed payment batch into $FAR moved.

`FilePayer` hands the batch to an operator as a CSV file for manual signing and leaves it `submitted`:
nothing is paid until `far-mesh payouts resolve BATCH --tx 0x...` finds that transaction on chain paying
exactly the batch (`verify_transaction`).

`ChainPayer` pays on chain itself, one batch per transaction, through the FarBatchTransfer contract (a batch
pays providers' earnings, or buyers' withdrawals: `payouts.withdrawals`; both go through the same steps):

1. claimed: the treasury's $FAR, allowance and gas are checked and the call is estimated (a shortfall or a
   would-be revert fails the batch and releases its rows: nothing was signed);
2. signed: the transaction is signed with the treasury's next nonce and COMMITTED (raw bytes, hash, nonce,
   fees) before anything is sent;
3. submitted: it is broadcast (again after a restart: a signed transaction is idempotent);
4. then the chain decides. A receipt with status 1 and PAYOUT_CONFIRMATIONS blocks marks the batch
   and its rows paid with the transaction's hash; a receipt with status 0 (reverted) that has as many blocks
   fails the batch and releases the rows; the treasury's nonce passing the batch's, PAYOUT_CONFIRMATIONS
   blocks deep, with no receipt for any of its transactions on RELEASE_CHECKS polls in a row, means another
   transaction took that nonce, so none of ours can ever land: failed, rows released. A transaction not
   mined for PAYOUT_REPLACE_AFTER_S is replaced by one with the same nonce and higher fees.

Never twice: every transaction of a batch has the batch's one nonce, so at most one can ever be mined, and
rows are released only once the chain shows, confirmation-deep and more than once, that none of them
transferred anything (reverted, or the nonce consumed by another): a node behind a load balancer, or one
lagging a few blocks, that misses a receipt once cannot make a mined transfer look unpaid. One payer at a
time holds the treasury's advisory lock, and finishes its unfinished batches before claiming a new one, so the
nonce sequence is never shared. A batch belongs to the chain it was signed for (chain id, genesis hash, token:
`chain.identity`): a reset development node is another chain, whose nonces never collide with the old one's.

A round that fails for a reason that will not pass by itself (a constraint of the ledger, a node that changed
chains, a transfer that does not match its batch...) halts `payouts serve`: it logs the error once, sets
`far_payout_halted` (an alert watches it), and pays nothing more until it is restarted, instead of repeating
the failure every round.
"""

import asyncio
import contextlib
import csv
import hashlib
import io
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Literal

import asyncpg
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import HexStr

from chain.client import ChainClient, EstimateReverted, Receipt, RejectedTransaction
from chain.fees import FeeCapReached, Fees, first_offer, gwei, replacement
from chain.identity import ChainChanged, ChainIdentity
from chain.transfers import Payment, SignedTransfer, TransferMismatch, check_transfers, pay_batch_data, sign_transfer
from chain.units import format_far, from_base_units, to_base_units
from payouts import metrics
from payouts.batches import (
    BatchState,
    Mined,
    PaymentBatch,
    PaymentFailed,
    TransactionRecord,
    batch_state,
    batches_on_other_chains,
    claim_batch,
    load_batch,
    mark_failed,
    mark_paid,
    record_signed,
    record_submitted,
    unfinished_batches,
)
from payouts.payable import PayoutHold
from payouts.settings import PayoutSettings
from payouts.withdrawals import claim_withdrawals
from protocol.backoff import Backoff
from schema.transient import TRANSIENT_LEDGER_ERRORS

log = logging.getLogger(__name__)

CSV_HEADER = ("batch_id", "wallet", "amount_far", "contribution_ids")
PAYER_LOCK_KEY = 0x6661725F706179  # "far_pay": one chain payer per ledger, so one nonce sequence per treasury
GAS_MARGIN = Decimal("1.25")
"""The gas limit signed is the estimate plus a quarter: state can change a little between estimate and mining."""
RELEASE_CHECKS = 3
"""Polls in a row (PAYOUT_POLL_S apart) that must find no receipt for any transaction of a batch, with
the treasury's nonce past the batch's PAYOUT_CONFIRMATIONS blocks deep, before its rows are released:
one node of a load-balanced RPC answering null once, or a node a few blocks behind, is not evidence."""


def render_batch_file(batch: PaymentBatch) -> tuple[str, str]:
    """The batch file's text and its checksum (over every line before the sign-off)."""
    body = io.StringIO()
    writer = csv.writer(body, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for payment in batch.payments:
        ids = " ".join(str(i) for i in payment.contribution_ids)
        writer.writerow((batch.id, payment.wallet, format(payment.amount_far, "f"), ids))
    text = body.getvalue()
    checksum = hashlib.sha256(text.encode()).hexdigest()
    return f"{text}# total_far={format(batch.total_far, 'f')} sha256={checksum}\n", checksum


class FilePayer:
    name = "file"

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    async def pay(self, batch: PaymentBatch) -> str:
        text, checksum = render_batch_file(batch)
        path = self.out_dir / f"far-payout-batch-{batch.id}.csv"
        if path.exists():
            raise PaymentFailed(f"{path} already exists: batch ids are unique, so another ledger wrote it")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".csv.partial")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)  # an operator never sees half a batch
        return f"file:{path.name}#sha256={checksum}"


def payments_of(batch: PaymentBatch) -> list[Payment]:
    """The batch in token base units: exact integers, whose sum is exactly the batch's total."""
    return [Payment(p.wallet, to_base_units(p.amount_far)) for p in batch.payments]


class PayerBusy(RuntimeError):
    """Another chain payer holds the treasury's lock."""


@asynccontextmanager
async def payer_lock(connection: asyncpg.Connection, *, wait_s: float) -> AsyncIterator[None]:
    """Hold the one-payer advisory lock (session level: it goes with the connection if the process dies)."""
    deadline = time.monotonic() + wait_s
    while not await connection.fetchval("SELECT pg_try_advisory_lock($1)", PAYER_LOCK_KEY):
        if time.monotonic() >= deadline:
            raise PayerBusy("another chain payer holds the treasury lock (`far-mesh payouts serve` elsewhere?)")
        await asyncio.sleep(0.2)
    try:
        yield
    finally:
        if not connection.is_closed():
            await connection.execute("SELECT pg_advisory_unlock($1)", PAYER_LOCK_KEY)


Step = Literal["again", "wait", "done"]


@dataclass(frozen=True)
class FinishedBatch:
    batch_id: int
    status: Literal["paid", "failed"]
    reason: str | None = None


class ChainPayer:
    """Pays batches on chain with the lifecycle in the module docstring; one instance per process."""

    name = "chain"

    def __init__(
        self, settings: PayoutSettings, client: ChainClient, treasury: LocalAccount, chain: ChainIdentity
    ) -> None:
        if settings.chain_token_address is None or settings.chain_batch_contract_address is None:
            raise ValueError("CHAIN_TOKEN_ADDRESS and CHAIN_BATCH_CONTRACT_ADDRESS are required by the chain payer")
        self.settings = settings
        self.client = client
        self.treasury = treasury
        self.token = settings.chain_token_address
        self.batch_contract = settings.chain_batch_contract_address
        self.chain_id = settings.chain_id
        self.chain = chain
        """The chain this payer signs for; a batch signed for another one is never followed here."""
        self.cap = gwei(settings.payout_max_fee_gwei)
        self._capped: set[str] = set()
        """Stuck transactions already reported as unreplaceable under the fee cap (reported once each)."""
        self._absent: dict[int, int] = {}
        """Batch id: polls in a row that found the nonce confirmation-deep past it and none of its receipts."""
        self._elsewhere: set[int] = set()
        """Batches in flight on another chain, already reported (once each)."""

    @classmethod
    async def connect(cls, settings: PayoutSettings) -> "ChainPayer":
        """Load the key and check the node (reachable, right chain, both contracts deployed) before any claim."""
        treasury: LocalAccount = Account.from_key(settings.treasury_key().get_secret_value())
        client = ChainClient(settings.chain_rpc_url, timeout_s=settings.chain_rpc_timeout_s)
        contracts = {
            "CHAIN_TOKEN_ADDRESS": settings.chain_token_address,
            "CHAIN_BATCH_CONTRACT_ADDRESS": settings.chain_batch_contract_address,
        }
        if None in contracts.values():
            raise ValueError("CHAIN_TOKEN_ADDRESS and CHAIN_BATCH_CONTRACT_ADDRESS are required by the chain payer")
        await client.check(settings.chain_id, {k: str(v) for k, v in contracts.items()})
        chain = ChainIdentity(settings.chain_id, await client.genesis_hash(), str(settings.chain_token_address))
        payer = cls(settings, client, treasury, chain)
        log.info("chain payer ready node=%s %s treasury=%s", client.node, chain, treasury.address)
        return payer

    async def _check_same_chain(self) -> None:
        """Refuse to go on if the node now serves another chain than the one this payer connected to (a
        development node reset under a running payer, another network behind the same URL)."""
        genesis = await self.client.genesis_hash()
        if genesis != self.chain.genesis_hash:
            raise ChainChanged(
                f"the node at {self.client.node} now serves another chain (genesis {genesis[:10]}…, the payer "
                f"connected to {self.chain}): restart the payer to pay on the new chain"
            )

    async def run_once(
        self, connection: asyncpg.Connection, *, min_far: Decimal, lock_wait_s: float = 60.0
    ) -> list[FinishedBatch]:
        """Finish every unfinished chain batch (a restart resumes here), then claim and pay one new batch: buyers'
        withdrawals if any wait (`payouts.withdrawals`), else providers' earnings."""
        finished: list[FinishedBatch] = []
        async with payer_lock(connection, wait_s=lock_wait_s):
            await self._check_same_chain()
            await self._report_elsewhere(connection)
            for batch_id in await unfinished_batches(connection, self.name, self.chain):
                finished.append(await self.finish_batch(connection, batch_id))
            if any(s.status == "failed" for s in finished):
                return finished  # let an operator see the failure before more rows are claimed
            # buyers' withdrawals first (they wait on their own money), then providers' earnings: one batch a round
            batch = await claim_withdrawals(connection, self.name)
            if batch is None:
                batch = await claim_batch(
                    connection,
                    self.name,
                    min_far,
                    max_wallets=self.settings.batch_policy().max_wallets,
                    hold=PayoutHold.from_settings(self.settings),
                )
            if batch is not None:
                log.info(
                    "payout batch claimed id=%d wallets=%d rows=%d total_far=%s",
                    batch.id,
                    len(batch.payments),
                    len(batch.contribution_ids),
                    batch.total_far,
                )
                finished.append(await self.finish_batch(connection, batch.id))
        return finished

    async def _report_elsewhere(self, connection: asyncpg.Connection) -> None:
        """Batches in flight on another chain (or token) are left alone: only that chain can say whether they
        paid. They are counted in a gauge and logged once each, for an operator to settle."""
        elsewhere = await batches_on_other_chains(connection, self.name, self.chain)
        metrics.PAYOUT_BATCHES_ELSEWHERE.set(len(elsewhere))
        for batch_id in elsewhere:
            if batch_id not in self._elsewhere:
                self._elsewhere.add(batch_id)
                log.warning(
                    "payout batch id=%d is in flight on another chain than %s: not followed here, its rows stay "
                    "claimed until it is settled on its own chain (`far-mesh payouts resolve`)",
                    batch_id,
                    self.chain,
                )

    async def finish_batch(self, connection: asyncpg.Connection, batch_id: int) -> FinishedBatch:
        """Drive one batch to paid or failed, from whatever step it is at."""
        while True:
            state = await batch_state(connection, batch_id)
            if state.status in ("paid", "failed"):
                reason = await connection.fetchval(
                    "SELECT failure_reason FROM far_payment_batches WHERE id = $1", batch_id
                )
                return FinishedBatch(batch_id, state.status, reason)  # type: ignore[arg-type]
            if state.status == "claimed":
                step = await self._sign_first(connection, state)
            elif state.status == "signed":
                step = await self._broadcast(connection, state)
            else:
                step = await self._follow(connection, state)
            if step == "wait":
                await asyncio.sleep(self.settings.payout_poll_s)

    async def _fail(
        self, connection: asyncpg.Connection, batch_id: int, reason: str, reverted: Mined | None = None
    ) -> Step:
        await mark_failed(connection, batch_id, reason, reverted=reverted)
        metrics.PAYOUT_FAILURES.inc()
        log.warning("payout batch failed id=%d reason=%s (rows released)", batch_id, reason)
        return "again"

    async def _sign_first(self, connection: asyncpg.Connection, state: BatchState) -> Step:
        batch = await load_batch(connection, state.id)
        payments = payments_of(batch)
        total = sum(p.units for p in payments)  # integers: exact
        data = pay_batch_data(self.token, payments)
        sender = self.treasury.address
        held = await self.client.far_balance(self.token, sender)
        if held < total:
            return await self._fail(
                connection,
                state.id,
                f"treasury {sender} holds {format_far(held)} FAR, the batch pays {format_far(total)} FAR: "
                "fund it, then run the payout again",
            )
        allowed = await self.client.allowance(self.token, sender, self.batch_contract)
        if allowed < total:
            return await self._fail(
                connection,
                state.id,
                f"treasury {sender} allows the batch contract {format_far(allowed)} FAR, the batch pays "
                f"{format_far(total)} FAR: approve it (`far-mesh chain approve`)",
            )
        try:
            estimate = await self.client.estimate_gas({"from": sender, "to": self.batch_contract, "data": HexStr(data)})
        except EstimateReverted as exc:
            return await self._fail(connection, state.id, f"the batch transaction would revert: {exc}")
        gas_limit = int(estimate * GAS_MARGIN)
        fees = first_offer(
            await self.client.base_fee(),
            priority_fee=gwei(self.settings.payout_priority_fee_gwei),
            cap=self.cap,
        )
        gas_held = await self.client.gas_balance(sender)
        if gas_held < gas_limit * fees.max_fee_per_gas:
            return await self._fail(
                connection,
                state.id,
                f"treasury {sender} holds {format_far(gas_held)} of the gas token, the batch may cost "
                f"{format_far(gas_limit * fees.max_fee_per_gas)}: fund it, then run the payout again",
            )
        nonce = await self.client.nonce(sender, pending=True)
        signed = sign_transfer(
            self.treasury,
            chain_id=self.chain_id,
            nonce=nonce,
            to=self.batch_contract,
            data=data,
            gas_limit=gas_limit,
            fees=fees,
        )
        await self._commit_signed(connection, state.id, signed)
        log.info("payout batch signed id=%d nonce=%d tx=%s gas_limit=%d", state.id, nonce, signed.tx_hash, gas_limit)
        return "again"

    async def _commit_signed(self, connection: asyncpg.Connection, batch_id: int, signed: SignedTransfer) -> None:
        await record_signed(
            connection,
            batch_id,
            chain=self.chain,
            sender=self.treasury.address,
            tx_hash=signed.tx_hash,
            raw_tx=signed.raw_tx,
            nonce=signed.nonce,
            gas_limit=signed.gas_limit,
            max_fee_per_gas=signed.fees.max_fee_per_gas,
            max_priority_fee_per_gas=signed.fees.max_priority_fee_per_gas,
        )

    async def _broadcast(self, connection: asyncpg.Connection, state: BatchState) -> Step:
        for tx in state.transactions:
            if tx.state == "signed":
                await self._send(tx)
                await record_submitted(connection, state.id, tx.tx_hash)
        return "again"

    async def _send(self, tx: TransactionRecord) -> None:
        try:
            await self.client.send_raw(tx.raw_tx)
            log.info("payout transaction sent tx=%s nonce=%d", tx.tx_hash, tx.nonce)
        except RejectedTransaction as exc:
            # already known, already mined, nonce taken, underpriced: the receipts and the nonce tell which
            log.warning("payout transaction not accepted tx=%s: %s", tx.tx_hash, exc)

    async def _follow(self, connection: asyncpg.Connection, state: BatchState) -> Step:
        assert state.nonce is not None and state.sender is not None
        # the nonce first: a receipt found after it cannot have been missed by the receipt lookups below
        mined_nonce = await self.client.nonce(state.sender)
        for tx in reversed(state.transactions):
            receipt = await self.client.receipt(tx.tx_hash)
            if receipt is not None:
                self._absent.pop(state.id, None)
                return await self._settle_mined(connection, state, tx, receipt)
        if mined_nonce > state.nonce:
            return await self._nonce_passed(connection, state)
        self._absent.pop(state.id, None)
        newest = state.transactions[-1]
        if newest.age_s >= self.settings.payout_replace_after_s:
            return await self._replace(connection, state, newest)
        if not await self.client.is_known(newest.tx_hash):
            await self._send(newest)  # the node lost it (restarted, evicted): the same bytes, again
            await record_submitted(connection, state.id, newest.tx_hash)
        return "wait"

    async def _nonce_passed(self, connection: asyncpg.Connection, state: BatchState) -> Step:
        """The treasury's nonce is past the batch's and no receipt of ours was found: another transaction took the
        nonce, or the node that answered is behind (a load balancer's other node, a lagging one) and one of ours
        was mined. Released only on evidence that lasts: the nonce past the batch's at the block
        PAYOUT_CONFIRMATIONS deep, and no receipt on RELEASE_CHECKS polls in a row."""
        assert state.nonce is not None and state.sender is not None
        deep_block = await self.client.block_number() - self.settings.payout_confirmations + 1
        deep_nonce = await self.client.nonce_at(state.sender, max(deep_block, 0))
        if deep_nonce is None or deep_nonce <= state.nonce:
            self._absent.pop(state.id, None)
            return "wait"  # not confirmation-deep yet: ours may be the transaction that took it
        checks = self._absent.get(state.id, 0) + 1
        if checks < RELEASE_CHECKS:
            self._absent[state.id] = checks
            log.info(
                "payout batch id=%d: nonce %d used, no receipt of ours (check %d of %d before releasing its rows)",
                state.id,
                state.nonce,
                checks,
                RELEASE_CHECKS,
            )
            return "wait"
        self._absent.pop(state.id, None)
        return await self._fail(
            connection,
            state.id,
            f"nonce {state.nonce} of {state.sender} was used by a transaction this payer did not sign for the "
            f"batch ({self.settings.payout_confirmations} blocks deep, no receipt on {RELEASE_CHECKS} "
            "polls); nothing was paid",
        )

    async def _settle_mined(
        self, connection: asyncpg.Connection, state: BatchState, tx: TransactionRecord, receipt: Receipt
    ) -> Step:
        mined = Mined(receipt.tx_hash, receipt.block_number, receipt.gas_used, receipt.effective_gas_price)
        # paid or reverted, a receipt counts once it has its confirmations and is still in the same block: a
        # reverted receipt of a block that is later reorganised away may leave room for a transfer that pays
        head = await self.client.block_number()
        if head - receipt.block_number + 1 < self.settings.payout_confirmations:
            return "wait"
        again = await self.client.receipt(tx.tx_hash)  # still in the same block after the confirmations?
        if again is None or again.block_hash != receipt.block_hash or again.status != receipt.status:
            return "again"
        if receipt.status != 1:
            metrics.PAYOUT_GAS_USED.inc(receipt.gas_used)
            return await self._fail(
                connection,
                state.id,
                f"transaction {tx.tx_hash} reverted in block {receipt.block_number}",
                reverted=mined,
            )
        batch = await load_batch(connection, state.id)
        try:
            check_transfers(receipt, self.token, state.sender, payments_of(batch))
        except TransferMismatch as exc:
            # our own signed bytes cannot do this; stop and let an operator look, the rows stay claimed
            raise RuntimeError(f"batch {state.id}: {exc}") from exc
        await mark_paid(connection, state.id, receipt.tx_hash, mined)
        metrics.record_paid(
            batch.total_far,
            len(batch.payments),
            receipt.gas_used,
            receipt.gas_used * receipt.effective_gas_price,
            tx.age_s,
        )
        log.info(
            "payout batch paid id=%d tx=%s block=%d wallets=%d total_far=%s gas_used=%d",
            state.id,
            receipt.tx_hash,
            receipt.block_number,
            len(batch.payments),
            batch.total_far,
            receipt.gas_used,
        )
        return "again"

    async def _replace(self, connection: asyncpg.Connection, state: BatchState, stuck: TransactionRecord) -> Step:
        previous = Fees(stuck.max_fee_per_gas, stuck.max_priority_fee_per_gas)
        try:
            fees = replacement(
                previous,
                await self.client.base_fee(),
                bump_percent=self.settings.payout_fee_bump_percent,
                cap=self.cap,
            )
        except FeeCapReached as exc:
            if stuck.tx_hash not in self._capped:
                self._capped.add(stuck.tx_hash)
                log.warning("payout transaction stuck tx=%s, not replaced: %s", stuck.tx_hash, exc)
            if not await self.client.is_known(stuck.tx_hash):
                await self._send(stuck)
            return "wait"
        batch = await load_batch(connection, state.id)
        signed = sign_transfer(
            self.treasury,
            chain_id=self.chain_id,
            nonce=stuck.nonce,
            to=self.batch_contract,
            data=pay_batch_data(self.token, payments_of(batch)),
            gas_limit=stuck.gas_limit,
            fees=fees,
        )
        await self._commit_signed(connection, state.id, signed)
        metrics.PAYOUT_REPLACEMENTS.inc()
        log.info(
            "payout transaction replaced id=%d nonce=%d old=%s new=%s max_fee=%d tip=%d",
            state.id,
            stuck.nonce,
            stuck.tx_hash,
            signed.tx_hash,
            fees.max_fee_per_gas,
            fees.max_priority_fee_per_gas,
        )
        return "again"


async def verify_transaction(
    client: ChainClient, batch: PaymentBatch, tx_hash: str, *, token: str, sender: str | None, confirmations: int
) -> Mined:
    """Check that `tx_hash` is mined with status 1, has `confirmations` blocks, and moves exactly the batch's
    payments of `token` (from `sender`, when given); raise PaymentFailed saying what is wrong otherwise."""
    receipt = await client.receipt(tx_hash)
    if receipt is None:
        raise PaymentFailed(f"transaction {tx_hash} is not mined (unknown to the node, or still pending)")
    if receipt.status != 1:
        raise PaymentFailed(f"transaction {tx_hash} reverted in block {receipt.block_number}: it paid nothing")
    depth = await client.block_number() - receipt.block_number + 1
    if depth < confirmations:
        raise PaymentFailed(f"transaction {tx_hash} has {depth} of the {confirmations} confirmations required")
    try:
        check_transfers(receipt, token, sender, payments_of(batch))
    except TransferMismatch as exc:
        raise PaymentFailed(str(exc)) from None
    return Mined(receipt.tx_hash, receipt.block_number, receipt.gas_used, receipt.effective_gas_price)


async def refresh_gauges(connection: asyncpg.Connection, payer: ChainPayer) -> None:
    """Batches by status from the ledger, the treasury's balances from the chain."""
    counts = dict(await connection.fetch("SELECT status, count(*) FROM far_payment_batches GROUP BY status"))
    for status in ("claimed", "signed", "submitted", "paid", "failed"):
        metrics.PAYOUT_BATCHES.labels(status=status).set(counts.get(status, 0))
    treasury = payer.treasury.address
    metrics.TREASURY_FAR.set(float(from_base_units(await payer.client.far_balance(payer.token, treasury))))
    metrics.TREASURY_GAS.set(float(from_base_units(await payer.client.gas_balance(treasury))))


async def serve_chain_payouts(settings: PayoutSettings, stop: asyncio.Event | None = None) -> None:
    """`far-mesh payouts serve`: every PAYOUT_INTERVAL_S, finish what is in flight and pay one batch
    (at once again after a paid one: more may be owed).

    Until SIGTERM/SIGINT (or `stop`). Stopping at any moment is safe: every step is committed before the next
    begins, and the next start resumes from the ledger and the chain. An unreachable node or ledger is retried
    next round; a node on the wrong chain or without the contracts stops it at start. Any other error halts it
    (`halt`): repeating a round that violated a ledger constraint, say, would only fail the same way forever.
    """
    import signal

    from prometheus_client import start_http_server

    from chain.errors import ChainUnreachable

    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    retried: tuple[type[Exception], ...] = (ChainUnreachable, OSError, PayerBusy, *TRANSIENT_LEDGER_ERRORS)
    payer = await _connect_when_reachable(settings, stop)
    if payer is None:
        log.info("payouts serve stopped")
        return
    server = start_http_server(settings.payout_metrics_port)[0] if settings.payout_metrics_port else None
    metrics.PAYOUT_HALTED.set(0)
    log.info(
        "payouts serve started interval_s=%s min_far=%s",
        settings.payout_interval_s,
        settings.payout_min_far,
    )
    try:
        while not stop.is_set():
            round_task = asyncio.create_task(_one_round(settings, payer))
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({round_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not round_task.done():
                round_task.cancel()  # mid-batch is fine: what was committed is where the next start resumes
            try:
                finished = await round_task
                if finished and finished[-1].status == "paid":
                    continue
            except asyncio.CancelledError:
                break
            except retried as exc:
                log.warning("payout round skipped: %s", exc)
            except Exception as exc:  # whatever is not known to pass by itself halts: never loop on it
                halt(exc)
                await stop.wait()  # /metrics stays up, so the alert on far_payout_halted sees it
                break
            try:
                await asyncio.wait_for(stop.wait(), timeout=settings.payout_interval_s)
            except TimeoutError:
                pass
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    log.info("payouts serve stopped")


def halt(exc: BaseException) -> None:
    """Stop paying on an error that a next round would only repeat: say so once, loudly, and raise the metric an
    alert watches. What was committed stays where it is; a restart after the fix resumes from there."""
    metrics.PAYOUT_HALTED.set(1)
    log.error(
        "payouts halted: %s: %s. Nothing more is claimed or signed until the cause is fixed and the payer is "
        'restarted (docs/payouts.md, "When the payer halts")',
        type(exc).__name__,
        exc,
        exc_info=exc,
    )


async def _connect_when_reachable(settings: PayoutSettings, stop: asyncio.Event) -> ChainPayer | None:
    """The payer once its node answers (None: stopped first). Started with its chain (a Procfile, a rollout), it
    waits rather than exit; a node on the wrong chain or without the contracts still stops it at once."""
    from chain.errors import ChainUnreachable

    backoff = Backoff(1.0, 30.0)
    while True:
        try:
            return await ChainPayer.connect(settings)
        except ChainUnreachable as exc:
            log.warning("payouts serve waiting for the chain node: %s; retrying in %.0fs", exc, backoff.delay_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=backoff.take())
        if stop.is_set():
            return None


async def _one_round(settings: PayoutSettings, payer: ChainPayer) -> list[FinishedBatch]:
    connection = await asyncpg.connect(settings.postgres_url, timeout=10)
    try:
        finished = await payer.run_once(connection, min_far=settings.batch_policy().min_far, lock_wait_s=0)
        await refresh_gauges(connection, payer)
        return finished
    finally:
        await connection.close()
