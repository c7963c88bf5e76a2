"""What budgets and prepaid balances add to admission, and what stop-sequence matching adds to a worker's
per-token CPU.

1. Admission: a real `far-mesh gateway` process (real Redis, real PostgreSQL), and POST /inference/generate
   from one client, alternating between an API key without a budget and one with a budget (so both see the same
   machine at the same moment). Admission latency is POST to response headers: validation, key lookup, rate
   limit, ownership, slot, budget reservation (Lua) and enqueue. An in-process synthetic worker answers each
   job with one token and settles its reservation, as a worker does. Prints p50/p99 of both and the difference
   (target: <= 1 ms added at p50).
   The balance check (GATEWAY_REQUIRE_PREPAID_BALANCE) is a setting of the gateway process, so a second gateway,
   identical but for that setting, runs beside the first on the same Redis and ledger, and the same key (its
   wallet funded by a deposit entry in the journal) alternates between the two, request by request, in this one
   bench process: the balance's hold (one Lua script, the account rebuilt from the journal at most every
   RECONCILE_S) is the only difference. Prints both, the ms added and the ratio at p50 (target: <= 1 ms).
   Two processes on a loaded machine differ by more than that hold, so the hold itself is timed too, in this
   bench process on the same Redis and ledger: `gateway.balances.Balances.hold`, which admission awaits, against
   a PING, the least one Redis round trip costs (p50 of each and the difference).
2. Stop sequences: the tiny model's tokenizer decodes a long text token by token, with 4 stop strings that never
   match (the worst case: every token is checked) and without; the baseline is the per-token CPU the worker
   spends besides the swarm (choosing a token from a 32k-entry logits vector with penalties, decoding it,
   building and encoding its event). Prints the matcher's cost as a share of it (target: <= 5%).

    .venv/bin/python bench/bench_admission.py [--requests 400] [--tokens 20000]
"""

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

import httpx
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_gateway_relay import bench_gateway, percentiles  # the relay bench's gateway and percentile helpers

from accounting.journal import TREASURY_CHAIN, Line, buyer_account, post_entry
from devstack.harness.gateway import GATEWAY_ENV, MODEL_ID, WALLET, snapshot, start_gateway, stop_gateway
from devstack.harness.interrupts import interrupt_on_signals
from devstack.harness.synthetic_worker import SyntheticWorker
from gateway.api_keys import KeyLimits, create_key
from protocol import keys

DEPOSIT_FAR = Decimal(1_000_000)
"""The bench wallet's prepaid balance: far more than every request's hold together."""


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


async def deposit(dsn: str, wallet: str, amount: Decimal) -> None:
    """Credit `wallet` in the journal as the deposit watcher does (a balanced deposit entry)."""
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        lines = [Line(TREASURY_CHAIN, amount), Line(buyer_account(wallet), -amount)]
        await post_entry(connection, "deposit", f"bench-{uuid.uuid4().hex}", lines)
    finally:
        await connection.close()


Timings = dict[str, list[float]]


async def keep_swarm_fresh(redis: aioredis.Redis) -> None:
    """Rewrite the model's swarm snapshot every few seconds: a run of three paths outlasts a snapshot's minute."""
    while True:
        await redis.hset(keys.SWARM_SNAPSHOTS, MODEL_ID, snapshot().model_dump_json())  # type: ignore[misc]
        await asyncio.sleep(5)


async def admission(requests: int) -> Timings:
    """Admission latencies (s) by path: plain, budgeted (both on the gateway without the balance check) and
    prepaid (the plain key on the gateway with it), each request of one path followed by one of each other."""
    env = {"GATEWAY_RATE_LIMIT_PER_MINUTE": str(requests * 30), "GATEWAY_KEY_CACHE_S": "300"}
    async with bench_gateway("bench-admission-", env) as gateway:
        plain = await issue(gateway.dsn, None)
        budgeted = await issue(
            gateway.dsn,
            KeyLimits(max_budget_far=Decimal(1_000_000), period_budget_far=Decimal(10_000), budget_period="day"),
        )
        await deposit(gateway.dsn, WALLET, DEPOSIT_FAR)
        stores = {"REDIS_URL": gateway.redis_url, "POSTGRES_URL": gateway.dsn, "LOG_LEVEL": "WARNING"}
        log_dir = Path(tempfile.mkdtemp(prefix="bench-admission-prepaid-"))
        prepaid_process, prepaid_url = start_gateway(
            {**GATEWAY_ENV, **stores, **env, "GATEWAY_REQUIRE_PREPAID_BALANCE": "true"}, log_dir / "gateway.log"
        )
        worker = SyntheticWorker(aioredis.Redis.from_url(gateway.redis_url), token_delay_s=0)
        worker_task = asyncio.create_task(worker.run())
        fresh_task = asyncio.create_task(keep_swarm_fresh(aioredis.Redis.from_url(gateway.redis_url)))
        timings: Timings = {"plain": [], "budgeted": [], "prepaid": []}
        try:
            async with (
                httpx.AsyncClient(base_url=gateway.url, timeout=30) as http,
                httpx.AsyncClient(base_url=prepaid_url, timeout=30) as prepaid,
            ):
                for _ in range(20):  # warm up every path: key cache, script cache, the accounts' rebuilds
                    await admit_once(http, plain)
                    await admit_once(http, budgeted)
                    await admit_once(prepaid, plain)
                for _ in range(requests):
                    timings["plain"].append(await admit_once(http, plain))
                    timings["budgeted"].append(await admit_once(http, budgeted))
                    timings["prepaid"].append(await admit_once(prepaid, plain))
        finally:
            worker_task.cancel()
            fresh_task.cancel()
            stop_gateway(prepaid_process)
            shutil.rmtree(log_dir, ignore_errors=True)
        timings["hold"], timings["ping"] = await hold_costs(gateway.redis_url, gateway.dsn, requests)
        return timings


async def hold_costs(redis_url: str, dsn: str, requests: int) -> tuple[list[float], list[float]]:
    """Latencies (s) of the balance's hold as admission awaits it, and of a bare Redis round trip, alternating."""
    import asyncpg

    from gateway.balances import Balances

    redis = aioredis.Redis.from_url(redis_url)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    balances = Balances(redis, pool, timeout_s=5, hold_ttl_s=60)
    holds: list[float] = []
    pings: list[float] = []
    try:
        for index in range(requests + 20):
            request_id = f"hold-{uuid.uuid4().hex}"
            started = time.perf_counter()
            await balances.hold(WALLET, request_id, Decimal("0.001"))
            held = time.perf_counter() - started
            started = time.perf_counter()
            await redis.ping()  # type: ignore[misc]
            pinged = time.perf_counter() - started
            await balances.release(WALLET, request_id)
            if index >= 20:  # the first ones warm the script cache and rebuild the account
                holds.append(held)
                pings.append(pinged)
    finally:
        await pool.close()
        await redis.aclose()
    return holds, pings


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

    timings = asyncio.run(admission(args.requests))
    off_p50, off_p99 = percentiles(timings["plain"])
    print(f"admission, {args.requests} requests per path, alternating, one client:")
    print(f"  plain (no budget, no balance check): p50 {off_p50:.2f} ms  p99 {off_p99:.2f} ms")
    for name, label in (("budgeted", "budgets"), ("prepaid", "the balance check")):
        on_p50, on_p99 = percentiles(timings[name])
        print(f"  with {label}: p50 {on_p50:.2f} ms  p99 {on_p99:.2f} ms")
        print(
            f"    added by {label}: p50 {on_p50 - off_p50:+.2f} ms (target <= 1)  p99 {on_p99 - off_p99:+.2f} ms; "
            f"ratio p50 x{on_p50 / off_p50:.2f}  p99 x{on_p99 / off_p99:.2f}"
        )
    hold_p50, _ = percentiles(timings["hold"])
    ping_p50, _ = percentiles(timings["ping"])
    print(
        f"  the balance's hold alone (Balances.hold, in this process): p50 {hold_p50:.3f} ms; a Redis PING "
        f"{ping_p50:.3f} ms; the hold beyond one round trip {hold_p50 - ping_p50:+.3f} ms"
    )
    matching_us, worker_us = per_token_costs(args.tokens)
    print(f"stop sequences (4 strings, none matching), {args.tokens} tokens:")
    print(
        f"  matching {matching_us:.2f} us/token; the worker's own per-token CPU (sample + decode + event) "
        f"{worker_us:.1f} us/token; share {100 * matching_us / worker_us:.2f}% (target <= 5%)"
    )


if __name__ == "__main__":
    interrupt_on_signals("bench_admission")
    main()
