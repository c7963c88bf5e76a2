"""The consumer as a real process, killed at the worst moments: after restart, exactly one row per record."""

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from devstack.postgres_server import EmbeddedPostgres
from protocol import keys
from protocol.usage import UsageRecord
from schema.migrate import apply_migrations
from tests.accounting.helpers import running_consumer, settled
from tests.fixtures.ledger import stored_sessions, unique_id, usage_record, wait_until


def start_consumer(
    dsn: str, redis_url: str, name: str, *, command: tuple[str, ...] = ("cli", "accounting")
) -> subprocess.Popen[bytes]:
    """`far-mesh accounting` as its own process (`command`: the module to run with -m, and its arguments)."""
    environment = os.environ | {
        "POSTGRES_URL": dsn,
        "REDIS_URL": redis_url,
        "ACCOUNTING_CONSUMER_NAME": name,
        "ACCOUNTING_BATCH_SIZE": "100",
        "ACCOUNTING_BATCH_WAIT_MS": "20",
        "ACCOUNTING_CLAIM_IDLE_MS": "300",
        "ACCOUNTING_CLAIM_INTERVAL_S": "0.1",
        "ACCOUNTING_METRICS_PORT": "0",
        "LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen([sys.executable, "-m", *command], env=environment, start_new_session=True)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


async def produce(redis: aioredis.Redis, count: int, nodes: int = 3) -> list[UsageRecord]:
    peers = [unique_id("peer") for _ in range(nodes)]
    records = [usage_record(unique_id("req"), {p: i + 1 for i, p in enumerate(peers)}) for _ in range(count)]
    async with redis.pipeline(transaction=False) as pipe:
        for record in records:
            pipe.xadd(keys.USAGE_STREAM, record.to_stream_fields())
        await pipe.execute()
    return records


async def assert_exactly_once(dsn: str, records: list[UsageRecord]) -> None:
    expected_paid = sum((c.payment_far for r in records for c in r.contributions), Decimal(0))
    expected_rows = sum(len(r.contributions) for r in records)
    assert await stored_sessions(dsn, [r.request_id for r in records]) == (len(records), expected_rows, expected_paid)


async def test_a_consumer_killed_after_commit_but_before_ack_stores_nothing_twice(
    redis: aioredis.Redis, redis_url: str, migrated_postgres_dsn: str, processes: list[subprocess.Popen[bytes]]
) -> None:
    records = await produce(redis, 250)
    processes.append(
        start_consumer(
            migrated_postgres_dsn, redis_url, "crashy", command=("tests.accounting.consumer_dying_after_commit",)
        )
    )
    assert await asyncio.to_thread(processes[-1].wait, 60) == -signal.SIGKILL
    assert (await stored_sessions(migrated_postgres_dsn, [r.request_id for r in records]))[0] > 0
    assert (await redis.xpending(keys.USAGE_STREAM, keys.USAGE_CONSUMER_GROUP))["pending"] > 0
    processes.append(start_consumer(migrated_postgres_dsn, redis_url, "crashy"))  # same name: its own backlog first
    await wait_until(lambda: settled(redis), timeout_s=60, what="every entry acknowledged")
    await assert_exactly_once(migrated_postgres_dsn, records)


async def test_a_consumer_killed_mid_batch_loses_nothing_once_another_claims_its_entries(
    redis: aioredis.Redis, redis_url: str, migrated_postgres_dsn: str, processes: list[subprocess.Popen[bytes]]
) -> None:
    records = await produce(redis, 3000)
    request_ids = [r.request_id for r in records]
    processes.append(start_consumer(migrated_postgres_dsn, redis_url, "doomed"))

    async def some_written() -> bool:
        return (await stored_sessions(migrated_postgres_dsn, request_ids))[0] > 0

    await wait_until(some_written, timeout_s=60, what="a first batch committed")
    os.killpg(processes[-1].pid, signal.SIGKILL)
    processes[-1].wait(10)
    assert (await stored_sessions(migrated_postgres_dsn, request_ids))[0] < len(records)
    processes.append(start_consumer(migrated_postgres_dsn, redis_url, "heir"))
    await wait_until(lambda: settled(redis), timeout_s=120, what="every entry acknowledged")
    await assert_exactly_once(migrated_postgres_dsn, records)


async def test_sigterm_finishes_the_batch_in_hand_then_exits_cleanly(
    redis: aioredis.Redis, redis_url: str, migrated_postgres_dsn: str, processes: list[subprocess.Popen[bytes]]
) -> None:
    records = await produce(redis, 2000)
    processes.append(start_consumer(migrated_postgres_dsn, redis_url, "polite"))

    async def some_written() -> bool:
        return (await stored_sessions(migrated_postgres_dsn, [r.request_id for r in records]))[0] > 0

    await wait_until(some_written, timeout_s=60, what="a first batch committed")
    processes[-1].send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(processes[-1].wait, 30) == 0
    pending = await redis.xpending(keys.USAGE_STREAM, keys.USAGE_CONSUMER_GROUP)
    assert pending["pending"] == 0  # whatever it read, it wrote and acknowledged before leaving


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(Path(tmp_path_factory.mktemp("ledger-pg"))).start()
    asyncio.run(apply_migrations(server.dsn()))
    yield server
    server.cleanup()


async def test_records_wait_in_redis_while_postgres_is_down_and_are_stored_when_it_returns(
    redis: aioredis.Redis, redis_url: str, own_postgres: EmbeddedPostgres
) -> None:
    dsn = own_postgres.dsn()
    async with running_consumer(dsn, redis_url, redis, accounting_retry_max_s=0.5):
        before = await produce(redis, 50)
        await wait_until(lambda: settled(redis), timeout_s=60, what="first records acknowledged")
        await asyncio.to_thread(own_postgres.stop)
        try:
            during = await produce(redis, 50)
            await asyncio.sleep(1.5)
            assert not await settled(redis)  # nothing acknowledged while nothing can be written
        finally:
            await asyncio.to_thread(own_postgres.restart)
        await wait_until(lambda: settled(redis), timeout_s=60, what="records written after the restart")
    await assert_exactly_once(dsn, before + during)
    connection = await asyncpg.connect(dsn)
    try:
        assert await connection.fetchval("SELECT count(*) FROM far_mesh_sessions") == 100
    finally:
        await connection.close()
