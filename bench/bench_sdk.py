"""Client CPU per 10k tokens through the Python SDK (`farlabs`) against a raw httpx SSE reader, on the same streams.

Prints, in one run, both costs and their ratio (target: at most 1.2x), in two settings:

- live: each request is followed at once by two threads, the SDK (which also POSTs it) and a raw reader
  (httpx `iter_lines`, `json.loads` of each `data:` line), while the system generates it; each thread's own
  CPU time (`time.thread_time`) is what it cost. Tokens arrive one or two per read, so per-read overheads show.
- replay: the same finished streams read again from their first event, the two readers taking turns, each
  timed by process CPU time. Whole batches arrive per read, so per-event overheads show.

Both readers must receive the same tokens. Run: `.venv/bin/python bench/bench_sdk.py` (starts its own system;
about a minute). `--requests`, `--max-tokens` and `--concurrency` change the load.
"""

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "sdk" / "python")]

from farlabs import FarMesh  # noqa: E402

from devstack.harness.interrupts import interrupt_on_signals  # noqa: E402
from devstack.harness.system import SystemUnderTest, start_system, stop_system  # noqa: E402

PROMPT = "A request walks through the gateway"
ROUNDS = 3


def raw_tokens(client: httpx.Client, request_id: str) -> list[str]:
    """The baseline: what a user writes with httpx alone to read one request's stream from its start."""
    tokens = []
    with client.stream("GET", f"/inference/{request_id}/stream") as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if "token" in event:
                    tokens.append(event["token"])
                elif "done" in event or "error" in event:
                    break
    return tokens


class Cpu:
    """CPU seconds and tokens per reader, added up from several threads."""

    def __init__(self) -> None:
        self.seconds = {"sdk": 0.0, "raw": 0.0}
        self.tokens = {"sdk": 0, "raw": 0}
        self._lock = threading.Lock()

    def add(self, reader: str, seconds: float, tokens: int) -> None:
        with self._lock:
            self.seconds[reader] += seconds
            self.tokens[reader] += tokens

    def per_10k(self, reader: str) -> float:
        return self.seconds[reader] / self.tokens[reader] * 10_000


def follow_live(sut: SystemUnderTest, mesh: FarMesh, raw: httpx.Client, max_tokens: int, cpu: Cpu) -> str:
    """Start one request and read it with both readers at once, each in its own thread."""
    request_id = f"bench-sdk-{uuid.uuid4().hex[:12]}"
    results: dict[str, list[str]] = {}
    submitted = threading.Event()

    def sdk() -> None:
        started = time.thread_time()
        stream = mesh.chat(PROMPT, max_tokens=max_tokens, temperature=0, request_id=request_id)
        submitted.set()
        results["sdk"] = list(stream)
        cpu.add("sdk", time.thread_time() - started, len(results["sdk"]))

    def baseline() -> None:
        submitted.wait(60)  # the request exists once the SDK's POST is answered; waiting costs no CPU
        started = time.thread_time()
        results["raw"] = raw_tokens(raw, request_id)
        cpu.add("raw", time.thread_time() - started, len(results["raw"]))

    threads = [threading.Thread(target=sdk), threading.Thread(target=baseline)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results["sdk"] == results["raw"], f"{request_id}: the readers received different tokens"
    return request_id


def replay(mesh: FarMesh, raw: httpx.Client, request_ids: list[str], cpu: Cpu) -> None:
    for _ in range(ROUNDS):
        started = time.process_time()
        tokens = sum(len(raw_tokens(raw, r)) for r in request_ids)
        cpu.add("raw", time.process_time() - started, tokens)
        started = time.process_time()
        tokens = sum(len(list(mesh.resume(r))) for r in request_ids)
        cpu.add("sdk", time.process_time() - started, tokens)


def report(title: str, cpu: Cpu) -> None:
    sdk, raw = cpu.per_10k("sdk"), cpu.per_10k("raw")
    print(f"{title}: {cpu.tokens['sdk']} tokens per reader")
    print(f"  raw httpx SSE reader: {raw:.3f} CPU-s per 10k tokens")
    print(f"  farlabs SDK:          {sdk:.3f} CPU-s per 10k tokens")
    print(f"  SDK / raw: {sdk / raw:.2f}x (target <= 1.2x)")


def main() -> None:
    interrupt_on_signals("bench_sdk")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=640)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would bury the report

    sut = start_system(Path(tempfile.mkdtemp(prefix="bench-sdk-")))
    try:
        with (
            FarMesh(api_key=sut.system.api_key, base_url=sut.url) as mesh,
            httpx.Client(base_url=sut.url, headers=sut.headers, timeout=60) as raw,
        ):
            follow_live(sut, mesh, raw, 8, Cpu())  # warm both readers' connections and the routes
            live = Cpu()
            with ThreadPoolExecutor(args.concurrency) as pool:
                futures = [
                    pool.submit(follow_live, sut, mesh, raw, args.max_tokens, live) for _ in range(args.requests)
                ]
                request_ids = [f.result() for f in futures]
            replayed = Cpu()
            replay(mesh, raw, request_ids, replayed)
    finally:
        stop_system(sut)
    report(f"live, {args.requests} requests, {args.concurrency} at a time", live)
    report(f"replay of the same streams, {ROUNDS} rounds each", replayed)


if __name__ == "__main__":
    main()
