"""How every process waits between attempts to reach Redis or the ledger again: capped exponential delays.

One definition, so that the gateway's relay readers, the worker's queue consumers and stream writes, and the
accounting consumer all back off alike: the first retry comes fast (a blip costs little), each failure in a row
doubles the wait up to a cap (an outage is not hammered), and a success starts over from the first delay.
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

STOP_POLL_S = 0.1
"""How often a start-up waiting for a store looks whether it was told to stop."""


class Backoff:
    """The delays of one retry loop: `first_s`, doubled after each failure up to `cap_s`, until `reset()`.

    A loop logs `delay_s` (the wait it is about to take), then waits `take()` (or `sleep()`), and calls `reset()`
    once an attempt succeeds.
    """

    __slots__ = ("first_s", "cap_s", "_next_s")

    def __init__(self, first_s: float, cap_s: float) -> None:
        if not 0 < first_s <= cap_s:
            raise ValueError(f"backoff needs 0 < first_s <= cap_s, got {first_s} and {cap_s}")
        self.first_s = first_s
        self.cap_s = cap_s
        self._next_s = first_s

    @property
    def delay_s(self) -> float:
        """The wait the next failure takes."""
        return self._next_s

    def take(self) -> float:
        """The wait for this failure; the one after is twice as long (at most `cap_s`)."""
        delay = self._next_s
        self._next_s = min(delay * 2, self.cap_s)
        return delay

    def reset(self) -> None:
        """An attempt succeeded: the next failure waits `first_s` again."""
        self._next_s = self.first_s

    async def sleep(self) -> None:
        """Wait this failure's delay (`take()`)."""
        await asyncio.sleep(self.take())


async def until_it_answers(
    attempt: Callable[[], Awaitable[T]],
    away: tuple[type[Exception], ...],
    backoff: Backoff,
    stopping: Callable[[], bool],
    waiting: Callable[[Exception, float], None],
) -> T | None:
    """`attempt()`'s result once it stops raising `away`, each failure told to `waiting` (with the wait about to be
    taken) and waited out with `backoff`; None once `stopping()` says to stop first. A process started while its
    store restarts waits for it instead of exiting, and `stopping` is looked at every STOP_POLL_S, so a SIGTERM
    still ends the wait at once."""
    loop = asyncio.get_running_loop()
    while not stopping():
        try:
            return await attempt()
        except away as exc:
            waiting(exc, backoff.delay_s)
        until = loop.time() + backoff.take()
        while not stopping() and loop.time() < until:
            await asyncio.sleep(STOP_POLL_S)
    return None
