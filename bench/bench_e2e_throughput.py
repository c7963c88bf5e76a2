"""Tokens/s of 8 concurrent requests over HTTP (the whole system) against 8 concurrent sessions driven directly
by a Petals client in this process, on the same local swarm.

Prints, in one run, both rates and their ratio (target: at least 0.9x).
Run: `.venv/bin/python bench/bench_e2e_throughput.py` (starts its own system; about two minutes).
"""

import asyncio
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from bench_worker import direct_generation  # noqa: E402

from mesh.client import open_client  # noqa: E402
from tests.fixtures.system import SystemUnderTest, collect, start_system, stop_system, token_events  # noqa: E402

PROMPT = "The mesh streams tokens from many small servers"
CONCURRENT = 8
TOKENS_EACH = 48


async def http_tokens_per_s(sut: SystemUnderTest) -> float:
    body = {"prompt": PROMPT, "max_tokens": TOKENS_EACH, "temperature": 0}
    async with sut.client() as client:
        started = time.perf_counter()
        streams = await asyncio.gather(*(collect(client, body) for _ in range(CONCURRENT)))
        elapsed = time.perf_counter() - started
    return sum(len(token_events(events)) for events in streams) / elapsed


def main() -> None:
    sut = start_system(Path(tempfile.mkdtemp(prefix="bench-e2e-throughput-")))
    try:
        assert sut.system.swarm is not None
        client = open_client(sut.models[0], sut.system.swarm.initial_peers)
        prompt_ids = list(client.tokenizer(PROMPT)["input_ids"])
        direct_generation(client, prompt_ids, 2)  # warm the route
        with ThreadPoolExecutor(CONCURRENT) as pool:
            started = time.perf_counter()
            results = list(pool.map(lambda _: direct_generation(client, prompt_ids, TOKENS_EACH), range(CONCURRENT)))
            direct = sum(n for _, n in results) / (time.perf_counter() - started)
        client.close()
        asyncio.run(http_tokens_per_s(sut))  # warm the workers' routes
        http = asyncio.run(http_tokens_per_s(sut))
    finally:
        stop_system(sut)
    print(f"{CONCURRENT} concurrent x {TOKENS_EACH} tokens:")
    print(f"  direct Petals sessions: {direct:.1f} tok/s")
    print(f"  over HTTP (SSE):        {http:.1f} tok/s")
    print(f"  system / direct: {http / direct:.2f}x (target >= 0.9x)")


if __name__ == "__main__":
    main()
