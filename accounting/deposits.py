"""The deposit watcher: credits buyers' balances from FarDeposit's `Deposited` events, once each, once deep.

It scans the deposit contract's logs block range by block range, never past the newest block that is
DEPOSIT_CONFIRMATIONS deep (its own block counted, as payouts count theirs), so a log that a
reorganisation removes before it is that deep is never even looked at. Each range is one ledger transaction:
every log in it is credited through `far_credit_deposit` (one journal entry per log, unique per chain,
transaction hash and log index), and the range's last block is recorded with its hash as the new checkpoint.
A restart resumes after the checkpoint; a re-scan of a range already done finds every log credited
('duplicate'). Before each range the checkpoint's hash is compared with the node's: a mismatch is a
reorganisation deeper than the confirmations, and the watcher falls back to the newest earlier checkpoint still
on the chain and scans again from there (docs/deposits.md has the argument).
"""

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field

import asyncpg

from accounting import metrics
from accounting.chain_settings import DepositSettings
from chain.client import ChainClient
from chain.deposits import DEPOSITED_TOPIC, DepositLog, parse_deposit_log
from chain.errors import ChainUnreachable
from chain.identity import ChainChanged
from chain.units import from_base_units

log = logging.getLogger(__name__)

KEPT_CHECKPOINTS = 256
"""Scans remembered per contract: how far back a deep reorganisation can be followed before a full rescan."""


class DepositsNotConfigured(ValueError):
    """DEPOSIT_CONTRACT_ADDRESS is not set: there is nothing to watch."""


class ChainMovedDuringScan(RuntimeError):
    """The range's last block changed while its logs were read: the range is read again on the next pass."""


@dataclass(frozen=True)
class Credit:
    deposit: DepositLog
    outcome: str
    """'credited', 'duplicate' (credited before) or 'moved' (credited before at another block)."""


@dataclass(frozen=True)
class ScanResult:
    first_block: int
    last_block: int
    """`last_block` < `first_block`: nothing was deep enough to scan."""
    credits: tuple[Credit, ...] = ()
    rewound_from: int | None = None
    """The checkpoint a deep reorganisation invalidated, when one did."""

    @property
    def credited(self) -> tuple[DepositLog, ...]:
        return tuple(c.deposit for c in self.credits if c.outcome == "credited")


@dataclass
class DepositWatcher:
    client: ChainClient
    chain_id: int
    genesis: str
    contract: str
    confirmations: int
    start_block: int = 0
    max_blocks: int = 1000
    _lock_key: str = field(init=False)

    def __post_init__(self) -> None:
        self._lock_key = f"far_deposits:{self.chain_id}:{self.genesis}:{self.contract}"

    @classmethod
    async def connect(cls, settings: DepositSettings) -> "DepositWatcher":
        """A watcher on the configured node, once it is checked: the right chain, the deposit contract there."""
        contract = settings.deposit_contract_address
        if contract is None:
            raise DepositsNotConfigured("DEPOSIT_CONTRACT_ADDRESS is not set: no deposit contract to watch")
        client = ChainClient(settings.chain_rpc_url, timeout_s=settings.chain_rpc_timeout_s)
        await client.check(settings.chain_id, {"DEPOSIT_CONTRACT_ADDRESS": contract})
        return cls(
            client=client,
            chain_id=settings.chain_id,
            genesis=await client.genesis_hash(),
            contract=contract,
            confirmations=settings.deposit_confirmations,
            start_block=settings.deposit_start_block,
            max_blocks=settings.deposit_max_blocks,
        )

    async def catch_up(self, connection: asyncpg.Connection) -> list[ScanResult]:
        """Scan range after range until the newest deep block is done; the ranges that scanned something."""
        results: list[ScanResult] = []
        while True:
            result = await self.scan_once(connection)
            if result.last_block < result.first_block:
                return results
            results.append(result)

    async def scan_once(self, connection: asyncpg.Connection) -> ScanResult:
        """Scan the next range of deep blocks (at most `max_blocks`) and commit its credits with its checkpoint."""
        if await self.client.genesis_hash() != self.genesis:
            raise ChainChanged(f"the node at {self.client.node} no longer serves the chain of genesis {self.genesis}")
        deep = await self.client.block_number() - self.confirmations + 1
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", self._lock_key)
            checkpoint, rewound_from = await self._checkpoint(connection)
            first = self.start_block if checkpoint is None else max(checkpoint + 1, self.start_block)
            last = min(deep, first + self.max_blocks - 1)
            if last < first:
                return ScanResult(first, last, rewound_from=rewound_from)
            last_hash = await self.client.block_hash(last)
            entries = await self.client.logs(self.contract, DEPOSITED_TOPIC, first, last)
            if last_hash is None or await self.client.block_hash(last) != last_hash:
                raise ChainMovedDuringScan(f"block {last} changed while blocks {first}..{last} were read")
            deposits = sorted((parse_deposit_log(e) for e in entries), key=lambda d: (d.block_number, d.log_index))
            credits = tuple([Credit(d, await self._credit(connection, d)) for d in deposits])
            await connection.execute(
                "INSERT INTO far_deposit_scans (chain_id, chain_genesis, contract, block_number, block_hash) "
                "VALUES ($1, $2, $3, $4, $5)",
                self.chain_id,
                self.genesis,
                self.contract,
                last,
                last_hash,
            )
            await connection.execute(
                "DELETE FROM far_deposit_scans WHERE chain_id = $1 AND chain_genesis = $2 AND contract = $3 "
                "AND block_number < (SELECT min(block_number) FROM (SELECT block_number FROM far_deposit_scans "
                "WHERE chain_id = $1 AND chain_genesis = $2 AND contract = $3 ORDER BY block_number DESC LIMIT $4) k)",
                self.chain_id,
                self.genesis,
                self.contract,
                KEPT_CHECKPOINTS,
            )
        metrics.DEPOSIT_LAST_BLOCK.set(last)
        for credit in credits:
            self._report(credit)
        return ScanResult(first, last, credits, rewound_from)

    async def _credit(self, connection: asyncpg.Connection, deposit: DepositLog) -> str:
        outcome: str = await connection.fetchval(
            "SELECT far_credit_deposit($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            self.chain_id,
            self.genesis,
            self.contract,
            deposit.tx_hash,
            deposit.log_index,
            deposit.block_number,
            deposit.block_hash,
            deposit.wallet,
            deposit.units,
        )
        return outcome

    def _report(self, credit: Credit) -> None:
        d = credit.deposit
        if credit.outcome == "credited":
            metrics.DEPOSITS_CREDITED.inc()
            metrics.DEPOSIT_FAR_CREDITED.inc(float(from_base_units(d.units)))
            log.info(
                "deposit credited wallet=%s far=%s tx=%s log_index=%d block=%d",
                d.wallet,
                from_base_units(d.units),
                d.tx_hash,
                d.log_index,
                d.block_number,
            )
        elif credit.outcome == "moved":
            metrics.DEPOSITS_MOVED.inc()
            log.warning(
                "deposit tx=%s log_index=%d at block %d was credited before at another block (a reorganisation "
                "deeper than the confirmations moved it): not credited again",
                d.tx_hash,
                d.log_index,
                d.block_number,
            )

    async def _checkpoint(self, connection: asyncpg.Connection) -> tuple[int | None, int | None]:
        """(the newest scanned block still on the node's chain, or None to start at the start block; the
        checkpoint a reorganisation invalidated, or None). Checkpoints above the one kept are forgotten."""
        rows = await connection.fetch(
            "SELECT block_number, block_hash FROM far_deposit_scans "
            "WHERE chain_id = $1 AND chain_genesis = $2 AND contract = $3 ORDER BY block_number DESC",
            self.chain_id,
            self.genesis,
            self.contract,
        )
        if not rows:
            return None, None
        kept: int | None = None
        for row in rows:
            if await self.client.block_hash(row["block_number"]) == row["block_hash"]:
                kept = row["block_number"]
                break
        if kept == rows[0]["block_number"]:
            return kept, None
        newest: int = rows[0]["block_number"]
        await connection.execute(
            "DELETE FROM far_deposit_scans WHERE chain_id = $1 AND chain_genesis = $2 AND contract = $3 "
            "AND block_number > $4",
            self.chain_id,
            self.genesis,
            self.contract,
            -1 if kept is None else kept,
        )
        metrics.DEPOSIT_REORGS.inc()
        log.warning(
            "deposit checkpoint at block %d is no longer on the chain (a reorganisation deeper than "
            "DEPOSIT_CONFIRMATIONS=%d): scanning again from block %d; deposits credited since are never "
            "credited twice",
            newest,
            self.confirmations,
            self.start_block if kept is None else kept + 1,
        )
        return kept, newest


async def watch_deposits(settings: DepositSettings, stop: asyncio.Event | None = None) -> None:
    """`far-mesh deposits watch`: catch up, then look for newly deep blocks every DEPOSIT_POLL_S, until
    SIGTERM/SIGINT (or `stop`). Stopping at any moment is safe: each range commits its credits with its
    checkpoint, or neither. An unreachable node or ledger is retried on the next poll."""
    from prometheus_client import start_http_server

    from schema.transient import TRANSIENT_LEDGER_ERRORS

    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    watcher = await _connect_when_reachable(settings, stop)
    if watcher is None:
        return
    port = settings.deposit_metrics_port
    server = start_http_server(port)[0] if port else None
    retried: tuple[type[Exception], ...] = (ChainUnreachable, ChainMovedDuringScan, OSError, *TRANSIENT_LEDGER_ERRORS)
    log.info(
        "deposits watch started contract=%s chain_id=%d confirmations=%d",
        watcher.contract,
        watcher.chain_id,
        watcher.confirmations,
    )
    try:
        while not stop.is_set():
            try:
                connection = await asyncpg.connect(settings.postgres_url, timeout=10)
                try:
                    await watcher.catch_up(connection)
                finally:
                    await connection.close()
            except retried as exc:
                log.warning("deposit scan skipped: %s", exc)
            except ChainChanged as exc:  # crediting the new chain's logs as the old one's would be wrong
                log.error("deposits watch stopped: %s; restart it to follow the new chain", exc)
                raise
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=settings.deposit_poll_s)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    log.info("deposits watch stopped")


async def _connect_when_reachable(settings: DepositSettings, stop: asyncio.Event) -> DepositWatcher | None:
    while not stop.is_set():
        try:
            return await DepositWatcher.connect(settings)
        except ChainUnreachable as exc:
            log.warning("deposits watch waiting for the chain node: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=settings.deposit_poll_s)
    return None
