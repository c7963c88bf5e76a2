"""What budgets add to admission, and what stop-sequence matching adds to a worker's per-token CPU.

1. Admission: a real `far-mesh gateway` process (real Redis, real PostgreSQL), and POST /inference/generate
   from one client, alternating between an API key without a budget and one with a budget (so both see the same
   machine at the same moment). Admission latency is POST to response headers: validation, key lookup, rate
   limit, ownership, slot, budget reservation (Lua) and enqueue. An in-process synthetic worker answers each
   job with one token and settles its reservation, as a worker does. Prints p50/p99 of both and the difference
   (target: <= 1 ms added at p50).
2. Stop sequences: the tiny model's tokenizer decodes a long text token by token, with 4 stop strings that never
   match (the worst case: every token is checked) and without; the baseline is the per-token CPU the worker
   spends besides the swarm (choosing a token from a 32k-entry logits vector with penalties, decoding it,
   building and encoding its event). Prints the matcher's cost as a share of it (target: <= 5%).

    .venv/bin/python bench/bench_admission.py [--requests 400] [--tokens 20000]
"""

import argparse
import asyncio
import os
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import httpx
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_gateway_relay import bench_gateway, percentiles  # the relay bench's gateway and percentile helpers

from devstack.harness.gateway import WALLET
from devstack.harness.synthetic_worker import SyntheticWorker
from gateway.api_keys import KeyLimits, create_key


async def issue(dsn: str, limits: KeyLimits | None) -> str:
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        return (await create_key(connection, WALLET, "bench", limits)).secret_key
    finally:
        await connection.close()


async def admit_once(http: httpx.AsyncClient, key: str) -> float:
    body = {"prompt": "Hi", "max_tokens": 1, "request_id": f"adm-{uuid.uuid4().hex}"}
    started = time.perf_counter()
    async with http.stream("POST", "/inference/generate", json=body, headers={"Authorization": f"Bearer {key}"}) as r:
        elapsed = time.perf_counter() - started
        assert r.status_code == 200, await r.aread()
        async for _ in r.aiter_bytes():  # read to the end, so the slot is free for the next request
            pass
    return elapsed


async def admission(requests: int) -> tuple[list[float], list[float]]:
    env = {"GATEWAY_RATE_LIMIT_PER_MINUTE": str(requests * 10), "GATEWAY_KEY_CACHE_S": "300"}
    async with bench_gateway("bench-admission-", env) as gateway:
        plain = await issue(gateway.dsn, None)
        budgeted = await issue(
            gateway.dsn,
            KeyLimits(max_budget_far=Decimal(1_000_000), period_budget_far=Decimal(10_000), budget_period="day"),
        )
        worker = SyntheticWorker(aioredis.Redis.from_url(gateway.redis_url), token_delay_s=0)
        worker_task = asyncio.create_task(worker.run())
        off: list[float] = []
        on: list[float] = []
        try:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
                for _ in range(20):  # warm up both paths: key cache, script cache, the budget account's rebuild
                    await admit_once(http, plain)
                    await admit_once(http, budgeted)
                for _ in range(requests):
                    off.append(await admit_once(http, plain))
                    on.append(await admit_once(http, budgeted))
        finally:
            worker_task.cancel()
        return off, on


def per_token_costs(tokens: int) -> tuple[float, float]:
    """(stop matching, the worker's own per-token CPU besides the swarm), in microseconds per token."""
    import torch
    from transformers import AutoTokenizer

    from mesh.tiny_models import ensure_tiny_models
    from protocol.events import TokenEvent, encode_event
    from protocol.requests import SamplingOptions
    from workers.detokenize import IncrementalDecoder
    from workers.sampling import Sampler
    from workers.stop_sequences import StopMatcher

    model = ensure_tiny_models(Path(os.environ.get("FAR_MESH_CACHE_DIR", ".cache/far-mesh")))[0]
    tokenizer = AutoTokenizer.from_pretrained(model.weights_source)
    text = ("The mesh streams tokens from many small servers, and every node is paid for its blocks. " * 400)[
        : tokens * 4
    ]
    ids = tokenizer(text)["input_ids"][:tokens]
    decoder = IncrementalDecoder(lambda i: str(tokenizer.decode(list(i), skip_special_tokens=True)))
    texts = [decoder.push(i) for i in ids]

    stops = ["\nUser:", "<|end|>", "###", "never matches"]
    started = time.process_time()
    for _ in range(5):
        matcher = StopMatcher(stops)
        for piece in texts:
            matcher.feed(piece)
    with_stops = (time.process_time() - started) / (5 * len(texts))
    started = time.process_time()
    for _ in range(5):
        matcher = StopMatcher([])
        for piece in texts:
            matcher.feed(piece)
    without = (time.process_time() - started) / (5 * len(texts))

    options = SamplingOptions(top_k=40, presence_penalty=0.5)
    sampler = Sampler(
        options, temperature=0.8, top_p=0.9, seed_key="bench", prompt_ids=ids[:50], decode=tokenizer.decode
    )
    logits = torch.randn(32_000)
    decoder = IncrementalDecoder(lambda i: str(tokenizer.decode(list(i), skip_special_tokens=True)))
    steps = min(2000, len(ids))
    started = time.process_time()
    for index, token_id in enumerate(ids[:steps]):
        sampler.choose(logits)
        piece = decoder.push(token_id)
        event = TokenEvent(
            token=piece, request_id="bench", index=index, token_id=token_id, tokens_generated=index + 1, cost_far="0"
        )
        encode_event(event)
    worker_per_token = (time.process_time() - started) / steps
    return (with_stops - without) * 1e6, worker_per_token * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="admissions per key")
    parser.add_argument("--tokens", type=int, default=20_000, help="tokens decoded for the stop-matching cost")
    args = parser.parse_args()

    off, on = asyncio.run(admission(args.requests))
    off_p50, off_p99 = percentiles(off)
    on_p50, on_p99 = percentiles(on)
    print(f"admission, {args.requests} requests per key, alternating, one client:")
    print(f"  budgets off: p50 {off_p50:.2f} ms  p99 {off_p99:.2f} ms")
    print(f"  budgets on:  p50 {on_p50:.2f} ms  p99 {on_p99:.2f} ms")
    print(
        f"  added by budgets: p50 {on_p50 - off_p50:+.2f} ms (target <= 1)  p99 {on_p99 - off_p99:+.2f} ms; "
        f"ratio p50 x{on_p50 / off_p50:.2f}  p99 x{on_p99 / off_p99:.2f}"
    )
    matching_us, worker_us = per_token_costs(args.tokens)
    print(f"stop sequences (4 strings, none matching), {args.tokens} tokens:")
    print(
        f"  matching {matching_us:.2f} us/token; the worker's own per-token CPU (sample + decode + event) "
        f"{worker_us:.1f} us/token; share {100 * matching_us / worker_us:.2f}% (target <= 5%)"
    )


if __name__ == "__main__":
    main()
