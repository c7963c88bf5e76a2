"""The usage-stream consumer: usage records in, ledger rows out, nothing lost and nothing counted twice.

Entries are read in batches through the consumer group (by count or by time, whichever comes first), written
in one transaction, and acknowledged only after the commit. A crash before the acknowledgement leaves the
entries pending; this consumer (restarted under the same name) or any other (claiming entries idle longer
than ACCOUNTING_CLAIM_IDLE_MS) writes them again, and the ledger ignores request ids it already holds.
Entries that cannot be parsed or stored go to the dead-letter stream with the reason, and are acknowledged.
"""

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from accounting import metrics
from accounting.ledger import BatchOutcome, prepare_connection, write_batch
from accounting.settings import AccountingSettings
from protocol import keys
from protocol.usage import USAGE_FIELD, UsageRecord

log = logging.getLogger(__name__)

Entry = tuple[bytes, dict[bytes, bytes]]
Connect = Callable[[], Awaitable[asyncpg.Connection]]

CRASH_AT_ENV = "FAR_MESH_ACCOUNTING_CRASH_AT"
"""Test-only: "after-commit" makes the process SIGKILL itself after a commit and before the XACK."""
DEAD_LETTER_MAXLEN = 100_000
_REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


def stream_id_key(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class UsageConsumer:
    """One member of the accounting consumer group; several may run at once under different names."""

    def __init__(self, redis: aioredis.Redis, connect: Connect, settings: AccountingSettings) -> None:
        self.redis = redis
        self.connect = connect
        self.settings = settings
        self.name = settings.accounting_consumer_name
        self._stopping = asyncio.Event()
        self._connection: asyncpg.Connection | None = None
        self._own_backlog = True  # entries delivered to this name before a restart come first
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self._next_trim = 0.0
        self._crash_after_commit = os.environ.get(CRASH_AT_ENV) == "after-commit"

    def stop(self) -> None:
        """Finish the batch in hand, then return from `run` (SIGTERM)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        await self._ensure_group()
        log.info(
            "accounting consumer started name=%s group=%s stream=%s",
            self.name,
            keys.USAGE_CONSUMER_GROUP,
            keys.USAGE_STREAM,
        )
        backoff = 0.1
        while not self.stopping:
            try:
                await self.step()
                backoff = 0.1
            except _REDIS_ERRORS as exc:
                log.warning("redis unavailable (%s); retrying in %.1fs", type(exc).__name__, backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.settings.accounting_retry_max_s)
        if self._connection is not None:
            await self._connection.close()
        log.info("accounting consumer stopped name=%s", self.name)

    async def step(self) -> None:
        """Settle one batch of new (or own pending) entries, then claim and trim when their time has come."""
        entries = await self._read_batch()
        if entries:
            await self.settle(entries)
        now = time.monotonic()
        if not self.stopping and now >= self._next_claim:
            self._next_claim = now + self.settings.accounting_claim_interval_s
            await self._claim_from_dead_consumers()
        if not self.stopping and now >= self._next_trim:
            self._next_trim = now + self.settings.accounting_trim_interval_s
            await self.trim()

    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(keys.USAGE_STREAM, keys.USAGE_CONSUMER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read_batch(self) -> list[Entry]:
        size = self.settings.accounting_batch_size
        wait_s = self.settings.accounting_batch_wait_ms / 1000
        if self._own_backlog:
            entries = await self._xreadgroup("0", size, None)
            if entries:
                return entries
            self._own_backlog = False
        entries = []
        deadline: float | None = None
        while len(entries) < size and not self.stopping:
            remaining = wait_s if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                break
            got = await self._xreadgroup(">", size - len(entries), max(1, int(remaining * 1000)))
            if not got:
                break
            entries.extend(got)
            if deadline is None:
                deadline = time.monotonic() + wait_s
        return entries

    async def _xreadgroup(self, last_id: str, count: int, block_ms: int | None) -> list[Entry]:
        try:
            response = await self.redis.xreadgroup(
                keys.USAGE_CONSUMER_GROUP, self.name, {keys.USAGE_STREAM: last_id}, count=count, block=block_ms
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self._ensure_group()  # the stream was deleted: start again
            return []
        if not response:
            return []
        entries = [(entry_id, fields) for entry_id, fields in response[0][1] if fields]
        trimmed = [entry_id for entry_id, fields in response[0][1] if not fields]
        if trimmed:  # own pending entries that no longer exist: nothing to write
            await self.redis.xack(keys.USAGE_STREAM, keys.USAGE_CONSUMER_GROUP, *trimmed)
        return entries

    async def _claim_from_dead_consumers(self) -> None:
        cursor, claimed, *_ = await self.redis.xautoclaim(
            keys.USAGE_STREAM,
            keys.USAGE_CONSUMER_GROUP,
            self.name,
            min_idle_time=self.settings.accounting_claim_idle_ms,
            start_id=self._claim_cursor,
            count=self.settings.accounting_batch_size,
        )
        self._claim_cursor = cursor.decode() if isinstance(cursor, bytes) else cursor
        entries = [(entry_id, fields) for entry_id, fields in claimed if fields is not None]
        if entries:
            log.info("claimed entries of a dead consumer count=%d", len(entries))
            await self.settle(entries)
            self._next_claim = 0.0  # more may be waiting: look again right after the next batch

    async def settle(self, entries: Sequence[Entry]) -> None:
        """Write the entries' records, dead-letter what cannot be stored, acknowledge everything after commit."""
        records: list[UsageRecord] = []
        stored: list[Entry] = []
        dead: list[tuple[Entry, str, str]] = []
        for entry in entries:
            try:
                records.append(UsageRecord.from_stream_fields(entry[1]))
                stored.append(entry)
            except ValueError as exc:
                dead.append((entry, "unparseable", _first_line(exc)))
        started = time.perf_counter()
        outcome = await self._write_until_stored(records)
        if outcome is None:
            return  # stopping while the ledger is away: the entries stay pending for the next consumer
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
        if self._crash_after_commit:
            os.kill(os.getpid(), signal.SIGKILL)
        dead.extend((stored[index], "rejected", reason) for index, reason in outcome.rejected.items())
        async with self.redis.pipeline(transaction=True) as pipe:
            for (entry_id, fields), kind, reason in dead:
                pipe.xadd(
                    keys.USAGE_DEAD_LETTERS,
                    _dead_letter(entry_id, fields, kind, reason, self.name),
                    maxlen=DEAD_LETTER_MAXLEN,
                    approximate=True,
                )
            pipe.xack(keys.USAGE_STREAM, keys.USAGE_CONSUMER_GROUP, *(entry_id for entry_id, _ in entries))
            await pipe.execute()
        for _, kind, reason in dead:
            log.warning("usage entry dead-lettered kind=%s reason=%s", kind, reason)
            metrics.DEAD_LETTERS.labels(kind).inc()
        metrics.RECORDS_CONSUMED.inc(len(entries))
        metrics.BATCH_SIZE.observe(len(entries))
        metrics.SESSIONS_WRITTEN.inc(outcome.sessions_written)
        metrics.CONTRIBUTIONS_WRITTEN.inc(outcome.contributions_written)
        metrics.DUPLICATES_IGNORED.inc(outcome.duplicates)

    async def _write_until_stored(self, records: list[UsageRecord]) -> BatchOutcome | None:
        """Write one batch, waiting out a ledger outage with capped exponential backoff; None if told to stop."""
        if not records:
            return BatchOutcome()
        backoff = 0.1
        while True:
            try:
                if self._connection is None or self._connection.is_closed():
                    self._connection = await self.connect()
                    await prepare_connection(self._connection)
                return await write_batch(self._connection, records)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                metrics.LEDGER_RETRIES.inc()
                log.warning(
                    "ledger unavailable (%s: %s); batch of %d kept in redis, retrying in %.1fs",
                    type(exc).__name__,
                    _first_line(exc),
                    len(records),
                    backoff,
                )
                await self._drop_connection()
            if await self._sleep(backoff):
                return None
            backoff = min(backoff * 2, self.settings.accounting_retry_max_s)

    async def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.terminate()
            self._connection = None

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped first; True when stopping."""
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    async def trim(self) -> None:
        """Trim the stream below the oldest entry some group still needs; refresh the lag and pending gauges."""
        try:
            groups = await self.redis.xinfo_groups(keys.USAGE_STREAM)
        except ResponseError:
            return  # no stream yet
        threshold: tuple[int, int] | None = None
        for group in groups:
            name = _text(group["name"])
            if group["pending"]:
                summary = await self.redis.xpending(keys.USAGE_STREAM, name)
                low = stream_id_key(summary["min"])
            else:
                low = stream_id_key(group["last-delivered-id"])
            threshold = low if threshold is None else min(threshold, low)
            if name == keys.USAGE_CONSUMER_GROUP:
                metrics.PENDING.set(group["pending"])
                if group.get("lag") is not None:
                    metrics.CONSUMER_LAG.set(group["lag"])
        if threshold is not None and threshold > (0, 0):
            await self.redis.xtrim(keys.USAGE_STREAM, minid=f"{threshold[0]}-{threshold[1]}", approximate=True)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500]


def _dead_letter(
    entry_id: bytes, fields: dict[bytes, bytes], kind: str, reason: str, consumer: str
) -> dict[FieldT, EncodableT]:
    record = fields.get(USAGE_FIELD.encode())
    if record is None:
        record = json.dumps({_text(k): v.decode(errors="replace") for k, v in fields.items()}).encode()
    return {"entry_id": entry_id, "kind": kind, "reason": reason, "consumer": consumer, USAGE_FIELD: record}
