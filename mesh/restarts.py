"""When a crashed server is started again, and when its supervisor stops trying: one policy for the local swarm
and for `far-mesh node`, so a provider's node and the development swarm recover alike.

A crash is restarted after a capped exponential delay (`protocol.backoff.Backoff`: a one-off crash costs a
second, a crash loop does not spin); a process that crashes `limit` times within `window_s` is given up on,
because restarting it again only hides a fault someone must look at.
"""

import time
from collections import deque
from collections.abc import Callable

from protocol.backoff import Backoff


class RestartPolicy:
    """The restart decisions for one supervised process."""

    def __init__(
        self,
        *,
        first_delay_s: float,
        max_delay_s: float,
        limit: int,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backoff = Backoff(first_delay_s, max_delay_s)
        self._limit = limit
        self._window_s = window_s
        self._clock = clock
        self._crashes: deque[float] = deque()

    @property
    def crashes_in_window(self) -> int:
        self._forget_old_crashes()
        return len(self._crashes)

    def crashed(self) -> float | None:
        """Record a crash now: the delay before starting the process again, or None to give up on it."""
        self._crashes.append(self._clock())
        if self.crashes_in_window >= self._limit:
            return None
        return self._backoff.take()

    def recovered(self) -> None:
        """The process serves again: its next crash waits the first delay, not a doubled one."""
        self._backoff.reset()

    def _forget_old_crashes(self) -> None:
        while self._crashes and self._clock() - self._crashes[0] > self._window_s:
            self._crashes.popleft()
