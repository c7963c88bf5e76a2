"""What timing every server's decode steps (`mesh.peer_speed`, always on) costs a worker per token.

1. Micro: a server session's `step` that does nothing, called bare and through the timer's wrapper (two
   `perf_counter` calls, the decode test and a locked EMA update), in one process: CPU microseconds added per
   step per server (a token crosses one step per server of its route), median of `--repeats` runs of `--calls`.
2. Swarm (`--tokens` > 0): a local swarm of the 4-block tiny model over two servers (blocks 0..1 and 2..3), one
   client; sessions of `--tokens` decode steps with and without timing, alternated, CPU seconds of this process per
   token (`time.process_time`, which counts the client's threads), median of `--sessions` each. Ratio timed / bare.

    .venv/bin/python bench/bench_peer_speed.py [--calls 200000] [--repeats 5] [--tokens 32] [--sessions 8]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devstack.harness.interrupts import interrupt_on_signals  # noqa: E402
from mesh.peer_speed import PeerSpeeds  # noqa: E402

CACHE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "far-mesh"
ONE_TOKEN = SimpleNamespace(shape=(1, 1, 64))


class _ServerSession:
    def __init__(self) -> None:
        self.span = SimpleNamespace(peer_id="peer", start=0, end=2)
        self.stepped = True

    def step(self, inputs: Any, prompts: Any, hypo_ids: Any, *, step_id: str) -> Any:
        return inputs


def micro_seconds(calls: int, timed: bool) -> float:
    """CPU seconds per step, bare or timed."""
    server_session = _ServerSession()
    if timed:
        session = SimpleNamespace(_enter_server_sessions=lambda spans: [server_session])
        PeerSpeeds().attach(session)
        session._enter_server_sessions([])  # as Petals enters its server sessions: their steps are now timed
    step = server_session.step
    started = time.process_time()
    for _ in range(calls):
        step(ONE_TOKEN, None, None, step_id="s")
    return (time.process_time() - started) / calls


def swarm_cpu_per_token(tokens: int, sessions: int) -> tuple[float, float]:
    from mesh.client import open_client
    from mesh.local_swarm import LocalSwarm, ServerPlan
    from mesh.session import SwarmSession
    from mesh.tiny_models import ensure_tiny_models

    spec = ensure_tiny_models(CACHE_DIR)[0]
    with LocalSwarm([ServerPlan(spec, 0, 2, label="first"), ServerPlan(spec, 2, 4, label="second")]) as swarm:
        client = open_client(spec, swarm.initial_peers)
        try:
            cpu: dict[bool, list[float]] = {False: [], True: []}
            for run in range(sessions * 2 + 1):
                timed = run % 2 == 1
                session = SwarmSession(client.model, max_length=tokens + 4, speeds=PeerSpeeds() if timed else None)
                try:
                    session.step([1, 2, 3])  # prefill, not counted
                    started = time.process_time()
                    for token in range(tokens):
                        session.step([4 + token % 100])
                    if run:  # the first session warms up
                        cpu[timed].append((time.process_time() - started) / tokens)
                finally:
                    session.close()
            return statistics.median(cpu[False]), statistics.median(cpu[True])
        finally:
            client.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--sessions", type=int, default=8)
    args = parser.parse_args()

    bare = statistics.median(micro_seconds(args.calls, False) for _ in range(args.repeats))
    timed = statistics.median(micro_seconds(args.calls, True) for _ in range(args.repeats))
    print(f"micro: a no-op server step {bare * 1e6:.2f} us bare, {timed * 1e6:.2f} us timed")
    print(f"  added per server per token: {(timed - bare) * 1e6:.2f} us CPU ({timed / bare:.2f}x of a no-op step)")
    if args.tokens > 0:
        plain, with_timing = swarm_cpu_per_token(args.tokens, args.sessions)
        print(
            f"swarm (2 servers, {args.tokens} decode steps, median of {args.sessions}): CPU per token "
            f"{plain * 1e3:.3f} ms bare, {with_timing * 1e3:.3f} ms timed: {with_timing / plain:.3f}x"
        )


if __name__ == "__main__":
    interrupt_on_signals("bench_peer_speed")
    main()
