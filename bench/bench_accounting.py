"""Accounting throughput and lag, against plain `executemany` and bare staged-COPY baselines measured in the same run.

1. Baselines: the same sessions and contribution rows written with `executemany` (INSERT ... ON CONFLICT), and
   written by a bare staged COPY (binary COPY into temporary tables, then INSERT ... SELECT ... ON CONFLICT DO
   NOTHING into the ledger's tables, one transaction per 1,000 records: the idempotent write at its cheapest,
   docs/architecture.md's "Baselines"), run just before the consumer; then that staged COPY again with each
   session's charge entry and lines staged and inserted the same way (the rows the consumer writes, schema/0022).
   The target (#32 item 4) is the consumer at >= 0.8x the staged COPY, one consumer. Each baseline's PostgreSQL
   backend CPU per 1,000 records is printed beside the consumer's: on two shared cores, wall-clock rates move
   with the machine's load, the CPU per record much less.
2. Consumer: records pre-loaded into the usage stream, drained by one in-process `UsageConsumer`
   (parse, COPY sessions and contributions, one transaction per batch, XACK): records/s and contribution
   rows/s. The target is 50,000 contribution rows/s.
   Then, with --consumers N > 1 (default 2, one per core here), the same drained by N consumer processes in
   the group, each run as `far-mesh accounting` runs: how replicas share the stream, and what meets the target
   on 2 cores (one consumer process, waiting on PostgreSQL and PostgreSQL on it, keeps about one core busy).
3. Lag: a producer process XADDs at a fixed rate; lag = acknowledgement (after commit) minus XADD time.
   The target is p99 <= 1 s at 2,000 sessions/s.

Run: .venv/bin/python bench/bench_accounting.py [--records 20000] [--nodes 4] [--rate 2000] [--seconds 5]
     [--consumers 2]
Uses a private redis-server and a fresh database on TEST_POSTGRES_URL (default 127.0.0.1:5432), dropped after.
"""

import argparse
import asyncio
import multiprocessing
import multiprocessing.synchronize
import os
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from accounting import collector
from accounting.batch_writer import (
    CONTRIBUTION_COLUMNS,
    SESSION_COLUMNS,
    contribution_rows,
    session_id_for,
    session_row,
)
from accounting.consumer import ParsedBatch, UsageConsumer
from accounting.journal import PLATFORM_FEES, PLATFORM_REMAINDER, UNATTRIBUTED, buyer_account, provider_account
from accounting.settings import AccountingSettings
from devstack.harness.interrupts import interrupt_on_signals
from devstack.postgres_server import create_database_if_missing, drop_database
from devstack.redis_server import RedisServer
from devstack.services import with_database
from protocol import keys
from protocol.money import cost_of, split_payment
from protocol.stream_ids import parse_entry_id
from protocol.usage import NodeContribution, UsageRecord
from protocol.wallet import to_checksum_address
from schema.migrate import apply_migrations

ADMIN_DSN = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def make_records(count: int, nodes: int) -> list[UsageRecord]:
    peers = [f"12D3KooW{uuid.uuid4().hex[:30]}" for _ in range(nodes)]
    wallets = {p: to_checksum_address("0x" + uuid.uuid4().hex + "0" * 8) for p in peers}
    price = Decimal("0.0001")
    records = []
    now = datetime.now(UTC)
    for _ in range(count):
        work = {p: i + 1 for i, p in enumerate(peers)}
        cost = cost_of(20, price)
        payments, remainder = split_payment(cost, work)
        records.append(
            UsageRecord(
                request_id=uuid.uuid4().hex,
                model_id="bench/model",
                status="completed",
                prompt_tokens=5,
                tokens_generated=20,
                price_per_token_far=price,
                total_cost_far=cost,
                platform_remainder_far=remainder,
                started_at=now,
                finished_at=now + timedelta(seconds=1),
                worker_id="bench",
                contributions=tuple(
                    NodeContribution(
                        node_id=p,
                        wallet=wallets[p],
                        blocks_served=2,
                        tokens_contributed=25,
                        work_units=w,
                        payment_far=payments[p],
                    )
                    for p, w in work.items()
                ),
            )
        )
    return records


async def baseline(dsn: str, records: list[UsageRecord]) -> float:
    connection = await asyncpg.connect(dsn)
    columns = ", ".join(SESSION_COLUMNS)
    params = ", ".join(f"${i}" for i in range(1, len(SESSION_COLUMNS) + 1))
    try:
        started = time.perf_counter()
        for i in range(0, len(records), 1000):
            chunk = records[i : i + 1000]
            async with connection.transaction():
                await connection.executemany(
                    "INSERT INTO far_nodes (node_id) VALUES ($1) ON CONFLICT DO NOTHING",
                    sorted({(c.node_id,) for r in chunk for c in r.contributions}),
                )
                await connection.executemany(
                    f"INSERT INTO far_mesh_sessions ({columns}) VALUES ({params}) ON CONFLICT DO NOTHING",
                    [session_row(r, session_id_for(r.request_id)) for r in chunk],
                )
                await connection.executemany(
                    f"INSERT INTO far_session_contributions ({', '.join(CONTRIBUTION_COLUMNS)})"
                    f" VALUES ({', '.join(f'${i}' for i in range(1, len(CONTRIBUTION_COLUMNS) + 1))})"
                    " ON CONFLICT DO NOTHING",
                    [row for r in chunk for row in contribution_rows(r, session_id_for(r.request_id))],
                )
        return time.perf_counter() - started
    finally:
        await connection.close()


def charge_lines(record: UsageRecord) -> list[tuple[str, Decimal]]:
    """The lines of a session's charge entry (schema/0022), written out by hand for the staged baseline."""
    buyer = buyer_account(record.user_wallet) if record.user_wallet else UNATTRIBUTED
    lines = [(buyer, record.total_cost_far)]
    lines += [(provider_account(c.node_id), -c.payment_far) for c in record.contributions if c.payment_far > 0]
    if record.platform_fee_far > 0:
        lines.append((PLATFORM_FEES, -record.platform_fee_far))
    if record.platform_remainder_far > 0:
        lines.append((PLATFORM_REMAINDER, -record.platform_remainder_far))
    return lines


async def staged_copy(dsn: str, records: list[UsageRecord], *, journal: bool) -> tuple[float, float | None]:
    """Seconds a bare staged COPY takes to store `records`, and its PostgreSQL backend's CPU seconds: no parsing,
    no Redis, no function; with `journal`, each session's charge entry and lines too, staged the same way."""
    connection = await asyncpg.connect(dsn)
    session_columns = (*SESSION_COLUMNS, "finalized_at")
    contribution_columns = CONTRIBUTION_COLUMNS
    try:
        await connection.execute(
            f"CREATE TEMPORARY TABLE stage_sessions ON COMMIT DELETE ROWS AS"
            f" SELECT {', '.join(session_columns)} FROM far_mesh_sessions WITH NO DATA;"
            f"CREATE TEMPORARY TABLE stage_contributions ON COMMIT DELETE ROWS AS"
            f" SELECT {', '.join(contribution_columns)} FROM far_session_contributions WITH NO DATA;"
            "CREATE TEMPORARY TABLE stage_entries ON COMMIT DELETE ROWS AS"
            " SELECT kind, reference, memo FROM far_journal_entries WITH NO DATA;"
            "CREATE TEMPORARY TABLE stage_lines ON COMMIT DELETE ROWS AS"
            " SELECT entry_id, account, amount_far FROM far_journal_lines WITH NO DATA"
        )
        finalized_at = datetime.now(UTC)
        cpu_before = backend_cpu_s(connection.get_server_pid())
        started = time.perf_counter()
        for i in range(0, len(records), 1000):
            chunk = records[i : i + 1000]
            ids = [session_id_for(r.request_id) for r in chunk]
            nodes = sorted({c.node_id: c.wallet for r in chunk for c in r.contributions}.items())
            async with connection.transaction():
                await connection.execute(
                    "INSERT INTO far_nodes (node_id, wallet) SELECT * FROM unnest($1::text[], $2::text[])"
                    " ON CONFLICT DO NOTHING",
                    [n for n, _ in nodes],
                    [w for _, w in nodes],
                )
                await connection.copy_records_to_table(
                    "stage_sessions",
                    records=[(*session_row(r, i), finalized_at) for r, i in zip(chunk, ids, strict=True)],
                    columns=session_columns,
                )
                await connection.execute(
                    f"INSERT INTO far_mesh_sessions ({', '.join(session_columns)})"
                    f" SELECT {', '.join(session_columns)} FROM stage_sessions ON CONFLICT DO NOTHING"
                )
                await connection.copy_records_to_table(
                    "stage_contributions",
                    records=[row for r, i in zip(chunk, ids, strict=True) for row in contribution_rows(r, i)],
                    columns=contribution_columns,
                )
                await connection.execute(
                    f"INSERT INTO far_session_contributions ({', '.join(contribution_columns)})"
                    f" SELECT {', '.join(contribution_columns)} FROM stage_contributions ON CONFLICT DO NOTHING"
                )
                if journal:
                    await stage_charges(connection, chunk)
        took = time.perf_counter() - started
        cpu_after = backend_cpu_s(connection.get_server_pid())
        return took, None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    finally:
        await connection.close()


async def stage_charges(connection: asyncpg.Connection, chunk: list[UsageRecord]) -> None:
    """The charge entries of `chunk` and their lines, each staged by COPY and inserted from the stage."""
    lines = {r.request_id: charge_lines(r) for r in chunk}
    await connection.execute(
        "INSERT INTO far_journal_accounts (name) SELECT unnest($1::text[]) ORDER BY 1 ON CONFLICT DO NOTHING",
        sorted({account for entry in lines.values() for account, _ in entry}),
    )
    await connection.copy_records_to_table(
        "stage_entries",
        records=[("charge", r.request_id, f"{r.total_cost_far} FAR for session {r.request_id}") for r in chunk],
        columns=("kind", "reference", "memo"),
    )
    entries = await connection.fetch(
        "INSERT INTO far_journal_entries (kind, reference, memo) SELECT * FROM stage_entries ORDER BY reference"
        " RETURNING id, reference"
    )
    await connection.copy_records_to_table(
        "stage_lines",
        records=[(e["id"], account, amount) for e in entries for account, amount in lines[e["reference"]]],
        columns=("entry_id", "account", "amount_far"),
    )
    await connection.execute("INSERT INTO far_journal_lines SELECT * FROM stage_lines")


def cpu_ms(seconds: float | None, records: int) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000 * 1000 / records:.0f} ms"


def backend_cpu_s(pid: int) -> float | None:
    """CPU seconds a local PostgreSQL backend has used (None when the server is not on this machine)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class TimedConsumer(UsageConsumer):
    """Notes when each entry was acknowledged (after its batch committed), and the CPU its ledger work used."""

    acked_at: dict[bytes, float]
    ledger_cpu_s: float | None = None

    async def store_and_ack_parsed(self, batch: ParsedBatch) -> None:
        await super().store_and_ack_parsed(batch)
        now = time.time()
        for entry_id, _ in batch.entries:
            self.acked_at[entry_id] = now


async def drain(redis: aioredis.Redis, dsn: str, settings: AccountingSettings, expected: int) -> TimedConsumer:
    consumer = TimedConsumer(redis, lambda: asyncpg.connect(dsn), settings)
    consumer.acked_at = {}
    task = asyncio.create_task(consumer.run())
    while len(consumer.acked_at) < expected:
        await asyncio.sleep(0.01)
    if consumer._connection is not None:  # its backend's CPU, read before the consumer closes it
        consumer.ledger_cpu_s = backend_cpu_s(consumer._connection.get_server_pid())
    consumer.stop()
    await task
    return consumer


def consume_until_stopped(settings: AccountingSettings, stop: "multiprocessing.synchronize.Event") -> None:
    """One consumer process, as `far-mesh accounting` runs it, until `stop` is set."""

    async def run() -> None:
        redis = aioredis.Redis.from_url(str(settings.redis_url))
        consumer = UsageConsumer(redis, lambda: asyncpg.connect(settings.postgres_url), settings)
        collector.tune_for_batches()
        task = asyncio.create_task(consumer.run())
        while not stop.is_set():
            await asyncio.sleep(0.05)
        consumer.stop()
        await task
        await redis.aclose()

    asyncio.run(run())


async def drain_with_processes(redis: aioredis.Redis, settings: AccountingSettings, count: int, expected: int) -> float:
    """Seconds `count` consumer processes take from the group's first delivery to `expected` entries acknowledged."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    processes = [
        context.Process(
            target=consume_until_stopped,
            args=(settings.model_copy(update={"accounting_consumer_name": f"bench-{i}"}), stop),
        )
        for i in range(count)
    ]
    for process in processes:
        process.start()
    started: float | None = None
    try:
        while True:
            [group] = [
                g
                for g in await redis.xinfo_groups(keys.USAGE_STREAM)
                if g["name"] == keys.USAGE_CONSUMER_GROUP.encode()
            ]
            if started is None and (group["pending"] or group["lag"] < expected):
                started = time.perf_counter()
            if group["lag"] == 0 and group["pending"] == 0 and started is not None:
                return time.perf_counter() - started
            if any(process.exitcode is not None for process in processes):
                raise RuntimeError("a consumer process exited before the stream was drained")
            await asyncio.sleep(0.005)
    finally:
        stop.set()
        for process in processes:
            process.join()


def produce_at_rate(redis_url: str, payloads: list[dict[str, str]], rate: int) -> None:
    async def run() -> None:
        redis = aioredis.Redis.from_url(redis_url)
        tick = 0.01
        per_tick = max(1, int(rate * tick))
        start = time.perf_counter()
        for i in range(0, len(payloads), per_tick):
            async with redis.pipeline(transaction=False) as pipe:
                for fields in payloads[i : i + per_tick]:
                    pipe.xadd(keys.USAGE_STREAM, fields)
                await pipe.execute()
            delay = start + (i // per_tick + 1) * tick - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await redis.aclose()

    asyncio.run(run())


async def main(args: argparse.Namespace) -> None:
    server = RedisServer(Path(tempfile.mkdtemp(prefix="bench-redis-"))).start()
    name = f"far_mesh_bench_{uuid.uuid4().hex[:8]}"
    await create_database_if_missing(ADMIN_DSN, name)
    dsn = with_database(ADMIN_DSN, name)
    redis = aioredis.Redis.from_url(server.url)
    try:
        await apply_migrations(dsn)
        settings = AccountingSettings.from_env(
            postgres_url=dsn,
            redis_url=server.url,
            accounting_batch_size=args.batch,
            accounting_batch_wait_ms=50,
            accounting_metrics_port=0,
            accounting_consumer_name="bench",
        )
        records = make_records(args.records, args.nodes)
        rows = args.records * args.nodes
        print("load average at start: {:.2f} {:.2f} {:.2f} (2 cores shared with other work)".format(*os.getloadavg()))

        base_s = await baseline(dsn, records)
        print(f"baseline executemany: {args.records / base_s:,.0f} records/s, {rows / base_s:,.0f} rows/s")

        staged_s, staged_cpu = await staged_copy(dsn, make_records(args.records, args.nodes), journal=False)
        print(
            f"baseline staged COPY, sessions and contributions: {args.records / staged_s:,.0f} records/s, "
            f"{rows / staged_s:,.0f} rows/s; PostgreSQL backend {cpu_ms(staged_cpu, args.records)} per 1,000 records"
        )
        journal_s, journal_cpu = await staged_copy(dsn, make_records(args.records, args.nodes), journal=True)
        print(
            f"baseline staged COPY, with the journal's charges too: {args.records / journal_s:,.0f} records/s, "
            f"{rows / journal_s:,.0f} contribution rows/s; PostgreSQL backend {cpu_ms(journal_cpu, args.records)} "
            "per 1,000 records"
        )

        fresh = make_records(args.records, args.nodes)
        async with redis.pipeline(transaction=False) as pipe:
            for record in fresh:
                pipe.xadd(keys.USAGE_STREAM, record.to_stream_fields())
            await pipe.execute()
        collector.tune_for_batches()  # as `far-mesh accounting` does once started
        started, cpu_started = time.perf_counter(), time.process_time()
        drained = await drain(redis, dsn, settings, len(fresh))
        took, python_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
        print(
            f"consumer (batch {args.batch}, {args.nodes} nodes/session): {args.records / took:,.0f} records/s, "
            f"{rows / took:,.0f} contribution rows/s = {base_s / took:.2f}x executemany, "
            f"{staged_s / took:.2f}x the staged COPY (target >= 0.8), {journal_s / took:.2f}x the one with the journal "
            f"({rows / took / 50_000:.2f}x the 50,000 rows/s target)"
        )
        per_k = 1000 / args.records
        ledger_cpu = "n/a" if drained.ledger_cpu_s is None else f"{drained.ledger_cpu_s * per_k * 1000:.0f} ms"
        print(
            f"  CPU per 1,000 records: consumer process {python_cpu_s * per_k * 1000:.0f} ms, "
            f"PostgreSQL backend {ledger_cpu} (the ceiling on an idle machine with a core for each)"
        )
        if drained.ledger_cpu_s and staged_cpu and journal_cpu:
            consumer_cpu = drained.ledger_cpu_s
            print(
                f"  PostgreSQL CPU per record, baseline / consumer: staged COPY {staged_cpu / consumer_cpu:.2f}x "
                f"(target >= 0.8), staged COPY with the journal {journal_cpu / consumer_cpu:.2f}x"
            )

        if args.consumers > 1:
            await redis.delete(keys.USAGE_STREAM)
            await redis.xgroup_create(keys.USAGE_STREAM, keys.USAGE_CONSUMER_GROUP, id="0", mkstream=True)
            async with redis.pipeline(transaction=False) as pipe:
                for record in make_records(args.records, args.nodes):
                    pipe.xadd(keys.USAGE_STREAM, record.to_stream_fields())
                await pipe.execute()
            took = await drain_with_processes(redis, settings, args.consumers, args.records)
            print(
                f"{args.consumers} consumer processes: {args.records / took:,.0f} records/s, "
                f"{rows / took:,.0f} contribution rows/s = {base_s / took:.2f}x baseline "
                f"({rows / took / 50_000:.2f}x the target)"
            )

        await redis.delete(keys.USAGE_STREAM)
        total = args.rate * args.seconds
        payloads = [r.to_stream_fields() for r in make_records(total, args.nodes)]
        producer = multiprocessing.get_context("spawn").Process(
            target=produce_at_rate, args=(server.url, payloads, args.rate)
        )
        producer.start()
        consumer = await drain(redis, dsn, settings, total)
        producer.join()
        lags = sorted(acked - parse_entry_id(entry_id)[0] / 1000 for entry_id, acked in consumer.acked_at.items())
        p50 = statistics.median(lags)
        p99 = lags[int(len(lags) * 0.99) - 1]
        print(
            f"lag XADD->commit+ack at {args.rate}/s for {args.seconds}s: p50 {p50 * 1000:.0f} ms, "
            f"p99 {p99 * 1000:.0f} ms (p99 / 1 s target = {p99:.2f})"
        )
        print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    finally:
        await redis.aclose()
        server.stop()
        await drop_database(ADMIN_DSN, name)


if __name__ == "__main__":
    interrupt_on_signals("bench_accounting")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--nodes", type=int, default=4, help="contributions per session")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=2000, help="offered sessions/s in the lag run")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--consumers", type=int, default=2, help="also drain with this many consumer processes")
    asyncio.run(main(parser.parse_args()))
