"""The token-stream relay: a few reader tasks per process, each one `XREAD BLOCK` over many clients' streams.

One blocking connection per client costs ~10x the latency at a thousand streams (docs/architecture.md,
"Baselines"), so each reader blocks on the streams of all its subscriptions at once and fans entries out to
per-client queues.
Every reader also blocks on its own wake stream: a new subscription appends to it, so the reader re-issues its
XREAD with the new stream at once instead of after its block timeout.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from protocol import keys
from protocol.backoff import Backoff
from protocol.events import DATA_FIELD, EVENT_KINDS, FINAL_KINDS, KIND_FIELD
from protocol.stream_ids import BEFORE_FIRST, EntryId, format_entry_id, parse_entry_id

log = logging.getLogger(__name__)

# Encoded once here: the reader compares raw field names and kinds, never decoding or encoding per entry.
_KIND_FIELD = KIND_FIELD.encode()
_DATA_FIELD = DATA_FIELD.encode()
_KINDS = {kind.encode(): kind for kind in EVENT_KINDS}
_WAKE_FIELDS: dict[FieldT, EncodableT] = {keys.RELAY_WAKE_FIELD: "1"}
WAKE_STREAM_TTL_S = 24 * 3600
ObserveLatencies = Callable[[list[float]], None]
"""Takes the XADD-to-read delays (seconds) of the entries one read brought in."""


@dataclass(slots=True)
class Entry:
    """One token-stream entry: its id (the SSE event id), its kind and its JSON `data` (the SSE payload, as bytes,
    since it is forwarded without ever being decoded).

    Read-only by convention, not `frozen`: every follower of a stream gets the same objects, but a frozen dataclass
    took four times as long to build (its `__init__` goes through `object.__setattr__`), once per relayed token."""

    entry_id: str
    kind: str
    data: bytes

    @property
    def final(self) -> bool:
        return self.kind in FINAL_KINDS


class Subscription:
    """One client's view of one token stream, starting after `after_id`; the reader fills it, the client drains it.

    A list and one waiting future rather than an `asyncio.Queue`: the relay hands over a batch per token and
    client, so the queue's bookkeeping showed up in profiles. Entries that pile up while the consumer's last write
    to its client is still stuck are bounded by `max_unsent_bytes`: a client that stops reading is cut off
    (`ended_by == "overflow"`) instead of making them grow without end.
    """

    __slots__ = (
        "stream",
        "cursor",
        "joined_read",
        "max_unsent_bytes",
        "on_abort",
        "writing",
        "_pending",
        "_pending_bytes",
        "_waiter",
        "_closed",
        "_busy",
        "_keepalive_due",
        "_ended_by",
    )

    def __init__(self, stream: str, after_id: str, *, max_unsent_bytes: int = 2**62) -> None:
        self.stream = stream
        self.cursor = parse_entry_id(after_id)
        self.joined_read = 0
        """The number of its reader's XREADs sent when it joined: the reply to one sent before cannot hold all of
        what it is owed (that read may have started past its cursor), so it takes nothing from that reply."""
        self.max_unsent_bytes = max_unsent_bytes
        self.on_abort: Callable[[], None] = lambda: None
        """Called when the relay ends the subscription (deadline, overflow): the consumer may be stuck writing."""
        self.writing = False
        """Set by the consumer while it writes a batch to its client."""
        self._pending: list[Entry] = []
        self._pending_bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._busy = True
        self._keepalive_due = False
        self._ended_by: str | None = None

    def deliver(self, entries: list[tuple[EntryId, Entry]]) -> None:
        """Take the entries newer than the cursor (`entries` are in stream order, with their parsed ids)."""
        cursor = self.cursor
        if len(entries) == 1:  # a stream gets one token per read, nearly always: no lists to build
            parsed, entry = entries[0]
            if parsed <= cursor:
                return
            self.cursor = parsed
            self._pending.append(entry)
            self._pending_bytes += len(entry.data)
        else:
            fresh = [entry for parsed, entry in entries if parsed > cursor]
            if not fresh:
                return
            self.cursor = entries[-1][0]
            self._pending.extend(fresh)
            self._pending_bytes += sum(len(entry.data) for entry in fresh)
        self._busy = True
        if self.writing and self._pending_bytes > self.max_unsent_bytes:
            self.end("overflow")
        self._wake()

    def tick(self) -> None:
        """Called every keep-alive interval: a subscription that got nothing since the last tick gets an empty batch."""
        if not self._busy and not self._pending:
            self._keepalive_due = True
            self._wake()
        self._busy = False

    def interrupt(self) -> None:
        """Wake the consumer with no entries (the client went away)."""
        self._closed = True
        self._wake()

    def end(self, reason: str) -> None:
        """End the subscription for the relay's own `reason` ("deadline", "overflow"); the client is still there."""
        if self._ended_by is None:
            self._ended_by = reason
            self.interrupt()
            self.on_abort()

    @property
    def interrupted(self) -> bool:
        """The client went away (not: the relay ended the subscription)."""
        return self._closed and self._ended_by is None

    @property
    def ended_by(self) -> str | None:
        return self._ended_by

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next_batch(self) -> list[Entry] | None:
        """Every entry delivered since the last call: [] when idle for a keep-alive interval, None if interrupted
        (after the entries delivered before the interruption)."""
        while not (self._pending or self._closed or self._keepalive_due):
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._pending and self._ended_by is None:
            batch, self._pending, self._pending_bytes = self._pending, [], 0
            return batch
        if self._closed:
            return None
        self._keepalive_due = False
        return []


def _bulk(text: str) -> bytes:
    data = text.encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


class _Reader:
    """One task, one dedicated connection, one XREAD BLOCK over the streams of all its subscriptions.

    The XREAD command is packed by hand from per-stream pieces cached between calls: with hundreds of streams
    per call, redis-py's generic packing of every argument on every call cost more CPU than the relaying itself.
    """

    def __init__(self, redis: aioredis.Redis, reader_id: str, block_ms: int, observe_latencies_s: ObserveLatencies):
        self.redis = redis
        self.wake_key = keys.relay_wake(reader_id)
        self.observe_latencies_s = observe_latencies_s
        self.subscriptions: dict[str, set[Subscription]] = {}
        self.load = 0
        """How many subscriptions this reader serves."""
        self.wake_id = BEFORE_FIRST
        self.wake_pending = False
        self.reads = 0
        """XREADs sent so far; the reply in hand answers the last one."""
        self.task: asyncio.Task[None] | None = None
        self._head = b"$5\r\nXREAD\r\n$5\r\nCOUNT\r\n$3\r\n512\r\n$5\r\nBLOCK\r\n" + _bulk(str(block_ms))
        self._head += b"$7\r\nSTREAMS\r\n"
        self._key_bulks: dict[str, bytes] = {}
        self._id_bulks: dict[str, bytes] = {}
        self._keys_part: tuple[list[str], bytes] | None = None
        """The streams in command order and their packed names, until a stream joins or leaves."""

    def add(self, sub: Subscription) -> None:
        sub.joined_read = self.reads
        self.subscriptions.setdefault(sub.stream, set()).add(sub)
        self.load += 1
        if sub.stream not in self._key_bulks:
            self._key_bulks[sub.stream] = _bulk(sub.stream)
            self._keys_part = None
        self._track(sub.stream)

    def remove(self, sub: Subscription) -> None:
        followers = self.subscriptions.get(sub.stream)
        if followers is None or sub not in followers:
            return
        followers.discard(sub)
        self.load -= 1
        if followers:
            self._track(sub.stream)
        else:
            del self.subscriptions[sub.stream]
            self._key_bulks.pop(sub.stream, None)
            self._id_bulks.pop(sub.stream, None)
            self._keys_part = None

    def _track(self, stream: str) -> None:
        """Read `stream` from the earliest position any of its subscriptions still needs."""
        self._id_bulks[stream] = _bulk(format_entry_id(min(sub.cursor for sub in self.subscriptions[stream])))

    def _command(self) -> bytes:
        if self._keys_part is None:
            streams = list(self._key_bulks)
            self._keys_part = streams, b"".join([self._key_bulks[s] for s in streams])
        streams, packed_keys = self._keys_part
        ids = self._id_bulks
        header = b"*%d\r\n" % (8 + 2 * len(streams))
        return b"".join(
            [header, self._head, _bulk(self.wake_key), packed_keys, _bulk(self.wake_id), *map(ids.__getitem__, streams)]
        )

    async def wake(self) -> None:
        if self.wake_pending:
            return  # an XADD not yet read by the reader will make it rebuild its stream list anyway
        self.wake_pending = True
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(self.wake_key, _WAKE_FIELDS, maxlen=1, approximate=False)
            pipe.expire(self.wake_key, WAKE_STREAM_TTL_S)
            await pipe.execute()

    async def run(self) -> None:
        # not connected yet: the first send connects, so a Redis that is down at start-up is retried like later
        connection = self.redis.connection_pool.get_available_connection()  # type: ignore[no-untyped-call]
        try:
            await self._read_forever(connection)
        finally:
            await connection.disconnect()  # it may be mid-reply; never hand it back to the pool
            await self.redis.connection_pool.release(connection)

    async def _read_forever(self, connection: Any) -> None:
        backoff = Backoff(0.1, 5.0)
        while True:
            self.wake_pending = False
            self.reads += 1
            try:
                await connection.send_packed_command(self._command(), check_health=False)
                reply = await connection.read_response()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                await connection.disconnect()
                log.warning("relay reader lost redis: %s; retrying in %.1fs", type(exc).__name__, backoff.delay_s)
                await backoff.sleep()
                continue
            except Exception:  # a reader that dies would silently stall every client it serves
                await connection.disconnect()
                log.exception("relay reader failed; retrying in %.1fs", backoff.delay_s)
                await backoff.sleep()
                continue
            backoff.reset()
            if reply:
                self._fan_out(reply)

    def _fan_out(self, reply: list[Any]) -> None:
        now_ms = time.time() * 1000.0
        delays_s: list[float] = []
        for raw_stream, raw_entries in reply:
            stream = raw_stream.decode()
            if stream == self.wake_key:
                self.wake_id = raw_entries[-1][0].decode()
                continue
            followers = self.subscriptions.get(stream)
            if not followers:
                continue
            entries = [_parse_entry(raw_id, flat) for raw_id, flat in raw_entries]
            delays_s.extend([max(0.0, now_ms - parsed[0]) / 1000.0 for parsed, _ in entries])
            if len(followers) == 1 and (only := next(iter(followers))).joined_read < self.reads:
                # one follower (nearly always), there when the read was sent: it takes every entry, as the read
                # started at its cursor
                only.deliver(entries)
                last_id = raw_entries[-1][0]
                self._id_bulks[stream] = b"$%d\r\n%s\r\n" % (len(last_id), last_id)
            else:
                # A follower that joined while the read was out may be owed entries before those it brought (a
                # client resuming from an earlier id): it waits for the next read, sent from its cursor.
                for sub in tuple(followers):
                    if sub.joined_read < self.reads:
                        sub.deliver(entries)
                self._track(stream)
        self.observe_latencies_s(delays_s)


def _parse_entry(raw_id: bytes, flat: list[bytes]) -> tuple[EntryId, Entry]:
    """A token-stream entry as Redis returns it, with its parsed id (for comparisons with cursors).

    Redis issued the id, so it is parsed without `parse_entry_id`'s checks (they cost more than the rest)."""
    if len(flat) == 4 and flat[0] == _KIND_FIELD and flat[2] == _DATA_FIELD:  # as every writer lays it out
        kind, data = flat[1], flat[3]
    else:
        kind, data = b"", b"{}"
        for name, value in zip(flat[::2], flat[1::2], strict=True):
            if name == _KIND_FIELD:
                kind = value
            elif name == _DATA_FIELD:
                data = value
    ms, _, seq = raw_id.partition(b"-")
    return (int(ms), int(seq)), Entry(raw_id.decode(), _KINDS.get(kind, "unknown"), data)


class StreamRelay:
    """Owns the reader tasks of one gateway process; `subscribe` a client, `unsubscribe` it when it is done."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        readers: int,
        keepalive_s: float = 15.0,
        block_ms: int = 5000,
        observe_latencies_s: ObserveLatencies = lambda _: None,
    ) -> None:
        """`redis` must not decode responses, and have no socket timeout shorter than `block_ms`."""
        process_id = uuid.uuid4().hex[:12]
        self._keepalive_s = keepalive_s
        self._ticker: asyncio.Task[None] | None = None
        self._readers = [_Reader(redis, f"{process_id}:{i}", block_ms, observe_latencies_s) for i in range(readers)]
        self._reader_of: dict[Subscription, _Reader] = {}

    def start(self) -> None:
        for reader in self._readers:
            reader.task = asyncio.create_task(reader.run(), name=f"relay-reader:{reader.wake_key}")
        self._ticker = asyncio.create_task(self._tick_forever(), name="relay-keepalive")
        log.info("relay started readers=%d", len(self._readers))

    async def stop(self) -> None:
        tasks = [t for t in (self._ticker, *(r.task for r in self._readers)) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        log.info("relay stopped")

    async def _tick_forever(self) -> None:
        """One timer for every client's keep-alive, rather than a timeout on each client's every wait."""
        while True:
            await asyncio.sleep(self._keepalive_s)
            for sub in tuple(self._reader_of):
                sub.tick()

    async def subscribe(
        self, stream: str, after_id: str = BEFORE_FIRST, *, max_unsent_bytes: int = 2**62
    ) -> Subscription:
        """Start relaying `stream` entries newer than `after_id` (a valid entry id) to a new subscription."""
        sub = Subscription(stream, after_id, max_unsent_bytes=max_unsent_bytes)
        reader = next((r for r in self._readers if stream in r.subscriptions), None)
        reader = reader or min(self._readers, key=lambda r: r.load)
        reader.add(sub)
        self._reader_of[sub] = reader
        try:
            await reader.wake()
        except BaseException:
            self.unsubscribe(sub)
            raise
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget `sub`; its stream leaves the reader's next XREAD when no other client follows it."""
        reader = self._reader_of.pop(sub, None)
        if reader is not None:
            reader.remove(sub)

    @property
    def subscriptions(self) -> int:
        return len(self._reader_of)
