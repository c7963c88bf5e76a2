"""Worker overhead against the Petals client called directly, on a real local swarm (tiny model, 2 servers).

Prints, in one run: enqueue-to-first-token p50 through the worker vs a direct session's first token (target:
at most 10 ms added), and tokens/s of 8 concurrent jobs through one worker vs 8 concurrent direct sessions
(target: at least 0.9x). Run: `.venv/bin/python bench/bench_worker.py`.
"""

import asyncio
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import redis.asyncio as aioredis
import torch
from arq import create_pool
from arq.connections import RedisSettings

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devstack.redis_server import RedisServer  # noqa: E402
from mesh.client import open_client  # noqa: E402
from mesh.local_swarm import LocalSwarm, split_plans  # noqa: E402
from mesh.session import SwarmSession  # noqa: E402
from mesh.tiny_models import ensure_tiny_models  # noqa: E402
from protocol import keys  # noqa: E402
from protocol.catalog import ModelSpec  # noqa: E402
from protocol.jobs import GENERATE_FUNCTION, GenerateJob  # noqa: E402
from workers.fleet import run_fleet  # noqa: E402
from workers.settings import WorkerSettings  # noqa: E402

PROMPT = "The mesh streams tokens from many small servers"
TTFT_RUNS = 20
CONCURRENT = 8
TOKENS_EACH = 48


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


async def through_worker(redis_url: str, model: ModelSpec, runs: int, concurrent: int, tokens: int) -> list[float]:
    """Enqueue-to-first-token seconds of each job, `concurrent` jobs at a time."""
    redis = aioredis.Redis.from_url(redis_url)
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    latencies: list[float] = []
    try:
        for _ in range(runs):
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
            started = {}
            for job in jobs:
                started[job.request_id] = time.perf_counter()
                await pool.enqueue_job(
                    GENERATE_FUNCTION,
                    job.model_dump(mode="json"),
                    _job_id=job.request_id,
                    _queue_name=keys.queue_for(model.model_id),
                )
            for job in jobs:
                stream = keys.token_stream(job.request_id)
                await redis.xread({stream: "0-0"}, block=60_000, count=1)
                latencies.append(time.perf_counter() - started[job.request_id])
            for job in jobs:  # wait for the ending, so runs do not overlap
                while True:
                    last = await redis.xrevrange(keys.token_stream(job.request_id), count=1)
                    if last and last[0][1][b"kind"] != b"token":
                        break
                    await asyncio.sleep(0.005)
    finally:
        await pool.aclose()
        await redis.aclose()
    return latencies


def main() -> None:
    (model, _) = ensure_tiny_models(REPO / ".cache" / "far-mesh")
    work = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    redis_server = RedisServer(work / "redis").start()
    with LocalSwarm(split_plans(model, 2), work_dir=work / "swarm") as swarm:
        client = open_client(model, swarm.initial_peers)
        prompt_ids = list(client.tokenizer(PROMPT)["input_ids"])
        direct_generation(client, prompt_ids, 2)  # warm the route
        direct_ttft = [direct_generation(client, prompt_ids, 1)[0] for _ in range(TTFT_RUNS)]
        with ThreadPoolExecutor(CONCURRENT) as pool:
            started = time.perf_counter()
            results = list(pool.map(lambda _: direct_generation(client, prompt_ids, TOKENS_EACH), range(CONCURRENT)))
            direct_tps = sum(n for _, n in results) / (time.perf_counter() - started)
        client.close()

        settings = WorkerSettings.from_env(
            redis_url=redis_server.url,
            far_mesh_dht_bootstrap=",".join(swarm.initial_peers),
            far_mesh_models=f"[{model.model_dump_json()}]",
            default_model_id=model.model_id,
            far_mesh_worker_metrics_port=0,
        )
        loop = asyncio.new_event_loop()
        stop, ready = asyncio.Event(), threading.Event()
        thread = threading.Thread(
            target=loop.run_until_complete,
            args=(run_fleet(settings, stop, ready=ready, handle_signals=False),),
            daemon=True,
        )
        thread.start()
        ready.wait(120)
        asyncio.run(through_worker(redis_server.url, model, 2, 1, 2))  # warm the worker's route
        worker_ttft = asyncio.run(through_worker(redis_server.url, model, TTFT_RUNS, 1, 1))
        started = time.perf_counter()
        asyncio.run(through_worker(redis_server.url, model, 1, CONCURRENT, TOKENS_EACH))
        worker_tps = CONCURRENT * TOKENS_EACH / (time.perf_counter() - started)
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)
    redis_server.stop()

    direct_p50, worker_p50 = statistics.median(direct_ttft) * 1000, statistics.median(worker_ttft) * 1000
    print(f"first token p50: direct {direct_p50:.1f} ms, through worker (from enqueue) {worker_p50:.1f} ms")
    print(f"  added by the worker: {worker_p50 - direct_p50:+.1f} ms (target <= 10 ms), {worker_p50 / direct_p50:.2f}x")
    print(
        f"{CONCURRENT} concurrent x {TOKENS_EACH} tokens: direct {direct_tps:.1f} tok/s, worker {worker_tps:.1f} tok/s"
    )
    print(f"  worker / direct throughput: {worker_tps / direct_tps:.2f}x (target >= 0.9x)")


if __name__ == "__main__":
    main()
