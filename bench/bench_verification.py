"""What spot checks cost: end-to-end throughput with verification at the default fraction vs off, and the
verifier's compute per verified token against the swarm's, on a real local swarm (tiny model, 2 servers).

Two in-process workers serve the same swarm from two Redis databases: one with WORKER_VERIFY_FRACTION=0 and
no per-node minimum (off), one with the defaults (5%, one session per node per hour). Rounds of 8 concurrent
jobs alternate between them, so the machine's changing load falls on both alike (target: on/off >= 0.95x).
Then every spot check the second worker published is recomputed by the verifier's own code (float32, one
thread), and its seconds per verified token are set against the swarm's seconds per generated token (one
direct greedy session). Run: `.venv/bin/python bench/bench_verification.py`.
"""

import asyncio
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import torch
from arq import create_pool
from arq.connections import RedisSettings

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_worker import (  # noqa: E402
    CONCURRENT,
    PROMPT,
    TOKENS_EACH,
    _clean_up,
    _on_signal,
    deadline,
    direct_generation,
    start_redis_and_swarm,
    through_worker,
)

from mesh.client import open_client  # noqa: E402
from protocol import keys  # noqa: E402
from protocol.catalog import ModelSpec  # noqa: E402
from protocol.verification import SpotCheck  # noqa: E402
from verifier.recompute import BlockRunner, verify_span  # noqa: E402
from workers.service import serve  # noqa: E402
from workers.settings import WorkerSettings  # noqa: E402

ROUNDS = 4
DIRECT_TOKENS = 48


def start_fleet(settings: WorkerSettings) -> tuple[asyncio.AbstractEventLoop, asyncio.Event, threading.Thread]:
    loop = asyncio.new_event_loop()
    stop, ready = asyncio.Event(), threading.Event()
    thread = threading.Thread(
        target=loop.run_until_complete,
        args=(serve(settings, stop, ready=ready, handle_signals=False),),
        daemon=True,
    )
    thread.start()
    if not ready.wait(120):
        raise TimeoutError("a worker did not start within 120 s")
    return loop, stop, thread


async def throughput(url_off: str, url_on: str, model: ModelSpec) -> dict[str, tuple[int, float]]:
    totals = {"off": (0, 0.0), "on": (0, 0.0)}
    for url in (url_off, url_on):  # warm both
        pool, redis = await create_pool(RedisSettings.from_dsn(url)), aioredis.Redis.from_url(url)
        await through_worker(pool, redis, model, 1, 2)
        await pool.aclose()
        await redis.aclose()
    for _ in range(ROUNDS):
        for name, url in (("off", url_off), ("on", url_on)):
            pool, redis = await create_pool(RedisSettings.from_dsn(url)), aioredis.Redis.from_url(url)
            started = time.perf_counter()
            await through_worker(pool, redis, model, CONCURRENT, TOKENS_EACH)
            tokens, seconds = totals[name]
            totals[name] = (tokens + CONCURRENT * TOKENS_EACH, seconds + time.perf_counter() - started)
            await pool.aclose()
            await redis.aclose()
    return totals


async def spot_checks(url: str) -> list[SpotCheck]:
    redis = aioredis.Redis.from_url(url)
    try:
        return [SpotCheck.from_stream_fields(fields) for _, fields in await redis.xrange(keys.VERIFICATION_STREAM)]
    finally:
        await redis.aclose()


def verifier_seconds_per_token(model: ModelSpec, checks: list[SpotCheck]) -> tuple[float, int, int]:
    """(seconds per verified token, tokens, spans): a token counts once however many spans it crossed."""
    torch.set_num_threads(1)
    runner = BlockRunner.load(model.weights_source)
    started = time.perf_counter()
    spans = 0
    for check in checks:
        for span in check.spans:
            assert verify_span(runner, span).ok
            spans += 1
    seconds = time.perf_counter() - started
    tokens = sum(max(s.tokens for s in check.spans) for check in checks)
    return seconds / max(tokens, 1), tokens, spans


def run() -> None:
    model, redis_server, swarm = start_redis_and_swarm("bench-verification-")
    base = redis_server.url.rsplit("/", 1)[0]  # redis://host:port/0 -> two databases of their own
    url_off, url_on = f"{base}/1", f"{base}/2"
    common: dict[str, Any] = {
        "far_mesh_dht_bootstrap": ",".join(swarm.initial_peers),
        "far_mesh_models": f"[{model.model_dump_json()}]",
        "default_model_id": model.model_id,
        "worker_metrics_port": 0,
    }
    off = WorkerSettings.from_env(
        redis_url=url_off, worker_verify_fraction=0.0, worker_verify_min_per_node_hour=0, **common
    )
    on = WorkerSettings.from_env(redis_url=url_on, **common)
    with deadline("measuring", 480):
        fleets = [start_fleet(off), start_fleet(on)]
        try:
            totals = asyncio.run(throughput(url_off, url_on, model))
            client = open_client(model, swarm.initial_peers)
            try:
                prompt_ids = list(client.tokenizer(PROMPT)["input_ids"])
                started = time.perf_counter()
                direct_generation(client, prompt_ids, DIRECT_TOKENS)
                swarm_per_token = (time.perf_counter() - started) / DIRECT_TOKENS
            finally:
                client.close()
        finally:
            for loop, stop, thread in fleets:
                loop.call_soon_threadsafe(stop.set)
                thread.join(60)
        checks = asyncio.run(spot_checks(url_on))
        verifier_per_token, verified_tokens, spans = verifier_seconds_per_token(model, checks)
    with deadline("stopping the swarm", 60):
        swarm.stop()
    rate = {name: tokens / seconds for name, (tokens, seconds) in totals.items()}
    print(f"throughput, {ROUNDS} rounds x {CONCURRENT} jobs x {TOKENS_EACH} tokens:")
    print(f"  verification off          {rate['off']:8.1f} tok/s")
    print(
        f"  verification default (5%) {rate['on']:8.1f} tok/s   ratio {rate['on'] / rate['off']:.3f}x (target >= 0.95x)"
    )
    print(f"spot checks published: {len(checks)} sessions, {spans} spans, {verified_tokens} tokens")
    print(f"  verifier  {verifier_per_token * 1e3:8.3f} ms per verified token (float32, 1 thread, whole model)")
    print(f"  swarm     {swarm_per_token * 1e3:8.3f} ms per generated token (one direct session)")
    print(f"  ratio     {verifier_per_token / swarm_per_token:.4f}x of the swarm's time per token")


def main() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    try:
        with deadline("the whole benchmark", 900):
            run()
    finally:
        _clean_up()


if __name__ == "__main__":
    main()
