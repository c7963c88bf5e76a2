"""What n > 1 costs in time: the worker generates a request's choices one after another, each in a Petals session
of its own (Petals cannot share a prefill between sessions: docs/structured-outputs.md, "Several choices"), so a
request of n choices should take about n times as long as one, and deliver the same tokens per second.

Sends the same seeded chat request with n = 1 and n = 3 (max_tokens 32, no stop, so every choice generates all
its tokens), alternately, one at a time, and prints the median wall time of each, their ratio and the tokens
per second. Run against a system (`--url`, `--key`: e.g. `make run`'s SmolLM2) or, by default, its own tiny
system: `.venv/bin/python bench/bench_choices.py` (about two minutes).
"""

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devstack.harness.interrupts import interrupt_on_signals  # noqa: E402
from devstack.harness.system import start_system, stop_system  # noqa: E402

RUNS = 5
MAX_TOKENS = 32


async def measure(url: str, key: str, model: str) -> None:
    times: dict[int, list[float]] = {1: [], 3: []}
    tokens: dict[int, list[int]] = {1: [], 3: []}
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600) as client:
        for run in range(RUNS + 1):
            for n in (1, 3):
                started = time.perf_counter()
                reply = await client.completions.create(
                    model=model,
                    prompt="The mesh streams tokens from many small servers",
                    max_tokens=MAX_TOKENS,
                    temperature=1.0,
                    seed=run,
                    n=n,
                )
                if run == 0:
                    continue  # warm-up: the first request of a worker loads what it caches
                times[n].append(time.perf_counter() - started)
                tokens[n].append(reply.usage.completion_tokens if reply.usage else 0)
    for n in (1, 3):
        median = statistics.median(times[n])
        rate = sum(tokens[n]) / sum(times[n])
        print(f"n={n}: median {median:.2f} s per request, {statistics.mean(tokens[n]):.0f} tokens, {rate:.1f} tokens/s")
    ratio = statistics.median(times[3]) / statistics.median(times[1])
    print(f"n=3 / n=1 wall time: {ratio:.2f}x (sequential sessions: about 3x expected)")


def main() -> None:
    interrupt_on_signals("bench_choices")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url")
    parser.add_argument("--key")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    if args.url:
        asyncio.run(measure(args.url, args.key, args.model))
        return
    sut = start_system(Path(tempfile.mkdtemp(prefix="bench-choices-")))
    try:
        asyncio.run(measure(sut.url, sut.system.api_key, sut.models[0].model_id))
    finally:
        stop_system(sut)


if __name__ == "__main__":
    main()
