"""Relay latency through the gateway vs a raw Redis XREAD client, and the gateway's CPU per relayed token.

A separate process appends token events to STREAMS streams at RATE tokens/s each, stamping each token's text
with the time just before its XADD. Every token is received twice at once: by STREAMS concurrent SSE clients
through a real `far-mesh gateway` process, and by a raw client process reading the same streams straight from
Redis (10 reader tasks, each XREAD BLOCK over 100 streams: docs/architecture.md's baseline). Measuring both
paths on the same tokens at the same moment keeps a busy machine's noise out of the difference; both clients
run on uvloop, as the gateway does, so that neither measures its own event loop's overhead. Prints the
XADD->receipt delay p50/p99 of both, what the gateway adds (targets: <= 2 ms p50, <= 20 ms p99), and the
gateway's CPU seconds per 10k relayed tokens (target <= 0.2).

With --pin GATEWAY:OTHERS (CPU lists, such as 0:1), the gateway runs on the first CPUs and everything else
(Redis, the producer, the raw client and this process's SSE clients) on the others, so the gateway's CPU and
latency are its own rather than a share of what the machine's load leaves it.

    .venv/bin/python bench/bench_gateway_relay.py [--streams 1000] [--rate 5] [--seconds 10] [--pin 0:1]
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import cast

import redis.asyncio as aioredis
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devstack.harness.gateway import GATEWAY_ENV, MODEL_ID, issue_key_sync, snapshot, start_gateway, stop_gateway
from devstack.harness.interrupts import interrupt_on_signals
from devstack.postgres_server import EmbeddedPostgres, create_database_if_missing, drop_database, postgres_answers
from devstack.redis_server import RedisServer
from protocol import keys
from protocol.events import DoneEvent, TokenEvent, encode_event
from protocol.money import cost_of

PRICE = Decimal("0.0001")
TICK_S = 0.01


def produce(redis_url: str, request_ids: list[str], rate: float, seconds: float, start_at: float) -> None:
    """Producer process: every stream gets `rate` tokens/s, streams spread evenly over each tick."""
    asyncio.run(_produce(redis_url, request_ids, rate, seconds, start_at))


async def _produce(redis_url: str, request_ids: list[str], rate: float, seconds: float, start_at: float) -> None:
    client = aioredis.Redis.from_url(redis_url)
    period_ticks = max(1, round(1 / rate / TICK_S))
    groups = [request_ids[i::period_ticks] for i in range(period_ticks)]
    await asyncio.sleep(max(0.0, start_at - time.time()))
    tick = 0
    sent = dict.fromkeys(request_ids, 0)
    deadline = time.monotonic() + seconds
    next_tick = time.monotonic()
    while time.monotonic() < deadline:
        async with client.pipeline(transaction=False) as pipe:
            for request_id in groups[tick % period_ticks]:
                n = sent[request_id]
                event = TokenEvent(
                    token=f"{time.time():.6f}",
                    request_id=request_id,
                    index=n,
                    token_id=n,
                    tokens_generated=n + 1,
                    cost_far=cost_of(n + 1, PRICE),
                )
                pipe.xadd(keys.token_stream(request_id), encode_event(event))  # type: ignore[arg-type]
                sent[request_id] = n + 1
            await pipe.execute()
        tick += 1
        next_tick += TICK_S
        await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
    for group in groups:  # each stream ends in its own slot, as real requests would, not all at one instant
        async with client.pipeline(transaction=False) as pipe:
            for request_id in group:
                n = sent[request_id]
                done = DoneEvent(
                    request_id=request_id,
                    status="completed",
                    finish_reason="length",
                    prompt_tokens=1,
                    tokens_generated=n,
                    total_cost_far=cost_of(n, PRICE),
                )
                pipe.xadd(keys.token_stream(request_id), encode_event(done))  # type: ignore[arg-type]
            await pipe.execute()
        await asyncio.sleep(TICK_S)
    await client.aclose()


def start_producer(redis_url: str, request_ids: list[str], args: argparse.Namespace) -> multiprocessing.Process:
    start_at = time.time() + 1.0
    process = multiprocessing.get_context("spawn").Process(
        target=produce, args=(redis_url, request_ids, args.rate, args.seconds, start_at)
    )
    process.start()
    return process


def read_raw(
    redis_url: str, request_ids: list[str], readers: int, results: "multiprocessing.Queue[list[float]]"
) -> None:
    """Raw client process: its own CPU, so it measures Redis and the network, not the SSE clients' load."""
    results.put(uvloop.run(raw_client(redis_url, request_ids, readers)))


async def raw_client(redis_url: str, request_ids: list[str], readers: int) -> list[float]:
    """docs/architecture.md's baseline: `readers` tasks, each XREAD BLOCK over its share of the streams."""
    delays: list[float] = []
    client = aioredis.Redis.from_url(redis_url)

    async def read(share: list[str]) -> None:
        cursors: dict[bytes, bytes] = {keys.token_stream(r).encode(): b"0-0" for r in share}
        while cursors:
            reply = await client.xread(cursors, block=5000)  # type: ignore[arg-type]
            now = time.time()
            for stream, entries in reply:
                for entry_id, fields in entries:
                    cursors[stream] = entry_id
                    sent = sent_at(fields[b"data"])
                    if sent is None:  # the done event
                        del cursors[stream]
                        break
                    delays.append(now - sent)

    await asyncio.gather(*(read(request_ids[i::readers]) for i in range(readers)))
    await client.aclose()
    return delays


_TOKEN_KEY = b'"token":"'


def sent_at(data: bytes) -> float | None:
    """The XADD time the producer wrote into a token event's text; None for the done event. A search, not a JSON
    parse: both clients take it this way, and on two shared cores the clients' CPU is the gateway's noise."""
    at = data.find(_TOKEN_KEY)
    if at < 0:
        return None
    at += len(_TOKEN_KEY)
    return float(data[at : data.index(b'"', at)])


class SseClient(asyncio.Protocol):
    """A minimal HTTP/1.1 SSE client: whatever arrives is split into lines and the `data:` lines read, in the
    transport's callback (httpx, or a stream reader task per connection, would cost more CPU than the gateway at
    this rate, on the same two cores)."""

    def __init__(self, request: bytes, delays: list[float], on_status: Callable[[bytes], None]) -> None:
        self.request = request
        self.delays = delays
        self.on_status = on_status
        self.status: bytes | None = None
        self.rest = b""
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass of asyncio's
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        *lines, self.rest = (self.rest + data).split(b"\n")
        for line in lines:
            if self.status is None:
                self.status = line
                self.on_status(line)
            elif line.startswith(b"data: "):
                sent = sent_at(line)
                if sent is None:  # the done event
                    assert self.transport is not None
                    self.transport.close()
                    return
                self.delays.append(now - sent)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def sse_client(
    port: int, key: str, request_id: str, delays: list[float], opened: asyncio.Event, counter: list[int], total: int
) -> None:
    """One SSE client of the gateway, from its POST to the done event."""
    body = json.dumps({"prompt": "bench", "max_tokens": 1000, "request_id": request_id}).encode()
    request = (
        b"POST /inference/generate HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        + f"authorization: Bearer {key}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    refused: list[bytes] = []

    def on_status(line: bytes) -> None:
        if b" 200 " not in line:
            refused.append(line)
        counter[0] += 1
        if counter[0] == total:
            opened.set()

    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: SseClient(request, delays, on_status), "127.0.0.1", port)
    await client.closed
    if refused:
        raise RuntimeError(f"{request_id}: {refused[0]!r}")


def cpu_list(text: str) -> set[int]:
    """A CPU list as taskset takes it: "0,2-3" -> {0, 2, 3}."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` on `cpus` (`taskset -a`)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(delays: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(delays, n=100)
    return cuts[49] * 1000, cuts[98] * 1000


async def postgres_for_bench(tmp: Path) -> tuple[str, str, EmbeddedPostgres | None]:
    admin = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    embedded = None
    if not await postgres_answers(admin):
        embedded = EmbeddedPostgres(tmp / "pg").start()
        admin = embedded.dsn()
    name = f"far_mesh_bench_{uuid.uuid4().hex[:8]}"
    await create_database_if_missing(admin, name)
    dsn = admin.rsplit("/", 1)[0] + "/" + name
    from schema.migrate import apply_migrations

    await apply_migrations(dsn)
    return admin, dsn, embedded


@dataclass(frozen=True)
class BenchGateway:
    """A `far-mesh gateway` process on a private Redis and a throwaway ledger database."""

    redis_url: str
    dsn: str
    url: str
    process: subprocess.Popen[bytes]


@asynccontextmanager
async def bench_gateway(prefix: str, env: dict[str, str]) -> AsyncIterator[BenchGateway]:
    """Start the gateway (GATEWAY_ENV, then `env`) with one healthy swarm snapshot in Redis; stop and remove it
    all afterwards, the ledger database included."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    redis_server = RedisServer(tmp / "redis").start()
    admin, dsn, embedded = await postgres_for_bench(tmp)
    gateway = None
    try:
        client = aioredis.Redis.from_url(redis_server.url)
        await client.hset(keys.SWARM_SNAPSHOTS, MODEL_ID, snapshot().model_dump_json())  # type: ignore[misc]
        await client.aclose()
        stores = {"REDIS_URL": redis_server.url, "POSTGRES_URL": dsn, "LOG_LEVEL": "WARNING"}
        gateway, url = start_gateway({**GATEWAY_ENV, **stores, **env}, tmp / "gateway.log")
        yield BenchGateway(redis_server.url, dsn, url, gateway)
    finally:
        if gateway is not None:
            stop_gateway(gateway)
        redis_server.stop()
        await drop_database(admin, dsn.rsplit("/", 1)[1])
        if embedded is not None:
            embedded.cleanup()


async def main(args: argparse.Namespace) -> None:
    env = {
        "GATEWAY_RATE_LIMIT_PER_MINUTE": str(args.streams * 10),
        "GATEWAY_MAX_TOKENS": "4096",
        "GATEWAY_MAX_CONCURRENT_STREAMS": str(args.streams * 2),
        "GATEWAY_HEARTBEAT_INTERVAL_S": "15",
        "GATEWAY_RELAY_READERS": str(args.readers),
    }
    async with bench_gateway("bench-gateway-", env) as bench:
        client = aioredis.Redis.from_url(bench.redis_url)
        port = int(bench.url.rsplit(":", 1)[1])
        key = await asyncio.to_thread(issue_key_sync, bench.dsn)
        gateway_ids = [f"bench-{i}" for i in range(args.streams)]
        delays: list[float] = []
        opened = asyncio.Event()
        counter = [0]
        clients = [
            asyncio.create_task(sse_client(port, key, r, delays, opened, counter, args.streams)) for r in gateway_ids
        ]
        await asyncio.wait_for(opened.wait(), timeout=120)
        await client.delete(keys.queue_for(MODEL_ID))  # no worker runs here: the producer plays its part
        redis_pid = int((await client.info("server"))["process_id"])
        cpu_before, client_before, wall_before = cpu_seconds(bench.process.pid), time.process_time(), time.monotonic()
        redis_before = cpu_seconds(redis_pid)
        xread_before = (await client.info("commandstats")).get("cmdstat_xread", {"calls": 0, "usec": 0})
        context = multiprocessing.get_context("spawn")
        raw_results: multiprocessing.Queue[list[float]] = context.Queue()
        raw = context.Process(target=read_raw, args=(bench.redis_url, gateway_ids, 10, raw_results))
        raw.start()
        producer = start_producer(bench.redis_url, gateway_ids, args)
        if args.pin:
            gateway_cpus, other_cpus = (cpu_list(part) for part in args.pin.split(":"))
            pin(bench.process.pid, gateway_cpus)
            for pid in (os.getpid(), redis_pid, raw.pid, producer.pid):
                assert pid is not None
                pin(pid, other_cpus)
        await asyncio.gather(*clients)
        raw_delays = await asyncio.to_thread(raw_results.get, True, 60)
        raw.join()
        cpu_used = cpu_seconds(bench.process.pid) - cpu_before
        redis_used = cpu_seconds(redis_pid) - redis_before
        xread_after = (await client.info("commandstats"))["cmdstat_xread"]
        xread_calls, xread_usec = (xread_after[k] - xread_before[k] for k in ("calls", "usec"))
        wall = time.monotonic() - wall_before
        client_share = (time.process_time() - client_before) / (time.monotonic() - wall_before)
        producer.join()
        await client.aclose()

    raw_p50, raw_p99 = percentiles(raw_delays)
    gw_p50, gw_p99 = percentiles(delays)

    print(f"load: {args.streams} streams x {args.rate} tokens/s for {args.seconds} s, producer in its own process")
    if args.pin:
        print(
            f"cores: the gateway on CPUs {args.pin.split(':')[0]}; Redis, the producer, the raw client and the SSE "
            f"clients on CPUs {args.pin.split(':')[1]}"
        )
    else:
        print(f"cores: every process on any of the {os.cpu_count()} CPUs")
    print(
        f"raw XREAD (10 readers x {args.streams // 10} streams): p50 {raw_p50:.2f} ms  p99 {raw_p99:.2f} ms  "
        f"tokens {len(raw_delays)}"
    )
    print(
        f"gateway SSE ({args.readers} relay readers):          p50 {gw_p50:.2f} ms  p99 {gw_p99:.2f} ms  "
        f"tokens {len(delays)}"
    )
    print(
        f"added by the gateway: p50 {gw_p50 - raw_p50:+.2f} ms (target <= 2)  p99 {gw_p99 - raw_p99:+.2f} ms "
        f"(target <= 20); ratio to raw: p50 x{gw_p50 / raw_p50:.2f}  p99 x{gw_p99 / raw_p99:.2f}"
    )
    print(
        f"gateway CPU: {cpu_used:.2f} s for {len(delays)} tokens = {cpu_used / len(delays) * 10_000:.2f} s "
        f"per 10k relayed tokens (target <= 0.2: x{cpu_used / len(delays) * 10_000 / 0.2:.2f} of it); "
        f"Redis {redis_used / len(delays) * 10_000:.2f} s per 10k"
    )
    print(
        f"XREAD calls (gateway and raw client): {xread_calls / wall:,.0f}/s, {xread_usec / max(1, xread_calls):.0f} us "
        "of Redis each"
    )
    print(
        f"machine load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
        f"the SSE clients' own process used {client_share:.0%} of a CPU"
    )


if __name__ == "__main__":
    interrupt_on_signals("bench_gateway_relay")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=5.0, help="tokens per second per stream")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--readers", type=int, default=4, help="GATEWAY_RELAY_READERS")
    parser.add_argument("--pin", help="GATEWAY_CPUS:OTHER_CPUS, such as 0:1: the gateway alone on the first")
    uvloop.run(main(parser.parse_args()))
