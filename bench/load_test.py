"""A bounded load test on loopback: many concurrent clients against a whole system this script starts itself.

Each client sends greedy requests one after another until the time is up. Reports completed requests, errors
(target: 0), time to first token and per-request tokens/s percentiles, the queue depth over time, and whether
the ledger bills exactly the tokens the clients received. Not part of the test suite.

Run: `.venv/bin/python bench/load_test.py [--clients 200] [--seconds 90] [--tokens 16]`
"""

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis.asyncio as aioredis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devstack.harness.interrupts import interrupt_on_signals  # noqa: E402
from devstack.harness.ledger_view import ledger_rows  # noqa: E402
from devstack.harness.sse import stream_events  # noqa: E402
from devstack.harness.system import (  # noqa: E402
    SystemUnderTest,
    start_system,
    stop_system,
    wait_until_accounted,
)
from protocol import keys  # noqa: E402

PROMPT = "The mesh streams tokens from many small servers"


@dataclass
class Results:
    ttft_s: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=dict)
    """Tokens received, by request id, of every request that ended (done or error event)."""
    errors: list[str] = field(default_factory=list)
    queue_depth: list[tuple[float, int]] = field(default_factory=list)


async def one_client(client: httpx.AsyncClient, deadline: float, max_tokens: int, results: Results) -> None:
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}
    while time.monotonic() < deadline:
        started = time.perf_counter()
        first: float | None = None
        received = 0
        request_id = ""
        try:
            async for response, (_, event) in stream_events(client, "POST", "/inference/generate", json=body):
                request_id = response.headers["x-request-id"]
                if "token" in event:
                    received += 1
                    first = first or time.perf_counter() - started
                elif "error" in event:
                    results.errors.append(f"{request_id}: {event['error']['code']}")
                    results.tokens[request_id] = received
                else:
                    results.tokens[request_id] = received
        except Exception as exc:  # every failure is counted and shown, none stops the run
            results.errors.append(f"{request_id or 'unsent'}: {type(exc).__name__}: {str(exc)[:120]}")
            continue
        if first is not None:
            results.ttft_s.append(first)
            elapsed = time.perf_counter() - started - first
            if received > 1 and elapsed > 0:
                results.tokens_per_s.append((received - 1) / elapsed)


async def sample_queue(redis_url: str, model_id: str, results: Results, stop: asyncio.Event) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    began = time.monotonic()
    try:
        while not stop.is_set():
            results.queue_depth.append((time.monotonic() - began, await redis.zcard(keys.queue_for(model_id))))
            await asyncio.sleep(1)
    finally:
        await redis.aclose()


async def run_load(sut: SystemUnderTest, clients: int, seconds: float, max_tokens: int) -> Results:
    results = Results()
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_queue(sut.redis_url, sut.models[0].model_id, results, stop))
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=sut.url, headers=sut.headers, timeout=120, limits=limits) as client:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(one_client(client, deadline, max_tokens, results) for _ in range(clients)))
    stop.set()
    await sampler
    return results


def percentiles(values: list[float], scale: float = 1.0) -> str:
    if not values:
        return "none"
    ordered = sorted(values)
    pick = {q: ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * scale for q in (50, 90, 99)}
    return ", ".join(f"p{q} {v:.1f}" for q, v in pick.items())


async def reconcile(sut: SystemUnderTest, results: Results) -> tuple[int, int, int]:
    """(tokens clients received, tokens the ledger bills for those requests, requests without one ledger row)."""
    await wait_until_accounted(sut.redis_url, timeout_s=120)
    rows = await ledger_rows(sut.postgres_url, list(results.tokens))
    billed = sum(s[0].row["tokens_generated"] for s in rows.values() if len(s) == 1)
    return sum(results.tokens.values()), billed, sum(len(s) != 1 for s in rows.values())


def main() -> None:
    interrupt_on_signals("load_test")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=90, help="how long clients keep sending (at most 120)")
    parser.add_argument("--tokens", type=int, default=16, help="max_tokens of each request")
    args = parser.parse_args()
    seconds = min(args.seconds, 120.0)

    sut = start_system(Path(tempfile.mkdtemp(prefix="load-test-")))
    try:
        began = time.monotonic()
        results = asyncio.run(run_load(sut, args.clients, seconds, args.tokens))
        wall = time.monotonic() - began
        received, billed, unbilled = asyncio.run(reconcile(sut, results))
    finally:
        stop_system(sut)

    print(f"load: {args.clients} clients for {seconds:.0f} s (wall {wall:.1f} s), max_tokens {args.tokens}")
    print(f"  completed requests: {len(results.tokens)} ({len(results.tokens) / wall:.1f}/s)")
    print(f"  errors: {len(results.errors)} (target 0)")
    for error in results.errors[:10]:
        print(f"    {error}")
    print(f"  time to first token (ms): {percentiles(results.ttft_s, 1000)}")
    print(f"  per-request tokens/s after the first: {percentiles(results.tokens_per_s)}")
    print(f"  aggregate tokens/s: {received / wall:.1f}")
    depth = results.queue_depth
    print(f"  queue depth (every 1 s, max {max((d for _, d in depth), default=0)}):")
    print("    " + " ".join(str(d) for _, d in depth))
    verdict = "reconciled" if received == billed and unbilled == 0 else "MISMATCH"
    print(
        f"  ledger: clients received {received} tokens, ledger bills {billed}; {unbilled} requests without "
        f"exactly one session row: {verdict}"
    )


if __name__ == "__main__":
    main()
