"""Time to first token over HTTP (the whole system: gateway, queue, worker, swarm, SSE) against a Petals client
driven directly in this process, on the same local swarm.

Prints, in one run, p50/p90 of both and the difference (target: at most 20 ms added at p50).
Run: `.venv/bin/python bench/bench_e2e_latency.py` (starts its own system; about two minutes).
"""

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from bench_worker import direct_generation  # noqa: E402

from devstack.harness.interrupts import interrupt_on_signals  # noqa: E402
from devstack.harness.sse import stream_events  # noqa: E402
from devstack.harness.system import SystemUnderTest, start_system, stop_system  # noqa: E402
from mesh.client import open_client  # noqa: E402

PROMPT = "The mesh streams tokens from many small servers"
RUNS = 30


async def http_first_tokens(sut: SystemUnderTest, runs: int) -> list[float]:
    """Seconds from sending POST /inference/generate to receiving its first token event, one request at a time."""
    latencies = []
    async with sut.client() as client:
        for _ in range(runs):
            started = time.perf_counter()
            body = {"prompt": PROMPT, "max_tokens": 1, "temperature": 0}
            async for _, (_, event) in stream_events(client, "POST", "/inference/generate", json=body):
                if "token" in event:
                    latencies.append(time.perf_counter() - started)
    return latencies


def percentile(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


def main() -> None:
    interrupt_on_signals("bench_e2e_latency")
    sut = start_system(Path(tempfile.mkdtemp(prefix="bench-e2e-latency-")))
    try:
        assert sut.system.swarm is not None
        model = sut.models[0]
        client = open_client(model, sut.system.swarm.initial_peers)
        prompt_ids = list(client.tokenizer(PROMPT)["input_ids"])
        direct_generation(client, prompt_ids, 2)  # warm the route
        direct = [direct_generation(client, prompt_ids, 1)[0] for _ in range(RUNS)]
        client.close()
        asyncio.run(http_first_tokens(sut, 3))  # warm the workers' routes and the gateway's connections
        http = asyncio.run(http_first_tokens(sut, RUNS))
    finally:
        stop_system(sut)
    direct_p50, http_p50 = statistics.median(direct) * 1000, statistics.median(http) * 1000
    print(f"first token, {RUNS} sequential runs each:")
    print(f"  direct Petals client: p50 {direct_p50:.1f} ms, p90 {percentile(direct, 0.9):.1f} ms")
    print(f"  over HTTP (SSE):      p50 {http_p50:.1f} ms, p90 {percentile(http, 0.9):.1f} ms")
    added = http_p50 - direct_p50
    print(f"  added by the system at p50: {added:+.1f} ms (target <= 20 ms), {http_p50 / direct_p50:.2f}x")


if __name__ == "__main__":
    main()
