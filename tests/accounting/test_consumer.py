import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import pytest
import redis.asyncio as aioredis

from accounting import consumer as consumer_module
from accounting.batch_writer import BatchOutcome
from accounting.consumer import PARSE_TURN, UsageConsumer, UsageEntry, parse_entries, parse_entries_in_turns
from mesh.ports import free_port
from protocol import keys
from protocol.usage import UsageRecord
from tests.accounting.helpers import consumer_settings, running_consumer, settled
from tests.fixtures.ledger import refused_by_the_ledger, stored_sessions, unique_id, usage_record, wait_until


@pytest.fixture
async def consumer(migrated_postgres_dsn: str, redis_url: str, redis: aioredis.Redis) -> AsyncIterator[UsageConsumer]:
    async with running_consumer(migrated_postgres_dsn, redis_url, redis) as running:
        yield running


async def produced_before_any_consumer(redis: aioredis.Redis, records: list[UsageRecord]) -> None:
    """The consumer group exists (as accounting creates it) and `records` wait in the usage stream."""
    await redis.xgroup_create(keys.USAGE_STREAM, keys.USAGE_CONSUMER_GROUP, id="0", mkstream=True)
    for record in records:
        await redis.xadd(keys.USAGE_STREAM, record.to_stream_fields())


async def test_records_are_stored_once_acknowledged_and_trimmed_from_the_stream(
    consumer: UsageConsumer, redis: aioredis.Redis, migrated_postgres_dsn: str
) -> None:
    nodes = [unique_id("peer") for _ in range(4)]
    records = [usage_record(unique_id("req"), {n: i + 1 for i, n in enumerate(nodes)}) for _ in range(120)]
    for record in records + records[:30]:  # the last 30 are duplicates a retrying worker might send
        await redis.xadd(keys.USAGE_STREAM, record.to_stream_fields())
    await wait_until(lambda: settled(redis), what="every entry acknowledged")
    sessions, rows, paid = await stored_sessions(migrated_postgres_dsn, [r.request_id for r in records])
    assert (sessions, rows) == (120, 480)
    assert paid == sum((c.payment_far for r in records for c in r.contributions), Decimal(0))
    await wait_until(lambda: _xlen_below(redis, 150), what="stream trimmed")


async def _xlen_below(redis: aioredis.Redis, limit: int) -> bool:
    return int(await redis.xlen(keys.USAGE_STREAM)) < limit


async def test_poison_entries_go_to_the_dead_letters_with_their_reason_and_the_rest_is_stored(
    consumer: UsageConsumer, redis: aioredis.Redis, migrated_postgres_dsn: str
) -> None:
    node = unique_id("peer")
    good = [usage_record(unique_id("req"), {node: 1}) for _ in range(3)]
    too_big = refused_by_the_ledger(unique_id("req"), node)
    await redis.xadd(keys.USAGE_STREAM, good[0].to_stream_fields())
    await redis.xadd(keys.USAGE_STREAM, {"record": "{not json"})
    await redis.xadd(keys.USAGE_STREAM, {"something": "else"})
    await redis.xadd(keys.USAGE_STREAM, too_big.to_stream_fields())
    for record in good[1:]:
        await redis.xadd(keys.USAGE_STREAM, record.to_stream_fields())
    await wait_until(lambda: settled(redis), what="every entry acknowledged")
    dead = [fields for _, fields in await redis.xrange(keys.USAGE_DEAD_LETTERS)]
    assert [(d[b"kind"], d[b"reason"].split(b":")[0]) for d in dead] == [
        (b"unparseable", b"1 validation error for UsageRecord Invalid JSON"),
        (b"unparseable", b"usage entry has no 'record' field"),
        (b"rejected", b"CheckViolationError"),  # the ledger's own check refused it
    ]
    assert dead[0][b"record"] == b"{not json"
    assert (await stored_sessions(migrated_postgres_dsn, [r.request_id for r in good]))[0] == 3


async def test_entries_a_dead_consumer_left_pending_are_claimed_and_stored(
    redis: aioredis.Redis, redis_url: str, migrated_postgres_dsn: str
) -> None:
    records = [usage_record(unique_id("req"), {unique_id("peer"): 1}) for _ in range(10)]
    await produced_before_any_consumer(redis, records)
    # A consumer that read everything and died before acknowledging.
    await redis.xreadgroup(keys.USAGE_CONSUMER_GROUP, "ghost", {keys.USAGE_STREAM: ">"}, count=100)
    async with running_consumer(migrated_postgres_dsn, redis_url, redis, accounting_consumer_name="survivor"):
        await wait_until(lambda: settled(redis), what="the ghost's entries acknowledged")
    assert (await stored_sessions(migrated_postgres_dsn, [r.request_id for r in records]))[0] == 10


async def test_the_stream_is_never_trimmed_past_what_another_group_still_needs(
    consumer: UsageConsumer, redis: aioredis.Redis
) -> None:
    await redis.xgroup_create(keys.USAGE_STREAM, "auditors", id="0", mkstream=True)
    for _ in range(20):
        await redis.xadd(keys.USAGE_STREAM, usage_record(unique_id("req"), {unique_id("peer"): 1}).to_stream_fields())
    await wait_until(lambda: settled(redis), what="every entry acknowledged")
    await consumer.trim()
    assert await redis.xlen(keys.USAGE_STREAM) == 20


async def test_an_entry_settled_twice_is_dead_lettered_once(
    redis: aioredis.Redis, redis_url: str, migrated_postgres_dsn: str
) -> None:
    # Two consumers settling the same entries: one claimed them from the other, which was only slow.
    await redis.xgroup_create(keys.USAGE_STREAM, keys.USAGE_CONSUMER_GROUP, id="0", mkstream=True)
    good = usage_record(unique_id("req"), {unique_id("peer"): 1})
    for fields in ({"record": "{not json"}, good.to_stream_fields(), {"record": "[]"}):
        await redis.xadd(keys.USAGE_STREAM, fields)  # type: ignore[arg-type]
    [(_, entries)] = await redis.xreadgroup(keys.USAGE_CONSUMER_GROUP, "slow", {keys.USAGE_STREAM: ">"})
    settings = consumer_settings(migrated_postgres_dsn, redis_url)
    for name in ("slow", "claimer"):
        consumer = UsageConsumer(redis, lambda: asyncpg.connect(migrated_postgres_dsn), settings)
        consumer.name = name
        await consumer.store_and_ack(entries)
        assert consumer._connection is not None
        await consumer._connection.close()
    dead = await redis.xrange(keys.USAGE_DEAD_LETTERS)
    assert [fields[b"entry_id"] for _, fields in dead] == [entries[0][0], entries[2][0]]
    assert {fields[b"consumer"] for _, fields in dead} == {b"slow"}
    assert (await stored_sessions(migrated_postgres_dsn, [good.request_id]))[:2] == (1, 1)
    assert await settled(redis)


async def test_parsing_in_turns_yields_to_the_loop_and_gives_what_parsing_at_once_gives() -> None:
    good = usage_record(unique_id("req"), {unique_id("peer"): 1}).to_stream_fields()
    entries: list[UsageEntry] = [
        (f"1-{i}".encode(), {b"record": b"{not json"} if i % 97 == 0 else {b"record": good["record"].encode()})
        for i in range(3 * PARSE_TURN + 5)
    ]
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count_turns())
    await asyncio.sleep(0)
    in_turns = await parse_entries_in_turns(entries)
    counter.cancel()
    at_once = parse_entries(entries)
    assert turns >= 4  # the loop ran between turns: a batch being written is not kept waiting
    assert (in_turns.entries, in_turns.records, in_turns.stored) == (at_once.entries, at_once.records, at_once.stored)
    assert [entry for entry, _, _ in in_turns.dead] == [entry for entry, _, _ in at_once.dead]
    assert len(in_turns.dead) == 4


async def test_batches_read_ahead_while_the_ledger_is_busy_are_acknowledged_only_after_their_commit(
    redis: aioredis.Redis, redis_url: str, migrated_postgres_dsn: str
) -> None:
    records = [usage_record(unique_id("req"), {unique_id("peer"): 1}) for _ in range(30)]
    await produced_before_any_consumer(redis, records)
    blocker = await asyncpg.connect(migrated_postgres_dsn)
    try:
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("LOCK TABLE far_mesh_sessions IN EXCLUSIVE MODE")  # the consumer's insert waits
        async with running_consumer(migrated_postgres_dsn, redis_url, redis, accounting_batch_size=10):
            await wait_until(lambda: _pending_is(redis, 20), what="a batch in the ledger and one read ahead")
            await asyncio.sleep(0.3)
            assert await _pending_is(redis, 20)  # nothing acknowledged, nothing more read
            await lock.rollback()  # the ledger is free again
            await wait_until(lambda: settled(redis), what="every entry acknowledged")
    finally:
        await blocker.close()
    assert await stored_sessions(migrated_postgres_dsn, [r.request_id for r in records]) == (
        30,
        30,
        sum((r.total_cost_far - r.platform_remainder_far for r in records), Decimal(0)),
    )


async def _pending_is(redis: aioredis.Redis, count: int) -> bool:
    summary = await redis.xpending(keys.USAGE_STREAM, keys.USAGE_CONSUMER_GROUP)
    return bool(summary["pending"] == count)


async def test_several_consumers_in_the_group_store_each_record_once(
    redis: aioredis.Redis, redis_url: str, migrated_postgres_dsn: str
) -> None:
    nodes = [unique_id("peer") for _ in range(4)]  # every record names the same nodes: the consumers share them
    records = [usage_record(unique_id("req"), {n: i + 1 for i, n in enumerate(nodes)}) for _ in range(300)]
    async with (
        running_consumer(migrated_postgres_dsn, redis_url, redis, accounting_consumer_name="one") as one,
        running_consumer(migrated_postgres_dsn, redis_url, redis, accounting_consumer_name="two") as two,
    ):
        for start in range(0, len(records), 25):
            for record in records[start : start + 25]:
                await redis.xadd(keys.USAGE_STREAM, record.to_stream_fields())
            await asyncio.sleep(0.01)
        await wait_until(lambda: settled(redis), what="every entry acknowledged")
        assert one.name != two.name
    sessions, rows, paid = await stored_sessions(migrated_postgres_dsn, [r.request_id for r in records])
    assert (sessions, rows) == (300, 1200)
    assert paid == sum((c.payment_far for r in records for c in r.contributions), Decimal(0))
    assert await redis.xlen(keys.USAGE_DEAD_LETTERS) == 0


async def test_a_record_conflicting_with_the_stored_session_is_dead_lettered_as_a_conflict(
    consumer: UsageConsumer, redis: aioredis.Redis, migrated_postgres_dsn: str
) -> None:
    request_id = unique_id("req")
    await redis.xadd(keys.USAGE_STREAM, usage_record(request_id, {}, tokens_generated=1).to_stream_fields())
    await redis.xadd(keys.USAGE_STREAM, usage_record(request_id, {}, tokens_generated=40).to_stream_fields())
    await wait_until(lambda: settled(redis), what="both records settled")
    (letter,) = [fields for _, fields in await redis.xrange(keys.USAGE_DEAD_LETTERS)]
    assert letter[b"kind"] == b"conflict" and b"ran twice" in letter[b"reason"]
    assert (await stored_sessions(migrated_postgres_dsn, [request_id]))[0] == 1


async def test_trimming_survives_pending_entries_acknowledged_between_its_two_reads(
    consumer: UsageConsumer, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """XINFO said some were pending; by the XPENDING another consumer had acknowledged them all."""
    consumer.stop()  # the test drives trim() itself; the running loop must not store the entry first
    await redis.xgroup_create(keys.USAGE_STREAM, "audit", id="0", mkstream=True)  # another group reading it
    await redis.xadd(keys.USAGE_STREAM, usage_record(unique_id("req"), {}).to_stream_fields())
    await redis.xreadgroup("audit", "other", {keys.USAGE_STREAM: ">"})

    async def acknowledged_meanwhile(*args: object) -> dict[str, object]:
        return {"pending": 0, "min": None, "max": None, "consumers": []}

    monkeypatch.setattr(redis, "xpending", acknowledged_meanwhile)
    await consumer.trim()


async def test_told_to_stop_while_postgres_is_down_it_leaves_the_batch_pending_for_a_successor(
    migrated_postgres_dsn: str, redis_url: str, redis: aioredis.Redis
) -> None:
    """Acknowledging a batch the ledger never stored would lose those usage records for good."""
    records = [usage_record(unique_id("req"), {}) for _ in range(5)]
    await produced_before_any_consumer(redis, records)
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    settings = consumer_settings(nowhere, redis_url, accounting_retry_max_s=0.2)
    stranded = UsageConsumer(redis, lambda: asyncpg.connect(nowhere, timeout=1), settings)
    task = asyncio.create_task(stranded.run())
    async with asyncio.timeout(10):
        while (await redis.xpending(keys.USAGE_STREAM, keys.USAGE_CONSUMER_GROUP))["pending"] < len(records):
            await asyncio.sleep(0.05)  # it read the batch and is waiting for the ledger
    await asyncio.sleep(0.5)
    stranded.stop()
    await asyncio.wait_for(task, 10)

    assert (await redis.xpending(keys.USAGE_STREAM, keys.USAGE_CONSUMER_GROUP))["pending"] == len(records)
    assert await redis.xlen(keys.USAGE_DEAD_LETTERS) == 0
    async with running_consumer(migrated_postgres_dsn, redis_url, redis, accounting_claim_idle_ms=100):
        await wait_until(lambda: settled(redis), what="the successor stored the stranded batch")
    assert (await stored_sessions(migrated_postgres_dsn, [r.request_id for r in records]))[0] == len(records)


async def test_a_connection_left_mid_operation_is_replaced_and_the_batch_stored_on_a_new_one(
    migrated_postgres_dsn: str, redis_url: str, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL went away under a transaction: the connection's next one raised InternalClientError ("another
    operation is in progress"), which the consumer did not retry, and accounting exited (the chaos soak, seed 33)."""
    records = [usage_record(unique_id("req"), {unique_id("peer"): 1}) for _ in range(5)]
    await produced_before_any_consumer(redis, records)
    opened: list[asyncpg.Connection] = []

    async def connect() -> asyncpg.Connection:
        opened.append(await asyncpg.connect(migrated_postgres_dsn))
        return opened[-1]

    real_write = consumer_module.write_batch

    async def left_mid_operation_once(connection: asyncpg.Connection, batch: list[UsageRecord]) -> BatchOutcome:
        if len(opened) == 1:
            raise asyncpg.exceptions.InternalClientError("cannot switch to state 15; another operation is in progress")
        return await real_write(connection, batch)

    monkeypatch.setattr(consumer_module, "write_batch", left_mid_operation_once)
    settings = consumer_settings(migrated_postgres_dsn, redis_url, accounting_retry_max_s=0.2)
    consumer = UsageConsumer(redis, connect, settings)
    task = asyncio.create_task(consumer.run())
    try:
        await wait_until(lambda: settled(redis), what="the batch stored on a new connection")
        assert not task.done()
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 10)
    assert len(opened) == 2 and opened[0].is_closed()  # the first was terminated, not reused
    assert (await stored_sessions(migrated_postgres_dsn, [r.request_id for r in records]))[0] == len(records)
