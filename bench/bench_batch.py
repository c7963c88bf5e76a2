"""A 1,000-line batch through the whole system with a worker killed half way, and interactive first-token latency
while it runs against the same system idle.

Prints, from one run: interactive first token (p50/p90 of sequential one-token requests) with no batch and while
the batch runs, the batch's wall time and lines/s, and the exactly-once checks (every custom_id once in the output
file, one ledger session per line billed at the discounted price).
Run: `.venv/bin/python bench/bench_batch.py [--lines 1000] [--tokens 16]` (starts its own system; a few minutes).
"""

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import redis.asyncio as aioredis  # noqa: E402

from devstack.harness.interrupts import interrupt_on_signals  # noqa: E402
from devstack.harness.ledger_view import ledger_rows  # noqa: E402
from devstack.harness.sse import stream_events  # noqa: E402
from devstack.harness.system import (  # noqa: E402
    PRICE_FAR,
    SystemUnderTest,
    start_system,
    stop_system,
    wait_until_accounted,
)
from gateway.batch_store import line_request_id  # noqa: E402
from protocol import keys  # noqa: E402

PROMPT = "The mesh streams tokens from many small servers"
RUNS = 30


async def first_tokens(sut: SystemUnderTest, runs: int) -> list[float]:
    """Seconds from POST /inference/generate to its first token event, one request at a time."""
    latencies = []
    async with sut.client() as client:
        for _ in range(runs):
            started = time.perf_counter()
            body = {"prompt": PROMPT, "max_tokens": 1, "temperature": 0}
            async for _, (_, event) in stream_events(client, "POST", "/inference/generate", json=body):
                if "token" in event:
                    latencies.append(time.perf_counter() - started)
    return latencies


def ms(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


async def kill_a_worker_mid_line(sut: SystemUnderTest, batch_id: str, lines: int) -> str:
    """SIGKILL the worker running some line of the batch mid-stream; returns that worker's process name."""
    redis = aioredis.Redis.from_url(sut.redis_url, decode_responses=True)
    try:
        while True:
            for index in range(lines):
                request_id = line_request_id(batch_id, index)
                owner = await redis.get(keys.job_lease(request_id))
                if owner and await redis.xlen(keys.token_stream(request_id)) >= 3:
                    pid = int(owner.partition(":")[0].rpartition("-")[2])
                    child = next(c for c in sut.system.supervisor.children if c.process.pid == pid)
                    os.killpg(child.process.pid, signal.SIGKILL)
                    child.process.wait(10)
                    return child.name
            await asyncio.sleep(0.02)
    finally:
        await redis.aclose()


async def run(sut: SystemUnderTest, lines: int, tokens: int) -> None:
    model = sut.models[0].model_id
    await first_tokens(sut, 3)  # warm routes and connections
    idle = await first_tokens(sut, RUNS)
    text = "".join(
        json.dumps(
            {
                "custom_id": f"row-{i}",
                "method": "POST",
                "url": "/v1/completions",
                "body": {"model": model, "prompt": f"{PROMPT} {i}", "max_tokens": tokens, "temperature": 0},
            }
        )
        + "\n"
        for i in range(lines)
    )
    async with sut.client(timeout_s=120) as client:
        uploaded = (
            await client.post("/v1/files", files={"file": ("in.jsonl", text.encode())}, data={"purpose": "batch"})
        ).json()
        body = {"input_file_id": uploaded["id"], "endpoint": "/v1/completions", "completion_window": "24h"}
        started = time.perf_counter()
        batch = (await client.post("/v1/batches", json=body)).json()
        batch_id = batch["id"]
        assert batch["status"] == "in_progress", batch
        await asyncio.sleep(2)
        busy = await first_tokens(sut, RUNS)
        during = (await client.get(f"/v1/batches/{batch_id}")).json()["request_counts"]
        victim = await kill_a_worker_mid_line(sut, batch_id, lines)
        killed_at = (await client.get(f"/v1/batches/{batch_id}")).json()["request_counts"]
        await asyncio.to_thread(sut.restart_process, victim)
        while (batch := (await client.get(f"/v1/batches/{batch_id}")).json())["status"] not in (
            "completed",
            "failed",
            "expired",
        ):
            await asyncio.sleep(0.5)
        wall_s = time.perf_counter() - started
        output = (await client.get(f"/v1/files/{batch['output_file_id']}/content")).text.splitlines()
    custom_ids = [json.loads(line)["custom_id"] for line in output]
    await wait_until_accounted(sut.redis_url, timeout_s=120)
    rows = await ledger_rows(sut.postgres_url, [line_request_id(batch_id, i) for i in range(lines)])
    sessions = [len(found) for found in rows.values()]
    prices = {s.row["price_per_token_far"] for found in rows.values() for s in found}
    print(f"interactive first token, {RUNS} sequential one-token requests each:")
    print(f"  idle system:        p50 {statistics.median(idle) * 1000:.1f} ms, p90 {ms(idle, 0.9):.1f} ms")
    print(f"  while a batch runs: p50 {statistics.median(busy) * 1000:.1f} ms, p90 {ms(busy, 0.9):.1f} ms")
    print(f"  (batch lines done when measured: {during['completed']} of {lines})")
    print(
        f"batch of {lines} lines x {tokens} tokens: {batch['status']} in {wall_s:.1f} s ({lines / wall_s:.1f} lines/s)"
    )
    print(f"  worker {victim} SIGKILLed mid-line after {killed_at['completed']} lines, restarted")
    print(f"  request_counts {batch['request_counts']}")
    print(f"  output lines {len(output)}, distinct custom_ids {len(set(custom_ids))}")
    print(f"  ledger sessions per line: {dict(sorted((n, sessions.count(n)) for n in set(sessions)))}")
    print(f"  prices billed: {sorted(prices)} (catalogue {PRICE_FAR}, discount to {PRICE_FAR * Decimal('0.5')})")


def main() -> None:
    interrupt_on_signals("bench_batch")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    sut = start_system(Path(tempfile.mkdtemp(prefix="bench-batch-")))
    try:
        asyncio.run(run(sut, args.lines, args.tokens))
    finally:
        stop_system(sut)


if __name__ == "__main__":
    main()
