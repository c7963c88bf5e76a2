"""The usage-stream consumer: usage records in, ledger rows out, nothing lost and nothing counted twice.

Entries are read in batches through the consumer group (by count or by time, whichever comes first), written
in one transaction, and acknowledged only after the commit. A crash before the acknowledgement leaves the
entries pending; this consumer (restarted under the same name) or any other (claiming entries idle longer
than ACCOUNTING_CLAIM_IDLE_MS) writes them again, and the ledger ignores request ids it already holds.
Entries that cannot be parsed or stored go to the dead-letter stream with the reason, and are acknowledged;
so do records that conflict with the session stored under their request id (kind "conflict", logged as an error);
the dead letter is keyed by the entry's id, so an entry stored twice (redelivered, or claimed from a consumer
that was only slow) is dead-lettered once.

The next batch is read and parsed while the current one is being written (parsing is CPU in this process,
writing is mostly PostgreSQL's), so one consumer keeps both busy.
"""

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from accounting import metrics
from accounting.batch_writer import BatchOutcome, write_batch
from accounting.ledger_trace import trace_batch
from accounting.settings import AccountingSettings
from probes import Heartbeat
from protocol import keys
from protocol.backoff import Backoff
from protocol.stream_ids import BEFORE_FIRST, EntryId, format_entry_id, parse_entry_id
from protocol.usage import DEAD_LETTER_FIELDS, USAGE_FIELD, DeadLetterKind, UsageRecord
from schema.transient import LEDGER_AWAY
from streams import ConsumerGroup

log = logging.getLogger(__name__)

UsageEntry = tuple[bytes, dict[bytes, bytes]]
Connect = Callable[[], Awaitable[asyncpg.Connection]]

DEAD_LETTER_MAXLEN = 100_000
"""Dead letters kept (approximately); the ids of as many are remembered, so idempotence lasts as long."""
_REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
_LEDGER_ERRORS: tuple[type[Exception], ...] = (*LEDGER_AWAY, asyncpg.PostgresError)
"""What makes a batch wait and be written again on a new connection. The shared transient errors bring
InternalClientError: a connection PostgreSQL left mid-operation refuses its next transaction ("another operation
is in progress"), and the consumer exited on it (the chaos soak, seed 33). Any other PostgreSQL error is retried
too: a batch that cannot be stored stays pending rather than lost."""

# KEYS: usage stream, dead letters, dead-lettered ids. ARGV: group, maxlen, n, then n x (entry id, score, kind,
# reason, consumer, record), then the ids to acknowledge. One script: dead letters and acks land together.
# The dead letter's field names come from protocol.usage, as Lua string literals made once at import.
_ENTRY_ID, _KIND, _REASON, _CONSUMER, _RECORD = (json.dumps(name) for name in DEAD_LETTER_FIELDS)
_ACK_SCRIPT = f"""
local n = tonumber(ARGV[3])
local at = 4
for _ = 1, n do
  if redis.call('ZADD', KEYS[3], 'NX', ARGV[at + 1], ARGV[at]) == 1 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', {_ENTRY_ID}, ARGV[at], {_KIND}, ARGV[at + 2],
               {_REASON}, ARGV[at + 3], {_CONSUMER}, ARGV[at + 4], {_RECORD}, ARGV[at + 5])
  end
  at = at + 6
end
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -tonumber(ARGV[2]) - 1)
if at <= #ARGV then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, at))
end
return n
"""
_ACK_CHUNK = 5_000
"""Entry ids per script call: Lua's unpack() is limited to a few thousand values."""
PARSE_TURN = 100
"""Entries parsed between yields to the event loop (about 5 ms of CPU)."""


@dataclass
class ParsedBatch:
    """Entries read from the stream, split into the records to write and the entries that cannot be parsed."""

    entries: list[UsageEntry]
    records: list[UsageRecord] = field(default_factory=list)
    stored: list[UsageEntry] = field(default_factory=list)
    """The entry each record came from, index for index."""
    dead: list[tuple[UsageEntry, DeadLetterKind, str]] = field(default_factory=list)


def parse_entries(entries: list[UsageEntry]) -> ParsedBatch:
    batch = ParsedBatch(entries)
    _parse_into(batch, entries)
    return batch


async def parse_entries_in_turns(entries: list[UsageEntry]) -> ParsedBatch:
    """`parse_entries`, yielding to the event loop every `PARSE_TURN` entries.

    The batch being written resumes as soon as PostgreSQL answers (it has its next statement to send) instead
    of waiting for the whole next batch to be parsed, so the ledger is kept busy while this batch is parsed.
    """
    batch = ParsedBatch(entries)
    for start in range(0, len(entries), PARSE_TURN):
        _parse_into(batch, entries[start : start + PARSE_TURN])
        await asyncio.sleep(0)
    return batch


def _parse_into(batch: ParsedBatch, entries: list[UsageEntry]) -> None:
    for entry in entries:
        try:
            batch.records.append(UsageRecord.from_stream_fields(entry[1]))
            batch.stored.append(entry)
        except ValueError as exc:
            batch.dead.append((entry, DeadLetterKind.UNPARSEABLE, _first_line(exc)))


class UsageConsumer:
    """One member of the accounting consumer group; several may run at once under different names."""

    def __init__(self, redis: aioredis.Redis, connect: Connect, settings: AccountingSettings) -> None:
        self.redis = redis
        self.connect = connect
        self.settings = settings
        self.name = settings.accounting_consumer_name
        self.group = ConsumerGroup(redis, keys.USAGE_STREAM, keys.USAGE_CONSUMER_GROUP, self.name)
        self._stopping = asyncio.Event()
        self._connection: asyncpg.Connection | None = None
        self._backlog_cursor: str | None = "0"  # entries delivered to this name before a restart come first
        self._ahead: asyncio.Task[ParsedBatch] | None = None
        self.heartbeat = Heartbeat(settings.accounting_liveness_s)
        self._ack_script = redis.register_script(_ACK_SCRIPT)
        self._claim_cursor = BEFORE_FIRST
        self._next_claim = 0.0
        self._next_trim = 0.0

    def stop(self) -> None:
        """Finish the batch in hand, then return from `run` (SIGTERM)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        if not await self._ensure_group_once_redis_answers():
            log.info("accounting consumer stopped before Redis answered name=%s", self.name)
            return
        log.info(
            "accounting consumer started name=%s group=%s stream=%s",
            self.name,
            keys.USAGE_CONSUMER_GROUP,
            keys.USAGE_STREAM,
        )
        backoff = Backoff(0.1, self.settings.accounting_retry_max_s)
        try:
            while not self.stopping or self._ahead is not None:  # a batch read ahead is stored before leaving
                try:
                    await self.step()
                    backoff.reset()
                except _REDIS_ERRORS as exc:
                    log.warning("redis unavailable (%s); retrying in %.1fs", type(exc).__name__, backoff.delay_s)
                    self.heartbeat.beat()  # waiting out an outage is the loop working, not stuck
                    if await self._sleep(backoff.take()):
                        break
        finally:
            if self._ahead is not None:  # stopped during an outage: what it read stays pending for a successor
                self._ahead.cancel()
                await asyncio.gather(self._ahead, return_exceptions=True)
                self._ahead = None
        if self._connection is not None:
            await self._connection.close()
        log.info("accounting consumer stopped name=%s", self.name)

    async def step(self) -> None:
        """Store and acknowledge one batch of new (or own pending) entries, then claim and trim when it is time."""
        ahead, self._ahead = self._ahead, None
        batch = await (ahead if ahead is not None else self._read_parsed())
        if not self.stopping:
            self._ahead = asyncio.create_task(self._read_parsed())
        if batch.entries:
            await self.store_and_ack_parsed(batch)
        self.heartbeat.beat()
        now = time.monotonic()
        if not self.stopping and now >= self._next_claim:
            self._next_claim = now + self.settings.accounting_claim_interval_s
            await self._claim_from_dead_consumers()
        if not self.stopping and now >= self._next_trim:
            self._next_trim = now + self.settings.accounting_trim_interval_s
            await self.trim()

    async def _ensure_group_once_redis_answers(self) -> bool:
        """Create the group, waiting out a Redis that does not answer yet as the loop waits out an outage: a
        consumer (re)started while Redis restarts must not exit (the chaos soak found it crash-looping). False
        when told to stop first."""
        backoff = Backoff(0.1, self.settings.accounting_retry_max_s)
        while True:
            try:
                await self.group.join()
                return True
            except _REDIS_ERRORS as exc:
                log.warning("redis unavailable at start (%s); retrying in %.1fs", type(exc).__name__, backoff.delay_s)
                self.heartbeat.beat()
                if await self._sleep(backoff.take()):
                    return False

    async def _read_parsed(self) -> ParsedBatch:
        return await parse_entries_in_turns(await self._read_batch())

    async def _read_batch(self) -> list[UsageEntry]:
        size = self.settings.accounting_batch_size
        wait_s = self.settings.accounting_batch_wait_ms / 1000
        while self._backlog_cursor is not None:
            # A cursor, not "0" again: the batch read ahead must not return entries still being written.
            entries, last_id = await self._xreadgroup(self._backlog_cursor, size, None)
            self._backlog_cursor = None if last_id is None else _text(last_id)
            if entries:
                return entries
        entries = []
        deadline: float | None = None
        while len(entries) < size and not self.stopping:
            remaining = wait_s if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                break
            got, _ = await self._xreadgroup(">", size - len(entries), max(1, int(remaining * 1000)))
            if not got:
                break
            entries.extend(got)
            if deadline is None:
                deadline = time.monotonic() + wait_s
        return entries

    async def _xreadgroup(
        self, last_id: str, count: int, block_ms: int | None
    ) -> tuple[list[UsageEntry], bytes | None]:
        """The entries read (trimmed ones acknowledged and left out) and the id of the last one delivered."""
        read = await self.group.read(last_id, count=count, block_ms=block_ms)
        if not read:  # nothing yet, or the stream was deleted (the group is made again: start again)
            return [], None
        entries = [(entry_id, fields) for entry_id, fields in read if fields]
        # own pending entries that no longer exist: nothing to write
        await self.group.ack(*(entry_id for entry_id, fields in read if not fields))
        return entries, read[-1][0]

    async def _claim_from_dead_consumers(self) -> None:
        self._claim_cursor, claimed = await self.group.claim(
            self.settings.accounting_claim_idle_ms, start=self._claim_cursor, count=self.settings.accounting_batch_size
        )
        entries = [(entry_id, fields) for entry_id, fields in claimed if fields]
        if entries:
            log.info("claimed entries of a dead consumer count=%d", len(entries))
            await self.store_and_ack(entries)
            self._next_claim = 0.0  # more may be waiting: look again right after the next batch

    async def store_and_ack(self, entries: list[UsageEntry]) -> None:
        """Write the entries' records, dead-letter what cannot be stored, acknowledge everything after commit."""
        await self.store_and_ack_parsed(parse_entries(entries))

    async def store_and_ack_parsed(self, batch: ParsedBatch) -> None:
        """`store_and_ack` for a batch already parsed (the loop parses the next batch while this one is written)."""
        started, started_ns = time.perf_counter(), time.time_ns()
        outcome = await self._write_until_stored(batch.records)
        if outcome is None:
            return  # stopping while the ledger is away: the entries stay pending for the next consumer
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
        metrics.record_billed(outcome.billed_far)
        trace_batch(batch.records, outcome, started_ns, time.time_ns())
        dead = batch.dead + [
            (batch.stored[index], DeadLetterKind.REJECTED, reason) for index, reason in outcome.rejected.items()
        ]
        dead += [(batch.stored[index], DeadLetterKind.CONFLICT, reason) for index, reason in outcome.conflicts.items()]
        await self._dead_letter_and_ack(dead, [entry_id for entry_id, _ in batch.entries])
        for _, kind, reason in dead:
            # a conflict is work that ran without a bill: someone must look at it
            log.log(
                logging.ERROR if kind is DeadLetterKind.CONFLICT else logging.WARNING,
                "usage entry dead-lettered kind=%s reason=%s",
                kind,
                reason,
            )
            metrics.DEAD_LETTERS.labels(kind).inc()
        metrics.RECORDS_CONSUMED.inc(len(batch.entries))
        metrics.BATCH_SIZE.observe(len(batch.entries))
        metrics.SESSIONS_WRITTEN.inc(outcome.sessions_written)
        metrics.CONTRIBUTIONS_WRITTEN.inc(outcome.contributions_written)
        metrics.DUPLICATES_IGNORED.inc(outcome.duplicates)

    async def _dead_letter_and_ack(
        self, dead: list[tuple[UsageEntry, DeadLetterKind, str]], entry_ids: list[bytes]
    ) -> None:
        letters: list[EncodableT] = []
        for (entry_id, fields), kind, reason in dead:
            letters += [entry_id, parse_entry_id(entry_id)[0], kind.value, reason, self.name, _dead_record(fields)]
        head, rest = entry_ids[:_ACK_CHUNK], entry_ids[_ACK_CHUNK:]
        streams = [keys.USAGE_STREAM, keys.USAGE_DEAD_LETTERS, keys.USAGE_DEAD_LETTER_IDS]
        await self._ack_script(keys=streams, args=[self.group.group, DEAD_LETTER_MAXLEN, len(dead), *letters, *head])
        for start in range(0, len(rest), _ACK_CHUNK):
            await self.group.ack(*rest[start : start + _ACK_CHUNK])

    async def _write_until_stored(self, records: list[UsageRecord]) -> BatchOutcome | None:
        """Write one batch, waiting out a ledger outage with capped exponential backoff; None if told to stop."""
        if not records:
            return BatchOutcome()
        backoff = Backoff(0.1, self.settings.accounting_retry_max_s)
        while True:
            try:
                if self._connection is None or self._connection.is_closed():
                    self._connection = await self.connect()
                return await write_batch(self._connection, records)
            except _LEDGER_ERRORS as exc:
                metrics.LEDGER_RETRIES.inc()
                log.warning(
                    "ledger unavailable (%s: %s); batch of %d kept in redis, retrying in %.1fs",
                    type(exc).__name__,
                    _first_line(exc),
                    len(records),
                    backoff.delay_s,
                )
                await self._drop_connection()
            self.heartbeat.beat()  # waiting for the ledger on purpose; a restart would not bring it back sooner
            if await self._sleep(backoff.take()):
                return None

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
        threshold: EntryId | None = None
        for group in groups:
            name = _text(group["name"])
            # XPENDING may find nothing left when another consumer acknowledged since XINFO: then nothing is pending
            summary = await self.redis.xpending(keys.USAGE_STREAM, name) if group["pending"] else None
            oldest_pending = summary["min"] if summary else None
            low = parse_entry_id(oldest_pending or group["last-delivered-id"])
            threshold = low if threshold is None else min(threshold, low)
            if name == keys.USAGE_CONSUMER_GROUP:
                metrics.PENDING.set(group["pending"])
                if group.get("lag") is not None:
                    metrics.CONSUMER_LAG.set(group["lag"])
        if threshold is not None and threshold > (0, 0):
            await self.redis.xtrim(keys.USAGE_STREAM, minid=format_entry_id(threshold), approximate=True)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500]


def _dead_record(fields: dict[bytes, bytes]) -> bytes:
    """The entry's record as it came, or all its fields as JSON when it has no record field."""
    record = fields.get(USAGE_FIELD.encode())
    if record is None:
        record = json.dumps({_text(k): v.decode(errors="replace") for k, v in fields.items()}).encode()
    return record
