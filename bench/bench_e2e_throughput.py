"""Tokens/s of 8 concurrent requests over HTTP (the whole system) against 8 concurrent sessions driven directly
by a Petals client in this process, on the same local swarm.

Prints, in one run, both rates and their ratio (target: at least 0.9x). The two paths take turns, three rounds
each, so that the machine's changing load falls on both alike.

Then tracing on against off, on the same system: the gateway, the workers and accounting are restarted with
FAR_MESH_TRACING=otlp, exporting to an OTLP/HTTP sink in this process (spans serialised and posted as in
production), then restarted with tracing off again; the traced rate is compared with the mean of the untraced
rounds before and after it (target: at least 0.97x).
Run: `.venv/bin/python bench/bench_e2e_throughput.py` (starts its own system; about four minutes).
"""

import asyncio
import signal
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from bench_worker import CONCURRENT, TOKENS_EACH, direct_generation, direct_throughput  # noqa: E402

from devstack.harness.interrupts import interrupt_on_signals  # noqa: E402
from devstack.harness.sse import collect, token_events  # noqa: E402
from devstack.harness.system import SystemUnderTest, start_system, stop_system, wait_until_serving  # noqa: E402
from mesh.client import open_client  # noqa: E402
from mesh.process_groups import signal_group  # noqa: E402

PROMPT = "The mesh streams tokens from many small servers"
ROUNDS = 3
TRACED_PROCESSES = ("web", "accounting", "worker.1", "worker.2")


class OtlpSink(BaseHTTPRequestHandler):
    """Answers every OTLP/HTTP export with 200, counting the bytes of spans it was sent."""

    received_bytes = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        OtlpSink.received_bytes += len(body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def restart_traced(sut: SystemUnderTest, env: dict[str, str]) -> None:
    """Restart the traced processes with `env` (FAR_MESH_TRACING on or off) and wait until each serves."""
    for name in TRACED_PROCESSES:
        old = sut.system.process(name)
        signal_group(old.process.pid, signal.SIGTERM)
        old.process.wait(timeout=60)
        wait_until_serving(sut.system.start_process(name, env), timeout_s=180)
    asyncio.run(over_http(sut))  # warm the new processes' routes


def tracing_rounds(sut: SystemUnderTest) -> tuple[float, float, float]:
    """tok/s untraced, traced, untraced again (ROUNDS rounds each)."""
    sink = ThreadingHTTPServer(("127.0.0.1", 0), OtlpSink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    traced = {
        "FAR_MESH_TRACING": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}",
    }
    try:
        before = http_rate(sut)
        restart_traced(sut, traced)
        on = http_rate(sut)
        restart_traced(sut, {"FAR_MESH_TRACING": "off"})
        after = http_rate(sut)
    finally:
        sink.shutdown()
    assert OtlpSink.received_bytes > 0, "the traced processes exported nothing"
    return before, on, after


def http_rate(sut: SystemUnderTest) -> float:
    tokens = 0
    seconds = 0.0
    for _ in range(ROUNDS):
        got, took = asyncio.run(over_http(sut))
        tokens, seconds = tokens + got, seconds + took
    return tokens / seconds


async def over_http(sut: SystemUnderTest) -> tuple[int, float]:
    """(tokens, seconds) of CONCURRENT requests streamed at once."""
    body = {"prompt": PROMPT, "max_tokens": TOKENS_EACH, "temperature": 0}
    async with sut.client() as client:
        started = time.perf_counter()
        streams = await asyncio.gather(*(collect(client, body) for _ in range(CONCURRENT)))
        elapsed = time.perf_counter() - started
    return sum(len(token_events(events)) for events in streams), elapsed


def main() -> None:
    interrupt_on_signals("bench_e2e_throughput")
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
        untraced_before, traced, untraced_after = tracing_rounds(sut)
    finally:
        stop_system(sut)
    print(f"{CONCURRENT} concurrent x {TOKENS_EACH} tokens, {ROUNDS} rounds each:")
    print(f"  direct Petals sessions: {direct:.1f} tok/s")
    print(f"  over HTTP (SSE):        {http:.1f} tok/s")
    print(f"  system / direct: {http / direct:.2f}x (target >= 0.9x)")
    untraced = (untraced_before + untraced_after) / 2
    print(f"  tracing off: {untraced_before:.1f}, then {untraced_after:.1f} tok/s; on (OTLP): {traced:.1f} tok/s")
    print(f"  traced / untraced: {traced / untraced:.2f}x (target >= 0.97x; {OtlpSink.received_bytes} bytes of spans)")


if __name__ == "__main__":
    main()
