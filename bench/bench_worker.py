"""Worker overhead against the Petals client called directly, on a real local swarm (tiny model, 2 servers).

Prints, in one run: enqueue-to-first-token p50 through the worker vs a direct session's first token (target:
at most 2 ms added), tokens/s of 8 concurrent jobs through one worker vs 8 concurrent direct sessions (target:
at least 0.97x), and the front end's CPU per token on each path, the swarm's servers left out (target: at most
1.10x; `front_end_cpu.py`). The two paths take turns (a direct run, then a worker run, and so on) so that the
machine's changing load falls on both alike. Run: `.venv/bin/python bench/bench_worker.py`.

It never hangs and never orphans its swarm: each phase has a deadline (past it, every thread's stack is
dumped to stderr and the run ends as on SIGTERM), and SIGTERM/SIGINT stop the swarm's process groups and the
Redis server before exiting.
"""

import asyncio
import contextlib
import faulthandler
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any

import redis.asyncio as aioredis
import torch
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from front_end_cpu import cpu_by_kind, cpu_by_process  # noqa: E402
from thread_cpu import ThreadCpu  # noqa: E402

from devstack.redis_server import RedisServer  # noqa: E402
from mesh.client import open_client  # noqa: E402
from mesh.local_swarm import LocalSwarm, split_plans  # noqa: E402
from mesh.session import SwarmSession  # noqa: E402
from mesh.tiny_models import ensure_tiny_models  # noqa: E402
from protocol import keys  # noqa: E402
from protocol.catalog import ModelSpec  # noqa: E402
from protocol.jobs import GenerateJob, enqueue_generate  # noqa: E402
from workers.service import serve  # noqa: E402
from workers.settings import WorkerSettings  # noqa: E402

PROMPT = "The mesh streams tokens from many small servers"
TTFT_RUNS = 20
THROUGHPUT_ROUNDS = int(os.environ.get("BENCH_WORKER_ROUNDS", "3"))
"""More rounds (BENCH_WORKER_ROUNDS) give a profiler more samples of the per-token path."""
CONCURRENT = 8
TOKENS_EACH = 48
OVERALL_TIMEOUT_S = 600
STREAM_TIMEOUT_S = 60
"""Longest wait for one job's first token or its ending."""

_cleanups: list[Callable[[], None]] = []
"""What must run however the benchmark ends: stopping swarm processes and the Redis server."""


def _clean_up() -> None:
    while _cleanups:
        with contextlib.suppress(Exception):
            _cleanups.pop()()


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    print(f"bench_worker: {signal.Signals(signum).name}; stopping the swarm", file=sys.stderr, flush=True)
    _clean_up()
    os._exit(128 + signum)


@contextlib.contextmanager
def deadline(what: str, seconds: float) -> Iterator[None]:
    """Past `seconds`, dump every thread's stack (where it hung), stop the swarm and exit with status 124.

    All from the timer's thread: a main thread stuck in a native call would never run a signal handler.
    """

    def expire() -> None:
        print(f"bench_worker: {what} took over {seconds:g} s; stacks follow", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(all_threads=True)
        _clean_up()
        os._exit(124)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def direct_generation(client: object, prompt_ids: list[int], tokens: int) -> tuple[float, int]:
    """(seconds to first token, tokens generated) of one greedy session driven directly."""
    started = time.perf_counter()
    session = SwarmSession(client.model, max_length=len(prompt_ids) + tokens)  # type: ignore[attr-defined]
    first = 0.0
    pending = prompt_ids
    try:
        for index in range(tokens):
            token = int(torch.argmax(session.step(pending).logits))
            if index == 0:
                first = time.perf_counter() - started
            pending = [token]
    finally:
        session.close()
    return first, tokens


def direct_throughput(client: object, prompt_ids: list[int]) -> tuple[int, float]:
    """(tokens, seconds) of CONCURRENT direct greedy sessions run at once."""
    with ThreadPoolExecutor(CONCURRENT) as pool:
        started = time.perf_counter()
        runs = list(pool.map(lambda _: direct_generation(client, prompt_ids, TOKENS_EACH), range(CONCURRENT)))
        return sum(n for _, n in runs), time.perf_counter() - started


async def through_worker(
    pool: ArqRedis, redis: aioredis.Redis, model: ModelSpec, concurrent: int, tokens: int
) -> list[float]:
    """Enqueue-to-first-token seconds of each of `concurrent` jobs enqueued at once; returns once all ended."""
    jobs = [
        GenerateJob(
            request_id=f"bench-{uuid.uuid4().hex[:12]}",
            model_id=model.model_id,
            prompt=PROMPT,
            max_tokens=tokens,
            temperature=0.0,
            top_p=1.0,
            price_per_token_far=Decimal("0.0001"),
            enqueued_at=time.time(),
        )
        for _ in range(concurrent)
    ]
    last_usage = await redis.xrevrange(keys.USAGE_STREAM, count=1)
    usage_cursor = last_usage[0][0] if last_usage else b"0-0"
    started = {}
    for job in jobs:
        started[job.request_id] = time.perf_counter()
        await enqueue_generate(pool, job)
    latencies = []
    for job in jobs:
        stream = keys.token_stream(job.request_id)
        if not await redis.xread({stream: "0-0"}, block=STREAM_TIMEOUT_S * 1000, count=1):
            raise TimeoutError(f"{job.request_id}: no first token after {STREAM_TIMEOUT_S} s")
        latencies.append(time.perf_counter() - started[job.request_id])
    await wait_for_endings(redis, [job.request_id for job in jobs], usage_cursor)  # so runs do not overlap
    return latencies


async def wait_for_endings(redis: aioredis.Redis, request_ids: list[str], usage_cursor: bytes) -> None:
    """Until every request has ended: each ending writes one usage record, so this wakes once per job rather
    than once per token (reading the token streams would charge the worker's CPU with a reader per token)."""
    remaining = len(request_ids)
    async with asyncio.timeout(STREAM_TIMEOUT_S):
        while remaining > 0:
            read = await redis.xread({keys.USAGE_STREAM: usage_cursor}, block=STREAM_TIMEOUT_S * 1000)
            for _stream, entries in read:
                usage_cursor, remaining = entries[-1][0], remaining - len(entries)
    for request_id in request_ids:
        ((_, fields),) = await redis.xrevrange(keys.token_stream(request_id), count=1)
        if fields[b"kind"] != b"done":
            raise RuntimeError(f"{request_id} failed: {fields[b'data'].decode()}")


def main() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    try:
        with deadline("the whole benchmark", OVERALL_TIMEOUT_S):
            run()
    finally:
        _clean_up()


def stop_processes(swarm: LocalSwarm) -> None:
    """Stop the swarm's process groups without its DHT client's goodbye, which can itself hang."""
    for process in [*swarm.servers, *([swarm.dht_process] if swarm.dht_process else [])]:
        process.stop()


def start_redis_and_swarm(prefix: str) -> tuple[ModelSpec, RedisServer, LocalSwarm]:
    """A private Redis and a two-server swarm of the tiny model, both stopped by `_clean_up`."""
    (model, _) = ensure_tiny_models(REPO / ".cache" / "far-mesh")
    work = Path(tempfile.mkdtemp(prefix=prefix))
    redis_server = RedisServer(work / "redis")
    _cleanups.append(redis_server.stop)
    redis_server.start()
    swarm = LocalSwarm(split_plans(model, 2), work_dir=work / "swarm")
    _cleanups.append(lambda: stop_processes(swarm))
    with deadline("starting the swarm", 180):
        swarm.start()
    return model, redis_server, swarm


def swarm_groups(swarm: LocalSwarm) -> frozenset[int]:
    """The process groups of the swarm's servers and DHT: the same work on both paths, so never counted."""
    return frozenset(p.pid for p in [*swarm.servers, *([swarm.dht_process] if swarm.dht_process else [])])


def run() -> None:
    model, redis_server, swarm = start_redis_and_swarm("bench-worker-")

    settings = WorkerSettings.from_env(
        redis_url=redis_server.url,
        far_mesh_dht_bootstrap=",".join(swarm.initial_peers),
        far_mesh_models=f"[{model.model_dump_json()}]",
        default_model_id=model.model_id,
        worker_metrics_port=0,
    )
    loop = asyncio.new_event_loop()
    stop, ready = asyncio.Event(), threading.Event()
    thread = threading.Thread(
        target=loop.run_until_complete,
        args=(serve(settings, stop, ready=ready, handle_signals=False),),
        daemon=True,
    )
    with deadline("measuring", 420):
        thread.start()
        if not ready.wait(120):
            raise TimeoutError("the worker did not start within 120 s")
        client = open_client(model, swarm.initial_peers)
        try:
            results = asyncio.run(measure(redis_server.url, model, client, swarm_groups(swarm)))
        finally:
            client.close()
            loop.call_soon_threadsafe(stop.set)
            thread.join(60)
    with deadline("stopping the swarm", 60):
        swarm.stop()
    report(results)


@dataclass
class Results:
    direct_ttft: list[float] = field(default_factory=list)
    worker_ttft: list[float] = field(default_factory=list)
    direct_tokens: int = 0
    direct_seconds: float = 0.0
    worker_tokens: int = 0
    worker_seconds: float = 0.0
    direct_cpu_s: dict[str, float] = field(default_factory=dict)
    worker_cpu_s: dict[str, float] = field(default_factory=dict)
    threads: ThreadCpu = field(default_factory=ThreadCpu)
    """The throughput rounds' thread CPU of both paths' steps and of the worker's token loop."""


async def measure(redis_url: str, model: ModelSpec, client: Any, skip_groups: frozenset[int]) -> Results:
    """Both paths in turns, so that a change in the machine's load falls on both alike.

    CPU is this process (the direct client's threads, or the worker's loop and pool: the other idles meanwhile)
    and its descendants (both clients' p2pd and DHT processes, and Redis, which only the worker uses), less the
    swarm: the same work on both paths."""
    me = [os.getpid()]
    redis = aioredis.Redis.from_url(redis_url)
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    prompt_ids = list(client.tokenizer(PROMPT)["input_ids"])
    results = Results()
    results.threads.install()
    try:
        direct_generation(client, prompt_ids, 2)  # warm both routes
        await through_worker(pool, redis, model, 1, 2)
        for _ in range(TTFT_RUNS):
            results.direct_ttft.append(direct_generation(client, prompt_ids, 1)[0])
            results.worker_ttft += await through_worker(pool, redis, model, 1, 1)
        results.threads.clear()
        for _ in range(THROUGHPUT_ROUNDS):
            before = cpu_by_process(me, skip_groups=skip_groups)
            tokens, seconds = direct_throughput(client, prompt_ids)
            _add(results.direct_cpu_s, cpu_by_kind(before, cpu_by_process(me, skip_groups=skip_groups)))
            results.direct_tokens += tokens
            results.direct_seconds += seconds
            before = cpu_by_process(me, skip_groups=skip_groups)
            started = time.perf_counter()
            await through_worker(pool, redis, model, CONCURRENT, TOKENS_EACH)
            results.worker_seconds += time.perf_counter() - started
            _add(results.worker_cpu_s, cpu_by_kind(before, cpu_by_process(me, skip_groups=skip_groups)))
            results.worker_tokens += CONCURRENT * TOKENS_EACH
    finally:
        await pool.aclose()
        await redis.aclose()
    return results


def _add(total: dict[str, float], more: dict[str, float]) -> None:
    for kind, seconds in more.items():
        total[kind] = total.get(kind, 0.0) + seconds


def _per_token_ms(cpu_s: dict[str, float], tokens: int) -> str:
    return ", ".join(f"{kind} {seconds / tokens * 1000:.2f}" for kind, seconds in sorted(cpu_s.items()))


def report(results: Results) -> None:
    direct_p50 = statistics.median(results.direct_ttft) * 1000
    worker_p50 = statistics.median(results.worker_ttft) * 1000
    direct_tps = results.direct_tokens / results.direct_seconds
    worker_tps = results.worker_tokens / results.worker_seconds
    print(f"first token p50: direct {direct_p50:.1f} ms, through worker (from enqueue) {worker_p50:.1f} ms")
    print(f"  added by the worker: {worker_p50 - direct_p50:+.1f} ms (target <= +2 ms), {worker_p50 / direct_p50:.2f}x")
    print(
        f"{CONCURRENT} concurrent x {TOKENS_EACH} tokens, {THROUGHPUT_ROUNDS} rounds each: "
        f"direct {direct_tps:.1f} tok/s, worker {worker_tps:.1f} tok/s"
    )
    print(f"  worker / direct throughput: {worker_tps / direct_tps:.2f}x (target >= 0.97x)")
    direct_ms = sum(results.direct_cpu_s.values()) / results.direct_tokens * 1000
    worker_ms = sum(results.worker_cpu_s.values()) / results.worker_tokens * 1000
    print(f"front-end CPU per token (swarm servers excluded): direct {direct_ms:.2f} ms, worker {worker_ms:.2f} ms")
    print(f"  direct: {_per_token_ms(results.direct_cpu_s, results.direct_tokens)}")
    print(f"  worker: {_per_token_ms(results.worker_cpu_s, results.worker_tokens)}")
    print(f"  worker / direct CPU per token: {worker_ms / direct_ms:.2f}x (target <= 1.10x)")
    report_floor(results, direct_ms)


def report_floor(results: Results, direct_ms: float) -> None:
    """The worker's token loop by part, and the floor under its CPU per token: the direct client's, plus the token's
    Redis write and Redis's work for it, with the worker's own Python per token taken to nothing."""
    threads, per_token = results.threads, 1000 / results.worker_tokens
    step, direct_step = (threads.seconds(path, "step") * per_token for path in ("worker", "direct"))
    send, reply = (threads.seconds("worker", part) * per_token for part in ("send", "reply"))
    rest = threads.seconds("worker", "token loop") * per_token - step - send - reply
    redis = results.worker_cpu_s.get("redis", 0.0) * per_token
    print(
        f"worker pool thread per token: step {step:.3f} ms (direct's {direct_step:.3f}), "
        f"Redis write {send + reply:.3f} (send {send:.3f}, reply {reply:.3f}), the rest of the token loop {rest:.3f}"
    )
    floor_ms = direct_ms + send + reply + redis
    print(
        f"  floor: direct {direct_ms:.2f} + the token's write {send + reply:.2f} + Redis {redis:.2f} "
        f"= {floor_ms:.2f} ms, {floor_ms / direct_ms:.2f}x of direct",
        flush=True,
    )


if __name__ == "__main__":
    main()
