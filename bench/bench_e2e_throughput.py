"""Tokens/s of 8 concurrent requests over HTTP (the whole system) against 8 concurrent sessions driven directly
by a Petals client in this process, on the same local swarm.

Prints, in one run, both rates and their ratio (target: at least 0.9x). The two paths take turns, three rounds
each, so that the machine's changing load falls on both alike.
Run: `.venv/bin/python bench/bench_e2e_throughput.py` (starts its own system; about two minutes).
"""

import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from bench_worker import CONCURRENT, TOKENS_EACH, direct_generation, direct_throughput  # noqa: E402

from devstack.harness.sse import collect, token_events  # noqa: E402
from devstack.harness.system import SystemUnderTest, start_system, stop_system  # noqa: E402
from mesh.client import open_client  # noqa: E402

PROMPT = "The mesh streams tokens from many small servers"
ROUNDS = 3


async def over_http(sut: SystemUnderTest) -> tuple[int, float]:
    """(tokens, seconds) of CONCURRENT requests streamed at once."""
    body = {"prompt": PROMPT, "max_tokens": TOKENS_EACH, "temperature": 0}
    async with sut.client() as client:
        started = time.perf_counter()
        streams = await asyncio.gather(*(collect(client, body) for _ in range(CONCURRENT)))
        elapsed = time.perf_counter() - started
    return sum(len(token_events(events)) for events in streams), elapsed


def main() -> None:
    sut = start_system(Path(tempfile.mkdtemp(prefix="bench-e2e-throughput-")))
    try:
        assert sut.system.swarm is not None
        client = open_client(sut.models[0], sut.system.swarm.initial_peers)
        prompt_ids = list(client.tokenizer(PROMPT)["input_ids"])
        direct_generation(client, prompt_ids, 2)  # warm the routes
        asyncio.run(over_http(sut))
        direct_tokens = http_tokens = 0
        direct_s = http_s = 0.0
        for _ in range(ROUNDS):
            tokens, seconds = direct_throughput(client, prompt_ids)
            direct_tokens, direct_s = direct_tokens + tokens, direct_s + seconds
            tokens, seconds = asyncio.run(over_http(sut))
            http_tokens, http_s = http_tokens + tokens, http_s + seconds
        client.close()
        direct, http = direct_tokens / direct_s, http_tokens / http_s
    finally:
        stop_system(sut)
    print(f"{CONCURRENT} concurrent x {TOKENS_EACH} tokens, {ROUNDS} rounds each:")
    print(f"  direct Petals sessions: {direct:.1f} tok/s")
    print(f"  over HTTP (SSE):        {http:.1f} tok/s")
    print(f"  system / direct: {http / direct:.2f}x (target >= 0.9x)")


if __name__ == "__main__":
    main()
