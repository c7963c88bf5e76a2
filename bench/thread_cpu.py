"""Where the worker's token loop spends its thread's CPU, beside a direct client's steps (`bench_worker.py`).

Wraps, in the bench's own process, every session's step (both paths), the worker's token write (its send and
the reading of its reply) and the worker's whole token loop (`workers.generate._stream_tokens`), adding each
call's thread CPU time to its path: the worker's pool threads are named after the model (`petals-...`), every
other thread that steps is the direct client's. A wrapped call costs about a microsecond, on both paths' steps.

What the split shows is the floor under the worker's CPU per token: the direct client's, plus the token's Redis
write and Redis's own work for it, which no change to the worker's Python removes (docs/performance.md).
"""

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from mesh.session import SwarmSession
from workers import generate
from workers.pipelined_writes import PipelinedTokenWrites

WORKER_THREAD_PREFIX = "petals-"
"""`workers.served_model.ServedModel`'s pool threads."""


class ThreadCpu:
    """Thread CPU seconds by (path, part), from `install` on; `clear` starts the count again."""

    def __init__(self) -> None:
        self._seconds: defaultdict[tuple[str, str], float] = defaultdict(float)
        self._lock = threading.Lock()

    def install(self) -> None:
        SwarmSession.step = self._timed(SwarmSession.step, "step")  # type: ignore[method-assign]
        PipelinedTokenWrites.send = self._timed(PipelinedTokenWrites.send, "send")  # type: ignore[method-assign]
        PipelinedTokenWrites.result = self._timed(PipelinedTokenWrites.result, "reply")  # type: ignore[method-assign]
        generate._stream_tokens = self._timed(generate._stream_tokens, "token loop")

    def clear(self) -> None:
        with self._lock:
            self._seconds.clear()

    def seconds(self, path: str, part: str) -> float:
        with self._lock:
            return self._seconds[(path, part)]

    def _timed(self, function: Callable[..., Any], part: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent = time.thread_time() - started
                path = "worker" if threading.current_thread().name.startswith(WORKER_THREAD_PREFIX) else "direct"
                with self._lock:
                    self._seconds[(path, part)] += spent

        return timed
