"""Token writes and their relay on one Redis against the same load split over two shards (#32 item 5).

Two models, `--streams` request streams each. Per model, a producer process plays the model's workers: every
stream's tokens are written with the worker's own fenced token script (`workers.stream.TokenStreamWriter`: lease,
stream length, cancel flag, served step and owner checked and written in one EVALSHA), at `--rate` tokens/s per
stream. A relay process plays a gateway: one `gateway.relay.StreamRelay` per Redis, as `gateway/shards.py` opens
them, subscribed to every stream, counting what it receives. The same load runs twice in one go: both models on
one redis-server ("one"), then the second model's streams on a redis-server of their own ("two"). Printed for each:
tokens written and relayed per second, each Redis's CPU per 10k tokens, the Redis commands per token (`INFO
commandstats` before and after, commands inside the scripts included), and two ÷ one.

    .venv/bin/python bench/bench_redis_shards.py [--streams 500] [--rate 10] [--seconds 8]
"""

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # pinned (requirements/constraints.txt), with the mesh extra
import redis.asyncio as aioredis
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devstack.harness.interrupts import interrupt_on_signals
from devstack.redis_server import RedisServer
from gateway.relay import StreamRelay
from protocol import keys
from protocol.events import TokenEvent
from protocol.money import cost_of
from protocol.ownership import RequestOwner
from protocol.served_steps import ServedStep, StepSpan
from workers.stream import TokenStreamWriter, Written

PRICE = Decimal("0.0001")
MODELS = ("model-a", "model-b")


@dataclass
class Gate:
    """Every child reports ready (its imports and connections done: seconds on a busy machine), then all start at
    the time the parent sets; each puts ("written" or "relayed", its count) on `out` at the end."""

    ready: Any
    go: Any
    start_at: Any
    out: Any

    async def opened(self) -> float:
        self.ready.release()
        await asyncio.to_thread(self.go.wait)
        return float(self.start_at.value)


def produce(url: str, model_id: str, streams: int, rate: float, seconds: float, gate: Gate) -> None:
    gate.out.put(("written", uvloop.run(_produce(url, model_id, streams, rate, seconds, gate))))


async def _produce(url: str, model_id: str, streams: int, rate: float, seconds: float, gate: Gate | None) -> int:
    redis = aioredis.Redis.from_url(url, max_connections=64)
    owner = RequestOwner("key-bench", model_id)
    step = ServedStep(tokens=1, spans=(StepSpan("QmBenchPeerA", 0, 2, ""), StepSpan("QmBenchPeerB", 2, 4, "")))
    writers = [
        TokenStreamWriter(redis, f"{model_id}-{i}", f"bench:{i}", lease_ttl_s=30, owner=owner) for i in range(streams)
    ]
    await asyncio.gather(*(w.acquire() for w in writers))
    start_at = await gate.opened() if gate is not None else time.time()
    written = 0

    async def stream(writer: TokenStreamWriter, offset: float) -> None:
        nonlocal written
        await asyncio.sleep(max(0.0, start_at - time.time()) + offset)
        deadline = start_at + seconds
        n, next_at = 0, time.monotonic()
        while time.time() < deadline:
            event = TokenEvent(
                token="t",
                request_id=writer.request_id,
                index=n,
                token_id=n,
                tokens_generated=n + 1,
                cost_far=cost_of(n + 1, PRICE),
            )
            if await writer.append_token(event, step) is Written.WRITTEN:
                written += 1
            n += 1
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    await asyncio.gather(*(stream(w, i / streams / rate) for i, w in enumerate(writers)))
    await redis.aclose()
    return written


def relay(urls_by_model: dict[str, str], streams: int, seconds: float, gate: Gate) -> None:
    gate.out.put(("relayed", uvloop.run(_relay(urls_by_model, streams, seconds, gate))))


async def _relay(urls_by_model: dict[str, str], streams: int, seconds: float, gate: Gate) -> int:
    by_url = {url: StreamRelay(aioredis.Redis.from_url(url), readers=4) for url in set(urls_by_model.values())}
    for r in by_url.values():
        r.start()
    received = 0

    async def follow(relay: StreamRelay, stream: str) -> None:
        nonlocal received
        sub = await relay.subscribe(stream)
        while (batch := await sub.next_batch()) is not None:
            received += len(batch)

    tasks = [
        asyncio.create_task(follow(by_url[url], keys.token_stream(f"{model}-{i}")))
        for model, url in urls_by_model.items()
        for i in range(streams)
    ]
    start_at = await gate.opened()
    await asyncio.sleep(max(0.0, start_at - time.time()) + seconds + 1.0)
    for task in tasks:
        task.cancel()
    for r in by_url.values():
        await r.stop()
    return received


@dataclass
class Run:
    written: int
    relayed: int
    seconds: float
    redis_cpu_s: list[float]
    commands: Counter[str]

    @property
    def tokens_per_s(self) -> float:
        return self.written / self.seconds

    def cpu_per_10k(self) -> list[float]:
        return [cpu / max(1, self.written) * 10_000 for cpu in self.redis_cpu_s]

    @property
    def commands_per_token(self) -> float:
        return sum(n for name, n in self.commands.items() if not name.endswith(":usec")) / max(1, self.written)

    @property
    def usec_per_token(self) -> float:
        """Microseconds Redis spent inside commands per token (a script's own commands are inside its EVALSHA)."""
        inside = ("evalsha", "xread", "xadd", "expire", "pexpireat", "ping")
        return sum(self.commands[f"{name}:usec"] for name in inside) / max(1, self.written)

    def top_commands(self) -> str:
        calls = Counter({n: c for n, c in self.commands.items() if not n.endswith(":usec")})
        return ", ".join(
            f"{name} {c / max(1, self.written):.2f} ({self.commands[name + ':usec'] / max(1, c):.0f} us each)"
            for name, c in calls.most_common(10)
        )


def _commands(url: str) -> Counter[str]:
    """Per command since the last CONFIG RESETSTAT: its calls (`name`) and microseconds inside Redis (`name:usec`),
    this bench's own INFO calls left out."""

    async def calls() -> Counter[str]:
        redis = aioredis.Redis.from_url(url)
        try:
            stats = await redis.info("commandstats")
            found: Counter[str] = Counter()
            for key, value in stats.items():
                if key != "cmdstat_info":
                    found[key.removeprefix("cmdstat_")] = int(value["calls"])
                    found[key.removeprefix("cmdstat_") + ":usec"] = int(value["usec"])
            return found
        finally:
            await redis.aclose()

    return asyncio.run(calls())


def _flush(url: str) -> None:
    async def flush() -> None:
        redis = aioredis.Redis.from_url(url)
        await redis.flushall()
        await redis.config_resetstat()
        await redis.aclose()

    asyncio.run(flush())


def run_once(servers: list[RedisServer], args: argparse.Namespace) -> Run:
    urls = {model: servers[i % len(servers)].url for i, model in enumerate(MODELS)}
    for server in servers:
        _flush(server.url)
    pids = [psutil.Process(server._process.pid) for server in servers]  # type: ignore[union-attr]
    ctx = multiprocessing.get_context("spawn")
    gate = Gate(ctx.Semaphore(0), ctx.Event(), ctx.Value("d", 0.0), ctx.Queue())
    children = [ctx.Process(target=relay, args=(urls, args.streams, args.seconds, gate))]
    children += [
        ctx.Process(target=produce, args=(url, model, args.streams, args.rate, args.seconds, gate))
        for model, url in urls.items()
    ]
    for child in children:
        child.start()
    for _ in children:
        gate.ready.acquire()
    gate.start_at.value = time.time() + 0.5
    gate.go.set()
    time.sleep(0.5)
    cpu_before = [sum(p.cpu_times()[:2]) for p in pids]
    commands_before = sum((_commands(s.url) for s in servers), Counter[str]())
    for child in children[1:]:
        child.join()
    cpu_after = [sum(p.cpu_times()[:2]) for p in pids]
    commands_after = sum((_commands(s.url) for s in servers), Counter[str]())
    counts = [gate.out.get() for _ in children]
    children[0].join()
    written = sum(n for kind, n in counts if kind == "written")
    relayed = sum(n for kind, n in counts if kind == "relayed")
    return Run(
        written=written,
        relayed=relayed,
        seconds=args.seconds,
        redis_cpu_s=[a - b for a, b in zip(cpu_after, cpu_before, strict=True)],
        commands=commands_after - commands_before,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=500, help="request streams per model")
    parser.add_argument("--rate", type=float, default=10.0, help="tokens/s per stream")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as work:
        servers = [RedisServer(Path(work) / f"redis-{i}").start() for i in range(2)]
        try:
            one = run_once(servers[:1], args)
            two = run_once(servers, args)
        finally:
            for server in servers:
                server.stop()
    offered = 2 * args.streams * args.rate
    print(
        f"load: 2 models x {args.streams} streams x {args.rate:g} tok/s = {offered:,.0f} tok/s offered, "
        f"{args.seconds:g} s"
    )
    print(f"load average (1 min): {psutil.getloadavg()[0]:.1f}")
    for name, r in (("one Redis", one), ("two shards", two)):
        cpu = " + ".join(f"{c:.3f}" for c in r.cpu_per_10k())
        print(
            f"{name:10}: written {r.tokens_per_s:,.0f} tok/s, relayed {r.relayed / r.seconds:,.0f} tok/s, "
            f"Redis CPU {cpu} s per 10k tokens, {r.commands_per_token:.1f} Redis commands per token, "
            f"{r.usec_per_token:.0f} us inside Redis's top-level commands per token"
        )
        print(f"{'':10}  per token: {r.top_commands()}")
    print(
        f"two / one: written {two.tokens_per_s / one.tokens_per_s:.2f}x, "
        f"relayed {two.relayed / max(1, one.relayed):.2f}x, "
        f"busiest Redis's CPU per second {max(two.redis_cpu_s) / max(one.redis_cpu_s):.2f}x"
    )


if __name__ == "__main__":
    interrupt_on_signals("bench_redis_shards")
    main()
