"""Our front end against a plain Petals HTTP front end, on the same local swarm, in one run (issue #32 item 2).

Ours: the whole system over HTTP (`POST /inference/generate`: the gateway, one worker, accounting, Redis).
The baseline: `plain_petals_http.py`, one process with a Petals client answering HTTP with the same greedy
generation loop and nothing else. Both are read by the same SSE client. Prints ours / baseline for:

- first token p50, one request at a time, from sending the POST to reading the first token event (target: at
  most 1.0x);
- tokens/s of 8 concurrent requests of 48 tokens (target: at least 0.97x);
- CPU per token over those rounds: ours counts the gateway, the worker, accounting and Redis (each printed too,
  the worker with its p2pd and DHT processes), the baseline its one process with its own; never the swarm's
  servers, which do the same work for both, nor this driver (`front_end_cpu.py`).

The paths take turns (baseline, then ours, round after round) so that the machine's changing load falls on both
alike. Run: `.venv/bin/python bench/bench_http_baseline.py` (starts its own system; about three minutes).
"""

import asyncio
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]  # pinned (requirements/constraints.txt), with the mesh extra

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from bench_worker import CONCURRENT, PROMPT, TOKENS_EACH  # noqa: E402
from front_end_cpu import cpu_between, cpu_by_process  # noqa: E402

from accounting.settings import AccountingSettings  # noqa: E402
from devstack.harness.interrupts import interrupt_on_signals  # noqa: E402
from devstack.harness.sse import stream_events  # noqa: E402
from devstack.harness.system import SystemUnderTest, start_system, stop_system  # noqa: E402
from mesh.ports import free_port  # noqa: E402
from mesh.process_groups import signal_group  # noqa: E402
from verifier.settings import VerifierSettings  # noqa: E402
from workers.settings import WorkerSettings  # noqa: E402

TTFT_RUNS = 20
ROUNDS = 3
BASELINE_START_S = 120
MEASURE_TIMEOUT_S = 600
TEST_TIMINGS = (
    (WorkerSettings, "WORKER_LEASE_TTL_S"),
    (WorkerSettings, "WORKER_SNAPSHOT_INTERVAL_S"),
    (AccountingSettings, "ACCOUNTING_CLAIM_IDLE_MS"),
    (AccountingSettings, "ACCOUNTING_CLAIM_INTERVAL_S"),
    (VerifierSettings, "VERIFIER_REFRESH_INTERVAL_S"),
)
"""The test system's intervals, shortened so that tests see a fault within seconds; the comparison runs ours with
the defaults an operator runs, since its tokens pay for the standing work (swarm snapshots and their pings, lease
renewals, claims) these set: at the test system's 2 s snapshots an idle worker used 17 ms of CPU a second, 5 at
the default 10 s."""
OURS = ("web", "worker", "accounting")
"""The Procfile processes of our generation path (`worker` stands for each `worker.N`)."""


@dataclass
class FrontEnd:
    """One front end under measurement."""

    name: str
    client: Callable[[], httpx.AsyncClient]
    route: str
    body: dict[str, Any]
    pids: dict[str, list[int]]
    """Each part's processes (their descendants are counted with them)."""
    ttft: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)


async def first_token_s(path: FrontEnd) -> float:
    async with path.client() as client:
        started = time.perf_counter()
        async for _, (_, event) in stream_events(client, "POST", path.route, json=path.body | {"max_tokens": 1}):
            if "token" in event:
                return time.perf_counter() - started
    raise RuntimeError(f"{path.name}: no token")


async def one_stream(client: httpx.AsyncClient, path: FrontEnd) -> int:
    tokens = 0
    async for _, (_, event) in stream_events(client, "POST", path.route, json=path.body):
        if "error" in event:
            raise RuntimeError(f"{path.name} failed: {event['error']}")
        tokens += "token" in event
    return tokens


async def concurrent_round(path: FrontEnd, skip_groups: frozenset[int]) -> None:
    async with path.client() as client:
        before = {part: cpu_by_process(pids, skip_groups=skip_groups) for part, pids in path.pids.items()}
        started = time.perf_counter()
        counts = await asyncio.gather(*(one_stream(client, path) for _ in range(CONCURRENT)))
        path.seconds += time.perf_counter() - started
        await asyncio.sleep(0.2)  # accounting writes the usage records just after the endings: part of the cost
        for part, pids in path.pids.items():
            spent = cpu_between(before[part], cpu_by_process(pids, skip_groups=skip_groups))
            path.cpu_s[part] = path.cpu_s.get(part, 0.0) + spent
    path.tokens += sum(counts)


def start_baseline(sut: SystemUnderTest) -> tuple["subprocess.Popen[bytes]", str]:
    assert sut.system.swarm is not None
    port = free_port()
    argv = [
        sys.executable,
        str(REPO / "bench" / "plain_petals_http.py"),
        "--port",
        str(port),
        "--model-json",
        sut.models[0].model_dump_json(),
        "--peers",
        ",".join(sut.system.swarm.initial_peers),
    ]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, start_new_session=True)
    timer = threading.Timer(BASELINE_START_S, process.kill)
    timer.start()
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"the baseline did not start within {BASELINE_START_S} s")
    finally:
        timer.cancel()
    return process, f"http://127.0.0.1:{port}"


def redis_pid(sut: SystemUnderTest) -> int:
    port = str(sut.redis_server.port)
    for child in psutil.Process().children():
        if child.name().startswith("redis-server") and port in " ".join(child.cmdline()):
            return int(child.pid)
    raise RuntimeError("the system's redis-server is not a child of this process")


def swarm_groups(sut: SystemUnderTest) -> frozenset[int]:
    swarm = sut.system.swarm
    assert swarm is not None
    return frozenset(p.pid for p in [*swarm.servers, *([swarm.dht_process] if swarm.dht_process else [])])


async def measure(ours: FrontEnd, baseline: FrontEnd, skip_groups: frozenset[int]) -> None:
    async with asyncio.timeout(MEASURE_TIMEOUT_S):
        await _measure(ours, baseline, skip_groups)


async def _measure(ours: FrontEnd, baseline: FrontEnd, skip_groups: frozenset[int]) -> None:
    for path in (baseline, ours):  # warm the routes and the connections
        await first_token_s(path)
        await concurrent_round(path, skip_groups)
        path.tokens, path.seconds, path.cpu_s = 0, 0.0, {}
    for _ in range(TTFT_RUNS):
        for path in (baseline, ours):
            path.ttft.append(await first_token_s(path))
    for _ in range(ROUNDS):
        for path in (baseline, ours):
            await concurrent_round(path, skip_groups)


def report(ours: FrontEnd, baseline: FrontEnd) -> None:
    print(f"load average at the end (1, 5, 15 min): {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    ours_p50, base_p50 = (statistics.median(p.ttft) * 1000 for p in (ours, baseline))
    print(f"first token p50, {TTFT_RUNS} sequential requests each: baseline {base_p50:.1f} ms, ours {ours_p50:.1f} ms")
    print(f"  ours / baseline: {ours_p50 / base_p50:.2f}x ({ours_p50 - base_p50:+.1f} ms; target <= 1.0x)")
    ours_tps, base_tps = (p.tokens / p.seconds for p in (ours, baseline))
    print(f"{CONCURRENT} concurrent x {TOKENS_EACH} tokens, {ROUNDS} rounds each:")
    print(f"  baseline {base_tps:.1f} tok/s, ours {ours_tps:.1f} tok/s: {ours_tps / base_tps:.2f}x (target >= 0.97x)")
    base_ms = sum(baseline.cpu_s.values()) / baseline.tokens * 1000
    ours_ms = sum(ours.cpu_s.values()) / ours.tokens * 1000
    parts = ", ".join(f"{part} {seconds / ours.tokens * 1000:.2f}" for part, seconds in ours.cpu_s.items())
    print(f"CPU per token (swarm servers excluded): baseline {base_ms:.2f} ms, ours {ours_ms:.2f} ms ({parts})")
    print(f"  ours / baseline: {ours_ms / base_ms:.2f}x", flush=True)


def main() -> None:
    interrupt_on_signals("bench_http_baseline")
    defaults = {name: str(settings.model_fields[name.lower()].default) for settings, name in TEST_TIMINGS}
    sut = start_system(Path(tempfile.mkdtemp(prefix="bench-http-baseline-")), workers=1, extra_env=defaults)
    baseline_process: subprocess.Popen[bytes] | None = None
    try:
        baseline_process, baseline_url = start_baseline(sut)
        children = sut.system.supervisor.children
        ours = FrontEnd(
            name="ours",
            client=lambda: sut.client(timeout_s=120),
            route="/inference/generate",
            body={"prompt": PROMPT, "max_tokens": TOKENS_EACH, "temperature": 0},
            pids={part: [c.process.pid for c in children if c.name.partition(".")[0] == part] for part in OURS}
            | {"redis": [redis_pid(sut)]},
        )
        baseline = FrontEnd(
            name="baseline",
            client=lambda: httpx.AsyncClient(base_url=baseline_url, timeout=120),
            route="/generate",
            body={"prompt": PROMPT, "max_tokens": TOKENS_EACH},
            pids={"baseline": [baseline_process.pid]},
        )
        asyncio.run(measure(ours, baseline, swarm_groups(sut)))
    except BaseException:
        if baseline_process is not None and baseline_process.poll() is None:
            print("the run failed: the baseline's threads, where they wait (to stderr)", flush=True)
            baseline_process.send_signal(signal.SIGUSR1)
            time.sleep(1)
        raise
    finally:
        if baseline_process is not None:
            signal_group(baseline_process.pid, signal.SIGTERM)
            try:
                baseline_process.wait(30)
            except subprocess.TimeoutExpired:
                signal_group(baseline_process.pid, signal.SIGKILL)
        stop_system(sut)
    report(ours, baseline)


if __name__ == "__main__":
    main()
