"""How fast each server really is, as this worker's own sessions find it: the evidence `sort: throughput` ranks by.

A server announces its throughput in the DHT, and anyone can write a DHT record: a server inflating its figure
would draw the buyers who ask for the fastest route. So the worker times what it sees instead. Every server
session Petals opens inside an `InferenceSession` (on the first step and after each failover) has its `step`
wrapped, the way the spot-check recorder wraps it (`mesh.session.SpanRecorder`), and each decode step (one new
token, after the server session's first step) is timed: its wall time divided by the blocks the server ran is
one sample of seconds per block per token, the round trip to the server included (a buyer waits for that too).
Prefill steps are not sampled: their time follows the prompt's length, and a server's first step after a
failover replays the whole history.

Samples feed an exponential moving average per peer (`EMA_WEIGHT`), kept in memory and shared by every session of
the model; the worker's snapshot loop writes it to Redis with the pings (`protocol.peer_measurements`), so other
workers rank servers they have not used yet by it. Timing costs two `perf_counter` calls and a locked dict
update per server per token (`bench/bench_peer_speed.py`).
"""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mesh.server_sessions import watch_server_sessions

EMA_WEIGHT = 0.2
"""Weight of the newest sample: about the last ten decode steps count, so one slow step (a garbage collection, a
busy moment) moves the figure a fifth of the way, and a server that slows down for good is seen within a few
tokens."""
MAX_AGE_S = 600.0
"""A figure not refreshed for this long is forgotten: the server may have restarted on other hardware, or moved."""


@dataclass(frozen=True)
class Speed:
    """One peer's smoothed figure and when its last sample was taken (Unix seconds)."""

    s_per_block: float
    measured_at: float


class PeerSpeeds:
    """Seconds per block per decode token of each server this worker's sessions stepped through (thread-safe: the
    sessions of a model step in its thread pool)."""

    def __init__(
        self, *, clock: Callable[[], float] = time.time, timer: Callable[[], float] = time.perf_counter
    ) -> None:
        """`clock` dates figures (wall time, comparable across workers); `timer` times steps (tests fake both)."""
        self._clock = clock
        self._timer = timer
        self._lock = threading.Lock()
        self._speeds: dict[str, Speed] = {}

    def record(self, peer_id: str, blocks: int, seconds: float) -> None:
        """One decode step of `blocks` blocks on `peer_id` took `seconds`."""
        if blocks <= 0 or not seconds >= 0:
            return
        sample = seconds / blocks
        now = self._clock()
        with self._lock:
            old = self._speeds.get(peer_id)
            if old is not None and now - old.measured_at <= MAX_AGE_S:
                sample = old.s_per_block + EMA_WEIGHT * (sample - old.s_per_block)
            self._speeds[peer_id] = Speed(sample, now)

    def get(self, peer_id: str) -> float | None:
        """The peer's figure, or None when it was never measured (or not for MAX_AGE_S)."""
        speed = self._speeds.get(peer_id)
        if speed is None or self._clock() - speed.measured_at > MAX_AGE_S:
            return None
        return speed.s_per_block

    def snapshot(self) -> dict[str, Speed]:
        """Every peer's figure still fresh, for the snapshot loop to publish."""
        now = self._clock()
        with self._lock:
            return {peer: speed for peer, speed in self._speeds.items() if now - speed.measured_at <= MAX_AGE_S}

    def attach(self, session: Any) -> None:
        """Time every server session `session` (a Petals `InferenceSession`) enters from now on. Attach before a
        `SpanRecorder`, so the recorder's copies of the tensors are outside the timed call."""
        watch_server_sessions(session, self._time)

    def _time(self, server_session: Any) -> None:
        span = server_session.span
        peer_id, blocks = str(span.peer_id), int(span.end) - int(span.start)
        step = server_session.step
        clock, record = self._timer, self.record

        def timed_step(inputs: Any, prompts: Any, hypo_ids: Any, *, step_id: str) -> Any:
            decode = server_session.stepped and inputs.shape[1] == 1
            started = clock()
            outputs = step(inputs, prompts, hypo_ids, step_id=step_id)
            if decode:
                record(peer_id, blocks, clock() - started)
            return outputs

        server_session.step = timed_step
